import Logging
import WarrenAMQP
import WarrenSupport

/// Publishes jobs to `warren.jobs` with publisher confirms, over a connection that declares
/// the topology whenever it (re)connects.
///
/// A job is accepted only when its result is `.success`: the broker confirmed it. A nack
/// (queue full: reject-publish), a return (no queue) or a lost connection is that job's error.
package final class JobPublisher: Sendable {
    package let connection: AMQPConnection
    /// Concurrent single publishes (one per HTTP request) handed to the connection together.
    private let coalesced: Coalescer<AMQPOutgoingMessage, Void>

    package init(configuration: AMQPConfiguration, logger: Logger) {
        let connection = AMQPConnection(configuration: configuration, logger: logger) { control in
            try Topology.standard.declare(on: control)
        }
        self.connection = connection
        coalesced = Coalescer(maxInFlight: 4, maxBatch: 512) { messages in
            await connection.publish(messages).map { result in result.mapError { $0 as any Error } }
        }
    }

    /// Publishes one job among others published concurrently: requests that arrive together
    /// reach the connection's thread as one command (one wake-up, one burst on the socket),
    /// each still settled by its own confirm.
    package func publishCoalesced(_ job: JobEnvelope) async throws {
        try await coalesced.submit(job.outgoingMessage)
    }

    /// Connects and declares the topology. Throws if no broker accepted the connection.
    package func start() async throws { try await connection.connect() }

    /// Publishes `jobs` in order; one result per job, each settled by its own confirm.
    package func publish(_ jobs: [JobEnvelope]) async -> [Result<Void, AMQPError>] {
        await connection.publish(jobs.map(\.outgoingMessage))
    }

    package func publish(_ job: JobEnvelope) async throws {
        try await connection.publish(job.outgoingMessage)
    }

    package func close() async { await connection.close() }
}
