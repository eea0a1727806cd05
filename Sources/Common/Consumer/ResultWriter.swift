import CoreMetrics
import Logging
import Synchronization

/// Gathers finished deliveries into batches, writes their outcomes in one transaction, and
/// only then acks them (invariant 2). One writer per consumer process.
///
/// While Postgres is unreachable the batch is retried with backoff and nothing is acked:
/// the deliveries stay unacknowledged, so once `prefetch` of them are held the broker sends
/// no more, and the consumer stops taking work without crashing or dropping results.
package final class ResultWriter: Sendable {
    package struct Item: Sendable {
        /// The outcome to make durable; nil for a delivery that only needs its ack (a
        /// malformed message already copied to the dead queue).
        package var record: JobRunRecord?
        /// Nil for a record with nothing to ack (the `running` mark at a job's start).
        package var delivery: AMQPDelivery?
    }

    private struct State {
        var buffer: [Item] = []
        var waiter: CheckedContinuation<Void, Never>?
        var closing = false
        /// Past the shutdown deadline: stop retrying a failing write and leave it unacked.
        var abandon = false
        var writing = 0
    }

    private let state = Mutex(State())
    private let store: JobRunStore
    private let connection: AMQPConnection
    private let maxRows: Int
    private let maxDelay: Duration
    private let retryBackoff = Backoff(base: .milliseconds(100), cap: .seconds(5), floor: .milliseconds(50))
    private let logger: Logger
    private let metrics: ConsumerMetrics

    package init(store: JobRunStore, connection: AMQPConnection, maxRows: Int, maxDelay: Duration,
                 metrics: ConsumerMetrics, logger: Logger) {
        self.store = store
        self.connection = connection
        self.maxRows = max(1, maxRows)
        self.maxDelay = maxDelay
        self.metrics = metrics
        self.logger = logger
    }

    package func submit(_ item: Item) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.buffer.append(item)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Outcomes submitted but not yet acked (buffered or being written).
    package var pending: Int { state.withLock { $0.buffer.count + $0.writing } }

    /// Ends `run()` once everything submitted is written and acked.
    package func close() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.closing = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Stops retrying: whatever is not written yet stays unacked (the broker redelivers it).
    package func abandon() {
        state.withLock { $0.abandon = true }
        close()
    }

    package func run() async {
        var idle = true
        while true {
            await waitForWork()
            if idle, maxDelay > .zero, state.withLock({ !$0.closing && $0.buffer.count < maxRows }) {
                // Starting from idle: give the batch a moment to fill. (Under load the previous
                // write was that moment.)
                try? await Task.sleep(for: maxDelay)
            }
            let batch = state.withLock { state -> [Item] in
                let count = min(maxRows, state.buffer.count)
                let batch = Array(state.buffer.prefix(count))
                state.buffer.removeFirst(count)
                state.writing = batch.count
                return batch
            }
            if batch.isEmpty {
                if state.withLock({ $0.closing && $0.buffer.isEmpty }) { return }
                continue
            }
            await writeAndAck(batch)
            idle = state.withLock { state in
                state.writing = 0
                return state.buffer.isEmpty
            }
        }
    }

    private func waitForWork() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                if !state.buffer.isEmpty || state.closing { return true }
                state.waiter = continuation
                return false
            }
            if ready { continuation.resume() }
        }
    }

    private func writeAndAck(_ batch: [Item]) async {
        let records = batch.compactMap(\.record)
        var attempt = 0
        let started = ContinuousClock.now
        while true {
            do {
                try await store.write(records)
                break
            } catch {
                if state.withLock({ $0.abandon }) {
                    logger.error("result write abandoned at shutdown; its deliveries stay unacked and will be redelivered",
                                 metadata: ["rows": "\(records.count)", "error": "\(error)"])
                    return
                }
                let delay = retryBackoff.delay(attempt: attempt)
                attempt += 1
                metrics.writeFailures.increment()
                logger.warning("result write failed; holding the batch unacked and retrying",
                               metadata: ["rows": "\(records.count)", "attempt": "\(attempt)",
                                          "retry_in_ms": "\(delay.milliseconds)", "error": "\(error)"])
                try? await Task.sleep(for: delay)
            }
        }
        metrics.batchRows.record(records.count)
        metrics.writeDuration.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
        do {
            let deliveries = batch.compactMap(\.delivery)
            guard !deliveries.isEmpty else { return }
            let stale = try await connection.ack(deliveries)
            if !stale.isEmpty {
                logger.info("deliveries from an earlier connection were not acked; the broker redelivers them and they are recognised as duplicates",
                            metadata: ["count": "\(stale.count)"])
            }
        } catch {
            logger.warning("ack failed after the results were written; the broker redelivers them as duplicates",
                           metadata: ["count": "\(batch.count)", "error": "\(error)"])
        }
    }
}
