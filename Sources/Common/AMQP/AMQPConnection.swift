import CRabbitMQ
import Foundation
import Logging
import Synchronization

/// One AMQP connection to the broker, owned by a dedicated thread.
///
/// librabbitmq is blocking and not thread-safe, so every C call for this connection runs on
/// its own thread (an ``AMQPDriver``); async callers post commands to it and are resumed
/// through continuations. Nothing here blocks Swift's cooperative pool.
///
/// Channels: 1 carries declarations and other synchronous methods, 2 publishes with
/// confirms, and each consumer gets a channel of its own (3, 4, ...).
///
/// Lifecycle: ``connect()`` once, use, ``close()``. After a lost connection it reconnects with
/// backoff (if configured), re-runs `setup`, re-enables confirms and re-subscribes consumers.
/// Publishes that were unconfirmed when the connection broke are failed back to their callers
/// with `connectionLost` (the caller decides whether to republish), never dropped silently.
package final class AMQPConnection: Sendable {
    package typealias Setup = @Sendable (AMQPControl) throws -> Void

    struct Command: Sendable {
        var run: @Sendable (AMQPDriver) -> Void
        var fail: @Sendable (AMQPError) -> Void
    }

    struct Shared {
        var mailbox: [Command] = []
        var started = false
        var finished = false
        var connected = false
        var blocked = false
        var connectWaiters: [CheckedContinuation<Void, any Error>] = []
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
    }

    package let configuration: AMQPConfiguration
    let logger: Logger
    let setup: Setup?
    let shared = Mutex(Shared())
    /// Written by any task to wake the connection thread; closed by the thread when it ends.
    let wakeFD: Int32

    /// - Parameter setup: runs on the connection thread after every (re)connect, before any
    ///   queued command: declare the topology here.
    package init(configuration: AMQPConfiguration, logger: Logger, setup: Setup? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.setup = setup
        self.wakeFD = warren_eventfd()
    }

    /// Connects (trying each endpoint once) and starts the connection thread.
    /// Throws `connectionFailed` when no endpoint accepted us; the connection is then closed.
    package func connect() async throws {
        enum Action { case start, wait, ready, closed }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let action = shared.withLock { shared -> Action in
                if shared.finished { return .closed }
                if shared.connected { return .ready }
                shared.connectWaiters.append(continuation)
                if shared.started { return .wait }
                shared.started = true
                return .start
            }
            switch action {
            case .closed:
                continuation.resume(throwing: AMQPError(.closed, function: "connect", message: "connection is closed"))
            case .ready:
                continuation.resume()
            case .wait:
                break
            case .start:
                let driver = AMQPDriver(connection: self)
                let thread = Thread { driver.run() }
                thread.name = "amqp \(configuration.connectionName)"
                thread.start()
            }
        }
    }

    /// Whether the connection is up right now.
    package var isConnected: Bool { shared.withLock { $0.connected } }

    /// Whether the broker has blocked publishing (connection.blocked: a resource alarm).
    package var isBlocked: Bool { shared.withLock { $0.blocked } }

    /// Runs `body` with the control channel on the connection thread (declare, bind, purge...).
    @discardableResult
    package func withControl<T: Sendable>(_ body: @escaping @Sendable (AMQPControl) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            post(Command(
                run: { driver in
                    do {
                        try driver.requireConnected("control")
                        continuation.resume(returning: try body(AMQPControl(driver: driver)))
                    } catch {
                        continuation.resume(throwing: error)
                    }
                },
                fail: { continuation.resume(throwing: $0) }))
        }
    }

    /// Publishes `messages` in order and returns one result per message once each has been
    /// confirmed (basic.ack) or failed (basic.nack, basic.return, lost connection, blocked).
    package func publish(_ messages: [AMQPOutgoingMessage]) async -> [Result<Void, AMQPError>] {
        guard !messages.isEmpty else { return [] }
        return await withCheckedContinuation { (continuation: CheckedContinuation<[Result<Void, AMQPError>], Never>) in
            post(Command(
                run: { driver in driver.enqueuePublishes(messages) { continuation.resume(returning: $0) } },
                fail: { error in continuation.resume(returning: Array(repeating: .failure(error), count: messages.count)) }))
        }
    }

    /// Publishes one message; returns when the broker confirmed it, throws otherwise.
    package func publish(_ message: AMQPOutgoingMessage) async throws {
        try await publish([message])[0].get()
    }

    /// Starts a consumer on its own channel with `prefetch` unacknowledged deliveries at most
    /// (per-consumer QoS; quorum queues reject global QoS). `priority` sets `x-priority`.
    package func consume(queue: String, prefetch: UInt16, priority: Int32? = nil, tag: String? = nil) async throws -> AMQPDeliveries {
        let (stream, continuation) = AsyncThrowingStream<AMQPDelivery, any Error>.makeStream()
        let request = ConsumeRequest(queue: queue, prefetch: prefetch, priority: priority, requestedTag: tag ?? "")
        let consumerTag: String = try await withCheckedThrowingContinuation { (result: CheckedContinuation<String, any Error>) in
            post(Command(
                run: { driver in
                    do {
                        result.resume(returning: try driver.startConsumer(request, continuation: continuation))
                    } catch {
                        result.resume(throwing: error)
                    }
                },
                fail: { result.resume(throwing: $0) }))
        }
        return AMQPDeliveries(stream: stream, consumerTag: consumerTag)
    }

    /// Stops a consumer: no new deliveries after this returns. Its stream ends once the
    /// deliveries sent before the cancel-ok are in it; once every delivery of it is settled
    /// (acked, nacked or rejected) its channel goes to the next consumer started (never
    /// closed: see `AMQPDriver.retireIfSettled`). So a consumer can be replaced by one with
    /// another prefetch (consume, then cancel the old one) with nothing dropped, left unacked
    /// or redelivered.
    package func cancel(consumerTag: String) async throws {
        try await onThread { driver in try driver.cancelConsumer(consumerTag) }
    }

    /// Acknowledges `delivery` (and with `multiple`, every earlier one on its channel).
    /// Throws `connectionLost` when the delivery came on an earlier connection: the broker
    /// has requeued it already.
    package func ack(_ delivery: AMQPDelivery, multiple: Bool = false) async throws {
        try await onThread { driver in try driver.settle(delivery, kind: .ack(multiple: multiple)) }
    }

    /// Acks a batch of deliveries in one trip to the connection's thread, with `multiple`
    /// where the tags allow. Returns those that came on an earlier connection: the broker has
    /// requeued them, so they were not acked.
    @discardableResult
    package func ack(_ deliveries: [AMQPDelivery]) async throws -> [AMQPDelivery] {
        guard !deliveries.isEmpty else { return [] }
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[AMQPDelivery], any Error>) in
            post(Command(
                run: { driver in continuation.resume(with: Result { try driver.ackBatch(deliveries) }) },
                fail: { _ in continuation.resume(returning: deliveries) }))
        }
    }

    /// Negatively acknowledges `delivery`; `requeue: false` dead-letters it (if the queue has a DLX).
    package func nack(_ delivery: AMQPDelivery, multiple: Bool = false, requeue: Bool) async throws {
        try await onThread { driver in try driver.settle(delivery, kind: .nack(multiple: multiple, requeue: requeue)) }
    }

    /// Rejects one delivery; `requeue: false` dead-letters it (if the queue has a DLX).
    package func reject(_ delivery: AMQPDelivery, requeue: Bool) async throws {
        try await onThread { driver in try driver.settle(delivery, kind: .reject(requeue: requeue)) }
    }

    /// Closes the connection: fails whatever is still pending with `closed`, ends consumer
    /// streams, and ends the thread. Safe to call more than once.
    package func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let alreadyFinished = shared.withLock { shared -> Bool in
                if shared.finished || !shared.started { shared.finished = true; return true }
                shared.closeWaiters.append(continuation)
                return false
            }
            if alreadyFinished {
                continuation.resume()
                return
            }
            post(Command(run: { driver in driver.requestClose() }, fail: { _ in }))
        }
    }

    // MARK: - Mailbox

    func post(_ command: Command) {
        let accepted = shared.withLock { shared -> Bool in
            guard shared.started, !shared.finished else { return false }
            shared.mailbox.append(command)
            return true
        }
        if accepted {
            warren_eventfd_signal(wakeFD)
        } else {
            command.fail(AMQPError(.closed, function: "post", message: "connection is closed"))
        }
    }

    private func onThread(_ body: @escaping @Sendable (AMQPDriver) throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            post(Command(
                run: { driver in continuation.resume(with: Result { try body(driver) }) },
                fail: { continuation.resume(throwing: $0) }))
        }
    }
}

struct ConsumeRequest: Sendable {
    var queue: String
    var prefetch: UInt16
    var priority: Int32?
    var requestedTag: String
}

/// The deliveries of one consumer, in order. Ends when the consumer is cancelled (by us or
/// the broker) or the connection is closed; throws if it cannot be re-subscribed.
package struct AMQPDeliveries: AsyncSequence, Sendable {
    package typealias Element = AMQPDelivery
    private let stream: AsyncThrowingStream<AMQPDelivery, any Error>
    /// The broker-assigned (or requested) consumer tag, for ``AMQPConnection/cancel(consumerTag:)``.
    package let consumerTag: String

    init(stream: AsyncThrowingStream<AMQPDelivery, any Error>, consumerTag: String) {
        self.stream = stream
        self.consumerTag = consumerTag
    }

    package struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncThrowingStream<AMQPDelivery, any Error>.AsyncIterator
        package mutating func next() async throws -> AMQPDelivery? { try await base.next() }
    }

    package func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: stream.makeAsyncIterator()) }
}
