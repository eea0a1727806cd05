import Synchronization

/// Group commit for concurrent callers: each ``submit(_:)`` waits while the items that arrive
/// together are handed to `flush` as one batch (one INSERT, one burst of publishes), up to
/// `maxInFlight` batches at a time. Under load a batch is whatever queued up while the
/// previous one ran; alone, a caller's batch is just its own item, with no added delay.
package final class Coalescer<Item: Sendable, Output: Sendable>: Sendable {
    package typealias Flush = @Sendable ([Item]) async -> [Result<Output, any Error>]

    private struct Waiting: Sendable {
        var item: Item
        var continuation: CheckedContinuation<Output, any Error>
    }

    private struct State: Sendable {
        var pending: [Waiting] = []
        var flushing = 0
    }

    private let state = Mutex(State())
    private let maxInFlight: Int
    private let maxBatch: Int
    private let flush: Flush

    /// `flush` returns one result per item, in order.
    package init(maxInFlight: Int, maxBatch: Int, flush: @escaping Flush) {
        self.maxInFlight = max(1, maxInFlight)
        self.maxBatch = max(1, maxBatch)
        self.flush = flush
    }

    package func submit(_ item: Item) async throws -> Output {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Output, any Error>) in
            let startFlusher = state.withLock { state -> Bool in
                state.pending.append(Waiting(item: item, continuation: continuation))
                guard state.flushing < maxInFlight else { return false }
                state.flushing += 1
                return true
            }
            if startFlusher { Task { await drain() } }
        }
    }

    /// Flushes batch after batch until nothing is pending.
    private func drain() async {
        while true {
            let batch = state.withLock { state -> [Waiting] in
                let batch = Array(state.pending.prefix(maxBatch))
                state.pending.removeFirst(batch.count)
                if batch.isEmpty { state.flushing -= 1 }
                return batch
            }
            if batch.isEmpty { return }
            let results = await flush(batch.map(\.item))
            for (index, waiting) in batch.enumerated() {
                if index < results.count {
                    waiting.continuation.resume(with: results[index])
                } else {
                    waiting.continuation.resume(throwing: CoalescerError.noResult)
                }
            }
        }
    }
}

package enum CoalescerError: Error { case noResult }
