import CoreMetrics
import Logging
import Synchronization
import Tracing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

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
        /// The job's `record` span (``Traces``), ended once the batch is written and acked.
        package var span: (any Span)? = nil
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

    /// Shutdown passed its deadline while a write was failing.
    private struct Abandoned: Error {}

    private func writeAndAck(_ batch: [Item]) async {
        let started = ContinuousClock.now
        defer {
            for item in batch {
                item.span?.attributes["warren.batch_rows"] = batch.count
                item.span?.end()
            }
        }
        let writable = batch.filter { $0.record != nil }
        var acked = batch.filter { $0.record == nil }.compactMap(\.delivery)
        let refused: [(item: Item, error: any Error)]
        do {
            refused = try await BatchIsolation.isolate(writable[...], write: { items in
                try await writeRetrying(items.compactMap { (item: Item) in item.record })
            }, isDataError: Self.isDataError)
        } catch {
            logger.error("result write abandoned at shutdown; its deliveries stay unacked and will be redelivered",
                         metadata: ["rows": "\(writable.count)", "error": "\(error)"])
            return
        }
        var handled: [AMQPDelivery] = []
        for (item, error) in refused {
            guard let delivery = await settleUnstorable(item, error: error) else { continue }
            handled.append(delivery)
        }
        let refusedTags = Set(refused.compactMap { $0.item.delivery.map(Self.key) })
        acked += writable.compactMap(\.delivery).filter { !refusedTags.contains(Self.key($0)) } + handled
        metrics.batchRows.record(writable.count)
        metrics.writeDuration.recordNanoseconds((ContinuousClock.now - started).nanoseconds)
        do {
            guard !acked.isEmpty else { return }
            let stale = try await connection.ack(acked)
            if !stale.isEmpty {
                logger.info("deliveries from an earlier connection were not acked; the broker redelivers them and they are recognised as duplicates",
                            metadata: ["count": "\(stale.count)"])
            }
        } catch {
            logger.warning("ack failed after the results were written; the broker redelivers them as duplicates",
                           metadata: ["count": "\(acked.count)", "error": "\(error)"])
        }
    }

    private static func key(_ delivery: AMQPDelivery) -> String { "\(delivery.generation)/\(delivery.channel)/\(delivery.deliveryTag)" }

    private static func isDataError(_ error: any Error) -> Bool { (error as? PostgresError)?.isDataError == true }

    /// Writes `records`, retrying with backoff while the failure is not the data's (Postgres
    /// down, a timeout): nothing is acked meanwhile. Throws a data error at once, and
    /// ``Abandoned`` once shutdown gave up on it.
    private func writeRetrying(_ records: [JobRunRecord]) async throws {
        var attempt = 0
        while true {
            do {
                try await store.write(records)
                return
            } catch {
                if Self.isDataError(error) { throw error }
                if state.withLock({ $0.abandon }) { throw Abandoned() }
                let delay = retryBackoff.delay(attempt: attempt)
                attempt += 1
                metrics.writeFailures.increment()
                logger.warning("result write failed; holding the batch unacked and retrying",
                               metadata: ["rows": "\(records.count)", "attempt": "\(attempt)",
                                          "retry_in_ms": "\(delay.milliseconds)", "error": "\(error)"])
                try? await Task.sleep(for: delay)
            }
        }
    }

    /// One outcome Postgres refused on its own: stored in a simpler form if it takes one
    /// (``JobRunRecord/degraded(step:reason:)``), else the job is copied to the dead queue
    /// with the reason (its retry, if it had one, is already on its way). Returns the
    /// delivery to ack, or nil when it was handed back or has none.
    private func settleUnstorable(_ item: Item, error: any Error) async -> AMQPDelivery? {
        guard let record = item.record else { return item.delivery }
        var logger = self.logger
        logger[metadataKey: "job_id"] = "\(record.job.id.lowercasedString)"
        logger[metadataKey: "job_type"] = "\(record.job.type)"
        let reason = (error as? PostgresError).map { "\($0.sqlState ?? $0.code.description): \($0.message)" } ?? "\(error)"
        metrics.count("unstorable")
        var lastError = error
        for step in 1...2 {
            guard let simpler = record.degraded(step: step, reason: reason) else { continue }
            do {
                try await writeRetrying([simpler])
                logger.warning("Postgres refused a job's outcome; stored a simpler form", metadata: [
                    "error": "\(reason)", "form": "\(step == 1 ? "result as text" : "no result")",
                ])
                return item.delivery
            } catch where Self.isDataError(error) {
                lastError = error
            } catch {
                return nil  // abandoned at shutdown: left unacked
            }
        }
        guard let delivery = item.delivery else {
            logger.error("Postgres refused a job's running mark; dropped", metadata: ["error": "\(lastError)"])
            return nil
        }
        if record.run?.status == .retrying {
            // Its next attempt is already published and will write the row.
            logger.error("Postgres refused a retried job's row; its next attempt carries on", metadata: ["error": "\(lastError)"])
            return delivery
        }
        do {
            try await connection.publish(record.job.deadLetterMessage(reason: "unstorable-outcome", lastError: reason))
            logger.error("Postgres refused a job's outcome in every form; dead-lettered", metadata: ["error": "\(reason)"])
            return delivery
        } catch {
            logger.warning("dead-letter publish of an unstorable outcome failed; handing the job back", metadata: ["error": "\(error)"])
            try? await connection.nack(delivery, requeue: true)
            return nil
        }
    }
}
