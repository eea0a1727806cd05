/// Exponential backoff with full jitter ("AWS architecture blog" style): the n-th delay is
/// uniform in `[0, min(cap, base * 2^n)]`, never below `floor`.
package struct Backoff: Sendable, Equatable {
    package var base: Duration
    package var cap: Duration
    package var floor: Duration

    package init(base: Duration = .milliseconds(100), cap: Duration = .seconds(30), floor: Duration = .milliseconds(10)) {
        self.base = base
        self.cap = cap
        self.floor = floor
    }

    /// The upper bound of the delay for `attempt` (0-based), before jitter.
    package func ceiling(attempt: Int) -> Duration {
        let exponent = min(max(attempt, 0), 40)
        let scaled = base * Double(1 << UInt64(min(exponent, 62)))
        return min(scaled, cap)
    }

    /// The delay before retry number `attempt` (0-based), with jitter from `generator`.
    package func delay<G: RandomNumberGenerator>(attempt: Int, using generator: inout G) -> Duration {
        let upper = ceiling(attempt: attempt)
        let upperNanos = max(upper.nanoseconds, floor.nanoseconds)
        let nanos = Int64.random(in: floor.nanoseconds...upperNanos, using: &generator)
        return .nanoseconds(nanos)
    }

    package func delay(attempt: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return delay(attempt: attempt, using: &generator)
    }
}

extension Duration {
    /// Whole nanoseconds, saturating.
    package var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return product + attoseconds / 1_000_000_000
    }

    /// Whole milliseconds, saturating.
    package var milliseconds: Int64 { nanoseconds / 1_000_000 }
}
