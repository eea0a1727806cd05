import Foundation
import WarrenConfig
import WarrenJobs
import WarrenSupport

/// Fleet-wide limits on what jobs call: a limit key with its rate, and the job types that
/// spend it (`WARREN_RATE_LIMITS=ticket-api=60/min`, `WARREN_RATE_LIMITED_TYPES=ticket.create=ticket-api`).
///
/// Each job of a limited type reserves the key's next token in Postgres before its handler
/// runs (``RateBucketStore/reserve(key:rate:burst:)``, shared by every consumer). When the turn
/// is later, the job is deferred (no attempt spent, no slot held) through the delay queues and
/// carries its turn (`x-warren-rate-turn`); it hops down the delays until the turn comes, then
/// runs without reserving again, if it is no later than one token's interval past it (else it
/// reserves again). So the jobs of one key start across the fleet at most at its rate (any
/// window: `burst + 1 + rate × length`), in the order they reserved.
package struct OutboundLimits: Sendable, Equatable {
    package struct Limit: Sendable, Equatable {
        package var key: String
        /// Tokens per second.
        package var rate: Double
        /// One second's worth, at least one: no more than the rate in any window of its period
        /// beyond that.
        package var burst: Double

        /// How late past its turn a job may still run on it: one token's interval, at most 1 s.
        /// So any window holds at most `burst + 1 + rate × its length` starts.
        package var lateness: Duration { .milliseconds(Int64(min(1, 1 / rate) * 1_000)) }

        package init(key: String, rate: Double, burst: Double) {
            self.key = key
            self.rate = rate
            self.burst = burst
        }
    }

    /// By job type.
    package var byType: [String: Limit]

    package init(byType: [String: Limit] = [:]) { self.byType = byType }

    package static let turnHeader = "x-warren-rate-turn"

    package init(environment: [String: String]) throws(SettingsError) {
        let reader = EnvironmentReader(environment)
        var limits: [String: Limit] = [:]
        for entry in (reader.string("WARREN_RATE_LIMITS") ?? "").split(separator: ",") {
            let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty, let rate = Self.rate(parts[1]) else {
                throw SettingsError(key: "WARREN_RATE_LIMITS", message: "expects key=N/s, N/min or N/h, comma-separated, got '\(entry)'")
            }
            limits[parts[0]] = Limit(key: parts[0], rate: rate, burst: max(1, rate.rounded(.down)))
        }
        var byType: [String: Limit] = [:]
        for entry in (reader.string("WARREN_RATE_LIMITED_TYPES") ?? "").split(separator: ",") {
            let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty else {
                throw SettingsError(key: "WARREN_RATE_LIMITED_TYPES", message: "expects type=limit-key, comma-separated, got '\(entry)'")
            }
            guard let limit = limits[parts[1]] else {
                throw SettingsError(key: "WARREN_RATE_LIMITED_TYPES", message: "'\(parts[1])' is not a key of WARREN_RATE_LIMITS")
            }
            byType[parts[0]] = limit
        }
        self.init(byType: byType)
    }

    /// "60/min" → 1 per second.
    package static func rate(_ text: String) -> Double? {
        let parts = text.split(separator: "/").map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2, let count = Double(parts[0]), count > 0, count.isFinite else { return nil }
        let seconds: Double
        switch parts[1] {
        case "s", "sec", "second": seconds = 1
        case "min", "minute": seconds = 60
        case "h", "hour": seconds = 3_600
        default: return nil
        }
        return count / seconds
    }

    /// The delay queue for a job whose turn is `wait` away: the longest delay not past the
    /// turn, so it hops closer without overshooting, and the shortest once under it.
    package static func hop(toward wait: Duration, among delays: [Topology.RetryDelay] = Topology.retryDelays) -> Topology.RetryDelay {
        delays.last { $0.milliseconds <= wait.milliseconds } ?? delays[0]
    }
}
