import Foundation
import Synchronization
import WarrenConfig
import WarrenJobs
import WarrenSupport

/// A token bucket: holds up to `burst` tokens, refilled at `rate` per second; each request
/// takes one.
package struct TokenBucket: Sendable, Equatable {
    package var rate: Double
    package var burst: Double
    private var tokens: Double
    private var updated: Double

    package init(rate: Double, burst: Double, now: Double) {
        self.rate = max(rate, 0.000_001)
        self.burst = max(burst, 1)
        self.tokens = self.burst
        self.updated = now
    }

    package struct Decision: Sendable, Equatable {
        package var allowed: Bool
        /// Whole tokens left after this request.
        package var remaining: Int
        /// Seconds until a request would be allowed (0 when allowed).
        package var retryAfter: Int
        /// Seconds until the bucket is full again.
        package var reset: Int
    }

    /// Takes a token if one is there; `now` in seconds on any monotonic clock.
    package mutating func take(now: Double) -> Decision {
        tokens = min(burst, tokens + max(0, now - updated) * rate)
        updated = max(updated, now)
        let allowed = tokens >= 1
        if allowed { tokens -= 1 }
        let retryAfter = allowed ? 0 : Int(((1 - tokens) / rate).rounded(.up))
        return Decision(allowed: allowed, remaining: Int(tokens.rounded(.down)), retryAfter: max(allowed ? 0 : 1, retryAfter),
                        reset: Int(((burst - tokens) / rate).rounded(.up)))
    }
}

/// Per-key token buckets (one per API token), with limits by tier.
package final class RateLimiter: Sendable {
    package struct Limit: Sendable, Equatable {
        package var rate: Double
        package var burst: Double
    }

    /// Defaults: enterprise highest. `WARREN_RATE_LIMIT_<TIER>` = `rate,burst` (per second).
    package static let defaults: [Tier: Limit] = [
        .enterprise: Limit(rate: 1_000, burst: 2_000),
        .premium: Limit(rate: 200, burst: 400),
        .free: Limit(rate: 20, burst: 40),
    ]

    package let limits: [Tier: Limit]
    private let buckets = Mutex([String: TokenBucket]())
    private let start = ContinuousClock.now

    package init(limits: [Tier: Limit] = RateLimiter.defaults) { self.limits = limits }

    package static func limits(environment: [String: String]) throws(SettingsError) -> [Tier: Limit] {
        var limits = defaults
        for tier in Tier.allCases {
            let key = "WARREN_RATE_LIMIT_\(tier.rawValue.uppercased())"
            guard let text = EnvironmentReader(environment).string(key) else { continue }
            let parts = text.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard parts.count == 2, parts[0] > 0, parts[1] >= 1 else {
                throw SettingsError(key: key, message: "expects 'rate,burst' (requests per second, bucket size), got '\(text)'")
            }
            limits[tier] = Limit(rate: parts[0], burst: parts[1])
        }
        return limits
    }

    package func take(key: String, tier: Tier) -> TokenBucket.Decision {
        let limit = limits[tier] ?? Self.defaults[tier]!
        let now = Double((ContinuousClock.now - start).nanoseconds) / 1e9
        return buckets.withLock { buckets in
            var bucket = buckets[key] ?? TokenBucket(rate: limit.rate, burst: limit.burst, now: now)
            let decision = bucket.take(now: now)
            buckets[key] = bucket
            return decision
        }
    }
}
