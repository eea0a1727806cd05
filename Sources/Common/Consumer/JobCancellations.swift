import Foundation
import Synchronization

/// The cancellation requests one consumer knows of (from `DELETE /v1/jobs/{id}`), and the
/// running jobs waiting to hear of one.
///
/// Requests arrive three ways: loaded from `api_jobs` when the consumer starts, polled from
/// it every few seconds, and pushed through the `warren.control` fanout exchange the moment
/// they are made. A job is checked before it starts (a requested one is recorded `cancelled`
/// and never run); a running job's ``wait(for:)`` returns true, and the consumer cancels
/// its handler.
package final class JobCancellations: Sendable {
    private struct State {
        var requested: Set<UUID> = []
        var waiters: [Int: (job: UUID, continuation: CheckedContinuation<Bool, Never>)] = [:]
        /// Waits whose task was cancelled before they registered.
        var abandoned: Set<Int> = []
        var nextToken = 0
    }

    private let state = Mutex(State())

    package init() {}

    /// Records requests and wakes the running jobs among them. Returns how many were running.
    @discardableResult
    package func request(_ ids: some Sequence<UUID>) -> Int {
        let woken = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            var woken: [CheckedContinuation<Bool, Never>] = []
            for id in ids where state.requested.insert(id).inserted {
                for (token, waiter) in state.waiters where waiter.job == id {
                    state.waiters[token] = nil
                    woken.append(waiter.continuation)
                }
            }
            return woken
        }
        for continuation in woken { continuation.resume(returning: true) }
        return woken.count
    }

    package func isRequested(_ id: UUID) -> Bool { state.withLock { $0.requested.contains(id) } }

    /// Drops a request once the job is recorded `cancelled` (a redelivery of it is then
    /// recognised by its terminal status).
    package func forget(_ id: UUID) { _ = state.withLock { $0.requested.remove(id) } }

    package var count: Int { state.withLock { $0.requested.count } }

    /// Returns true as soon as `job` is asked to cancel (at once if it already was), or false
    /// when the calling task is cancelled first.
    package func wait(for job: UUID) async -> Bool {
        let token = state.withLock { state -> Int in
            state.nextToken += 1
            return state.nextToken
        }
        return await withTaskCancellationHandler {
            defer { state.withLock { _ = $0.abandoned.remove(token) } }
            return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let immediate = state.withLock { state -> Bool? in
                    if state.abandoned.remove(token) != nil { return false }
                    if state.requested.contains(job) { return true }
                    state.waiters[token] = (job, continuation)
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                if let waiter = state.waiters.removeValue(forKey: token) { return waiter.continuation }
                state.abandoned.insert(token)
                return nil
            }
            waiter?.resume(returning: false)
        }
    }
}
