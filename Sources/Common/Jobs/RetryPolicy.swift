import Foundation
import WarrenSupport

/// When and how a failed job is tried again.
///
/// A retryable failure waits `backoff` (exponential with jitter, or the handler's
/// `retry-after` when it gave one), rounded to the nearest retry delay queue, and comes back
/// with `attempt + 1`; after `maxAttempts` runs it is dead. Policies are per tier, with
/// per-type overrides (`WARREN_RETRY_MAX_ATTEMPTS`, `WARREN_RETRY_BASE_SECONDS`,
/// `WARREN_RETRY_CAP_SECONDS`; see the consumer's configuration).
package struct RetryPolicy: Sendable, Equatable {
    package var maxAttempts: Int
    package var backoff: Backoff

    package init(maxAttempts: Int = 5, backoff: Backoff = Backoff(base: .seconds(1), cap: .seconds(600), floor: .seconds(1))) {
        self.maxAttempts = max(1, maxAttempts)
        self.backoff = backoff
    }

    /// True when a job that just failed its `attempt`-th run may run again.
    package func allowsRetry(after attempt: Int) -> Bool { attempt < maxAttempts }

    /// The delay queue for the retry after the `attempt`-th run failed (1-based attempt).
    package func delayQueue<G: RandomNumberGenerator>(after attempt: Int, retryAfter: Duration?,
                                                      using generator: inout G) -> Topology.RetryDelay {
        let wanted = retryAfter ?? backoff.delay(attempt: attempt - 1, using: &generator)
        return Self.nearestDelay(to: wanted)
    }

    /// The retry delay queue whose TTL is nearest to `delay` (on a log scale, so 3 s picks
    /// 5 s over 1 s only past their geometric mean); ties go to the shorter one.
    package static func nearestDelay(to delay: Duration, among delays: [Topology.RetryDelay] = Topology.retryDelays) -> Topology.RetryDelay {
        let wanted = max(1.0, Double(delay.milliseconds))
        var best = delays[0]
        var bestDistance = Double.infinity
        for candidate in delays {
            let distance = abs(log2(Double(candidate.milliseconds)) - log2(wanted))
            if distance < bestDistance {
                best = candidate
                bestDistance = distance
            }
        }
        return best
    }
}
