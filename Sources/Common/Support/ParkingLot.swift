import Synchronization

/// Tasks parked on continuations under one lock with their owner's state, each with a key
/// the owner resumes them by; a parked task that is cancelled leaves at once with
/// `cancelled`. The one copy of that subtle dance (a cancellation can come before the
/// continuation is parked) for ``JobCancellations``, ``DeadlineWatcher`` and ``OneShot``.
package final class ParkingLot<State: Sendable, Key: Sendable, Value: Sendable>: Sendable {
    private struct Inner {
        var state: State
        var parked: [Int: (key: Key, continuation: CheckedContinuation<Value, Never>)] = [:]
        /// Tokens whose task was cancelled before it parked.
        var abandoned: Set<Int> = []
        var nextToken = 0
    }

    private let inner: Mutex<Inner>

    package init(_ state: State) { inner = Mutex(Inner(state: state)) }

    /// Reads or changes the owner's state under the lock.
    package func withState<R>(_ body: (inout State) -> R) -> R { inner.withLock { body(&$0.state) } }

    /// How many tasks are parked.
    package var parkedCount: Int { inner.withLock { $0.parked.count } }

    /// Parks the calling task under `key` unless `immediate` (checked under the same lock as
    /// every ``resume(_:)``, so no wake-up is missed) already has the answer; returns what the
    /// task is resumed with, or `cancelled` as soon as it is cancelled.
    package func park(_ key: Key, cancelled: Value, immediate: (inout State) -> Value? = { _ in nil }) async -> Value {
        let token = inner.withLock { inner -> Int in
            inner.nextToken += 1
            return inner.nextToken
        }
        return await withTaskCancellationHandler {
            defer { inner.withLock { _ = $0.abandoned.remove(token) } }
            return await withCheckedContinuation { (continuation: CheckedContinuation<Value, Never>) in
                let answer = inner.withLock { inner -> Value? in
                    if inner.abandoned.remove(token) != nil { return cancelled }
                    if let answer = immediate(&inner.state) { return answer }
                    inner.parked[token] = (key, continuation)
                    return nil
                }
                if let answer { continuation.resume(returning: answer) }
            }
        } onCancel: {
            let continuation = inner.withLock { inner -> CheckedContinuation<Value, Never>? in
                if let parked = inner.parked.removeValue(forKey: token) { return parked.continuation }
                inner.abandoned.insert(token)
                return nil
            }
            continuation?.resume(returning: cancelled)
        }
    }

    /// Changes the state and resumes every parked task for which `decide` (given its key and
    /// the state, after `update`) answers a value. Returns how many were resumed.
    @discardableResult
    package func resume(updating update: (inout State) -> Void = { _ in }, _ decide: (Key, State) -> Value?) -> Int {
        let woken = inner.withLock { inner -> [(CheckedContinuation<Value, Never>, Value)] in
            update(&inner.state)
            var woken: [(CheckedContinuation<Value, Never>, Value)] = []
            for (token, parked) in inner.parked {
                guard let value = decide(parked.key, inner.state) else { continue }
                inner.parked[token] = nil
                woken.append((parked.continuation, value))
            }
            return woken
        }
        for (continuation, value) in woken { continuation.resume(returning: value) }
        return woken.count
    }
}
