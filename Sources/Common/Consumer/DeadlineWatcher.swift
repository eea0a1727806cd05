import WarrenSupport

/// One clock for the timeouts of every job a consumer runs.
///
/// A sleeping child task per job (`Task.sleep(until: deadline)`) is not freed when it is
/// cancelled on Linux until its deadline would have passed: at thousands of jobs a second and
/// a 5-minute timeout, that is millions of live sleepers. Here a job parks a continuation
/// and ``run()`` — one task per consumer — wakes every `tick` and resumes those whose
/// deadline passed; a job that ends first removes its entry at once.
package final class DeadlineWatcher: Sendable {
    private let lot = ParkingLot<Void, ContinuousClock.Instant, Bool>(())
    /// How late a deadline may be noticed.
    package let tick: Duration

    package init(tick: Duration = .milliseconds(50)) { self.tick = tick }

    /// Jobs waiting for a deadline right now.
    package var count: Int { lot.parkedCount }

    /// Wakes the waiters whose deadline passed, every `tick`, until the calling task is cancelled.
    package func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: tick)
            fire(now: .now)
        }
        // Whoever still waits hears "cancelled", not a timeout.
        lot.resume { _, _ in false }
    }

    /// Resumes (true) every waiter whose deadline is at or before `now`.
    package func fire(now: ContinuousClock.Instant) {
        lot.resume { deadline, _ in deadline <= now ? true : nil }
    }

    /// Returns true once `deadline` has passed (noticed within a tick), or false as soon as
    /// the calling task is cancelled.
    package func wait(until deadline: ContinuousClock.Instant) async -> Bool {
        if deadline <= .now { return true }
        return await lot.park(deadline, cancelled: false)
    }
}
