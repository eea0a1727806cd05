import Foundation

/// A dedicated OS thread that runs submitted work items one at a time, in order.
///
/// Blocking C calls (libpq) run here instead of on Swift's cooperative pool. One C handle
/// is confined to one `WorkerThread`, which satisfies libpq's one-thread-at-a-time rule.
/// Call ``shutdown()`` when done; work submitted after that fails with `CancellationError`.
package final class WorkerThread: Sendable {
    private struct Queue {
        var items: [@Sendable () -> Void] = []
        var stopped = false
    }

    // NSCondition guards `queue`; the class is Sendable because all state is behind it.
    private let condition = NSCondition()
    nonisolated(unsafe) private var queue = Queue()

    /// Starts the thread. `name` shows in debuggers and `top -H`.
    package init(name: String) {
        let thread = Thread { [condition] in
            while true {
                condition.lock()
                while self.queue.items.isEmpty && !self.queue.stopped {
                    condition.wait()
                }
                if self.queue.items.isEmpty && self.queue.stopped {
                    condition.unlock()
                    return
                }
                let batch = self.queue.items
                self.queue.items.removeAll(keepingCapacity: true)
                condition.unlock()
                for item in batch { item() }
            }
        }
        thread.name = name
        thread.start()
    }

    /// Queues `item`; returns false when the thread has been shut down.
    @discardableResult
    package func submit(_ item: @escaping @Sendable () -> Void) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !queue.stopped else { return false }
        queue.items.append(item)
        condition.signal()
        return true
    }

    /// Runs `body` on the thread and returns its result to the calling task.
    package func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let accepted = submit {
                continuation.resume(with: Result { try body() })
            }
            if !accepted { continuation.resume(throwing: CancellationError()) }
        }
    }

    /// Lets queued work finish, then ends the thread.
    package func shutdown() {
        condition.lock()
        queue.stopped = true
        condition.signal()
        condition.unlock()
    }
}
