import Synchronization

/// One clock for the timeouts of every job a consumer runs.
///
/// A sleeping child task per job (`Task.sleep(until: deadline)`) is not freed when it is
/// cancelled on Linux until its deadline would have passed: at thousands of jobs a second and
/// a 5-minute timeout, that is millions of live sleepers. Here a job registers a continuation
/// and ``run()`` — one task per consumer — wakes every `tick` and resumes those whose
/// deadline passed; a job that ends first removes its entry at once.
package final class DeadlineWatcher: Sendable {
    private struct State {
        var waiters: [Int: (deadline: ContinuousClock.Instant, continuation: CheckedContinuation<Bool, Never>)] = [:]
        /// Waits whose task was cancelled before they registered.
        var abandoned: Set<Int> = []
        var nextToken = 0
    }

    private let state = Mutex(State())
    /// How late a deadline may be noticed.
    package let tick: Duration

    package init(tick: Duration = .milliseconds(50)) { self.tick = tick }

    /// Jobs waiting for a deadline right now.
    package var count: Int { state.withLock { $0.waiters.count } }

    /// Wakes the waiters whose deadline passed, every `tick`, until the calling task is cancelled.
    package func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: tick)
            fire(now: .now)
        }
        // Whoever still waits hears "cancelled", not a timeout.
        let left = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            defer { state.waiters.removeAll() }
            return state.waiters.values.map(\.continuation)
        }
        for continuation in left { continuation.resume(returning: false) }
    }

    /// Resumes (true) every waiter whose deadline is at or before `now`.
    package func fire(now: ContinuousClock.Instant) {
        let due = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            var due: [CheckedContinuation<Bool, Never>] = []
            for (token, waiter) in state.waiters where waiter.deadline <= now {
                state.waiters[token] = nil
                due.append(waiter.continuation)
            }
            return due
        }
        for continuation in due { continuation.resume(returning: true) }
    }

    /// Returns true once `deadline` has passed (noticed within a tick), or false as soon as
    /// the calling task is cancelled.
    package func wait(until deadline: ContinuousClock.Instant) async -> Bool {
        if deadline <= .now { return true }
        let token = state.withLock { state -> Int in
            state.nextToken += 1
            return state.nextToken
        }
        return await withTaskCancellationHandler {
            defer { state.withLock { _ = $0.abandoned.remove(token) } }
            return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let cancelled = state.withLock { state -> Bool in
                    if state.abandoned.remove(token) != nil { return true }
                    state.waiters[token] = (deadline, continuation)
                    return false
                }
                if cancelled { continuation.resume(returning: false) }
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

/// A value produced once by one task and awaited by another, where the wait can be
/// cancelled (awaiting a `Task`'s `value` cannot: it lasts as long as the task).
package final class OneShot<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var waiters: [Int: CheckedContinuation<Value?, Never>] = [:]
        var abandoned: Set<Int> = []
        var nextToken = 0
    }

    private let state = Mutex(State())

    package init() {}

    /// Sets the value (the first call wins) and wakes every waiter.
    package func fulfil(_ value: Value) {
        let waiters = state.withLock { state -> [CheckedContinuation<Value?, Never>] in
            guard state.value == nil else { return [] }
            state.value = value
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: value) }
    }

    /// The value once it is set, or nil as soon as the calling task is cancelled.
    package func wait() async -> Value? {
        let token = state.withLock { state -> Int in
            state.nextToken += 1
            return state.nextToken
        }
        return await withTaskCancellationHandler {
            defer { state.withLock { _ = $0.abandoned.remove(token) } }
            return await withCheckedContinuation { (continuation: CheckedContinuation<Value?, Never>) in
                let immediate = state.withLock { state -> Value?? in
                    if let value = state.value { return .some(value) }
                    if state.abandoned.remove(token) != nil { return .some(nil) }
                    state.waiters[token] = continuation
                    return .none
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Value?, Never>? in
                if let waiter = state.waiters.removeValue(forKey: token) { return waiter }
                state.abandoned.insert(token)
                return nil
            }
            waiter?.resume(returning: nil)
        }
    }
}
