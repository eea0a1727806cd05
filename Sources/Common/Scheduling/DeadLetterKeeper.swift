import Logging
import Metrics
import ServiceLifecycle
import WarrenAMQP
import WarrenJobs
import WarrenStore
import WarrenSupport

/// Takes every message off `warren.jobs.dead` into `dead_letters` (``DeadLetterStore``): each is
/// recorded, committed, then acked, so a crash between the two leaves the message on the queue
/// (recorded again later as the same row, by job and seq) and never loses it. Every scheduler
/// runs one (they share the queue; no leadership needed). While Postgres refuses, nothing is
/// acked and the broker holds the rest (prefetch ``prefetch``). Counted in
/// `warren_dead_letters_total{tier}` (`unknown` for a message without a tier).
package struct DeadLetterKeeper: Service, CustomStringConvertible {
    package static let prefetch: UInt16 = 100

    let amqp: AMQPConfiguration
    let store: DeadLetterStore
    let logger: Logger

    package init(amqp: AMQPConfiguration, store: DeadLetterStore, logger: Logger) {
        self.amqp = amqp
        self.store = store
        self.logger = logger
    }

    package var description: String { "DeadLetterKeeper" }

    package func run() async throws {
        await cancelWhenGracefulShutdown { await consume() }
    }

    /// Reads the dead queue until cancelled, reconnecting with backoff.
    private func consume() async {
        let backoff = Backoff(base: .milliseconds(250), cap: .seconds(10), floor: .milliseconds(100))
        var failures = 0
        while !Task.isCancelled {
            let connection = AMQPConnection(configuration: amqp, logger: logger) { control in
                try Topology.standard.declare(on: control)
            }
            do {
                try await connection.connect()
                let deliveries = try await connection.consume(queue: Topology.deadQueue, prefetch: Self.prefetch)
                failures = 0
                for try await delivery in deliveries {
                    try await keep(delivery, on: connection)
                }
            } catch {
                if !Task.isCancelled {
                    logger.warning("dead-letter keeper: cannot read warren.jobs.dead; retrying", metadata: ["error": "\(error)"])
                }
            }
            await connection.close()
            failures += 1
            try? await Task.sleep(for: backoff.delay(attempt: failures))
        }
    }

    /// Records one message, retrying while Postgres refuses, then acks it.
    private func keep(_ delivery: AMQPDelivery, on connection: AMQPConnection) async throws {
        let message = DeadLetterStore.Incoming(properties: delivery.properties, body: delivery.body)
        let backoff = Backoff(base: .milliseconds(200), cap: .seconds(5), floor: .milliseconds(100))
        var attempt = 0
        while true {
            do {
                try await store.record([message])
                break
            } catch {
                try Task.checkCancellation()
                attempt += 1
                logger.warning("dead-letter keeper: cannot record a dead letter; retrying (it stays unacked)",
                               metadata: ["error": "\(error)", "message_id": "\(delivery.properties.messageID ?? "-")"])
                try await Task.sleep(for: backoff.delay(attempt: attempt))
            }
        }
        try await connection.ack(delivery)
        let tier = delivery.properties.headers[JobEnvelope.Header.tier]?.stringValue.flatMap(Tier.init(rawValue:))?.rawValue ?? "unknown"
        Counter(label: "warren_dead_letters_total", dimensions: [("tier", tier)]).increment()
        logger.info("dead letter recorded", metadata: [
            "message_id": "\(delivery.properties.messageID ?? "-")", "job_type": "\(delivery.properties.type ?? "-")",
            "reason": "\(message.reason)",
        ])
    }
}
