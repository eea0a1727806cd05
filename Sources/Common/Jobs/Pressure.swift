import Foundation
import WarrenConfig
import WarrenSupport

/// How far behind a tier may fall before the tiers below it give way: a start-latency target
/// per tier (start of work minus enqueued-at, the p99 of the last report window).
///
/// `WARREN_TIER_TARGET_MS_ENTERPRISE` (default 50) and `WARREN_TIER_TARGET_MS_PREMIUM`
/// (default 250); 0 turns watching that tier off. Free has no tier below it: it has no target.
package struct TierTargets: Sendable, Equatable {
    package static let defaults: [Tier: Duration] = [.enterprise: .milliseconds(50), .premium: .milliseconds(250)]

    /// A tier missing here is never waited for.
    package var targets: [Tier: Duration]

    package init(_ targets: [Tier: Duration] = TierTargets.defaults) { self.targets = targets }

    package init(environment: [String: String]) throws(SettingsError) {
        let reader = EnvironmentReader(environment)
        var targets = Self.defaults
        for tier in [Tier.enterprise, .premium] {
            guard let value = try reader.integer("WARREN_TIER_TARGET_MS_\(tier.rawValue.uppercased())", 0...600_000) else { continue }
            targets[tier] = value == 0 ? nil : .milliseconds(value)
        }
        self.init(targets)
    }

    /// The tiers a pool of `tier` gives way to: those above it with a target.
    package func watched(by tier: Tier) -> [Tier] {
        Tier.allCases.filter { $0.rank < tier.rank && targets[$0] != nil }
    }
}

extension Tier {
    /// 0 for enterprise, 1 for premium, 2 for free: lower is served first.
    package var rank: Int { Tier.allCases.firstIndex(of: self)! }
}

/// One consumer's report of a tier's pressure, sent on `warren.control` every
/// ``AdmissionControl/reportInterval`` while it starts jobs of that tier: the p99 of their
/// start latencies in the window, and whether the consumer was *saturated*: every slot busy,
/// more of the tier's deliveries held than it can start (at least max(concurrency,
/// prefetch/2)), or ready jobs of the tier waiting at the broker. Every consumer's control
/// queue gets every report.
package struct PressureReport: Sendable, Equatable {
    package var tier: Tier
    package var consumerID: String
    package var p99Milliseconds: Int
    package var jobs: Int
    /// Its own capacity held the tier's jobs back: a backlog it drains as fast as it can.
    package var saturated: Bool
    /// The window's median start latency (nil from consumers older than it: the console shows
    /// their p99 in its place).
    package var p50Milliseconds: Int?

    package init(tier: Tier, consumerID: String, p99Milliseconds: Int, jobs: Int, saturated: Bool = false, p50Milliseconds: Int? = nil) {
        self.tier = tier
        self.consumerID = consumerID
        self.p99Milliseconds = p99Milliseconds
        self.jobs = jobs
        self.saturated = saturated
        self.p50Milliseconds = p50Milliseconds
    }
}

/// A tier's pressure as the reports say: the worst p99 among the consumers that reported in
/// the last `freshFor` and were not saturated (a consumer that stopped starting jobs stops
/// reporting, and its report ages out). Pure: the caller passes the clock.
package struct PressureBoard: Sendable {
    private var latest: [String: (report: PressureReport, at: ContinuousClock.Instant)] = [:]
    package let freshFor: Duration

    package init(freshFor: Duration = .seconds(2)) { self.freshFor = freshFor }

    package mutating func receive(_ report: PressureReport, at now: ContinuousClock.Instant) {
        latest["\(report.tier.rawValue)/\(report.consumerID)"] = (report, now)
    }

    /// The worst fresh p99 of `tier` among consumers that had room, nil when none reported
    /// lately: 0 when every fresh report is of a saturated consumer (its own capacity is what
    /// holds the tier back, and the tiers below giving way would not help it).
    package mutating func pressure(of tier: Tier, at now: ContinuousClock.Instant) -> Int? {
        latest = latest.filter { now - $0.value.at < freshFor }
        let reports = latest.values.filter { $0.report.tier == tier }.map(\.report)
        guard !reports.isEmpty else { return nil }
        return reports.filter { !$0.saturated }.map(\.p99Milliseconds).max() ?? 0
    }

    /// Whether a consumer of `tier` with room reported in the last `freshFor`: the tier has
    /// jobs whose start latency the cores, not its own capacity, decide.
    package mutating func hasRoom(_ tier: Tier, at now: ContinuousClock.Instant) -> Bool {
        latest = latest.filter { now - $0.value.at < freshFor }
        return latest.values.contains { $0.report.tier == tier && !$0.report.saturated }
    }
}

/// The consumers' reports of each tier's start latency, kept minute by minute for an hour and
/// report by report for a few seconds: what the web console charts and shows live. Each
/// producer keeps its own, from the moment it started (Prometheus keeps the long history).
/// Per minute: the jobs started, their p50 (the mean of the reports' p50s weighted by their
/// jobs) and p99 (the worst report's). Pure: the caller passes the clock.
package struct LatencyHistory: Sendable {
    package struct Minute: Sendable, Equatable {
        /// Unix time of the minute's start, in minutes.
        package var minute: Int64
        package var jobs: Int
        package var p50: Int
        package var p99: Int
    }

    private struct Sums {
        var jobs = 0
        var weightedP50 = 0
        var p99 = 0
    }

    private var minutes: [Tier: [Int64: Sums]] = [:]
    private var recent: [String: (report: PressureReport, at: Int64)] = [:]
    package let keepMinutes: Int64
    package let recentSeconds: Int64

    package init(keepMinutes: Int64 = 60, recentSeconds: Int64 = 5) {
        self.keepMinutes = keepMinutes
        self.recentSeconds = recentSeconds
    }

    /// `at`: the report's arrival, in Unix milliseconds.
    package mutating func record(_ report: PressureReport, at: Int64) {
        let minute = at / 60_000
        var sums = minutes[report.tier, default: [:]][minute] ?? Sums()
        sums.jobs += report.jobs
        sums.weightedP50 += (report.p50Milliseconds ?? report.p99Milliseconds) * report.jobs
        sums.p99 = max(sums.p99, report.p99Milliseconds)
        minutes[report.tier, default: [:]][minute] = sums
        if minutes[report.tier]!.count > Int(keepMinutes) + 1 {
            minutes[report.tier] = minutes[report.tier]!.filter { $0.key > minute - keepMinutes }
        }
        recent["\(report.tier.rawValue)/\(report.consumerID)"] = (report, at)
        recent = recent.filter { at - $0.value.at < recentSeconds * 1_000 }
    }

    /// The last `keepMinutes` minutes up to the one holding `now` (Unix milliseconds), oldest
    /// first; a minute without reports has no entry.
    package func series(_ tier: Tier, now: Int64) -> [Minute] {
        let current = now / 60_000
        return (minutes[tier] ?? [:]).filter { $0.key > current - keepMinutes && $0.key <= current }.sorted { $0.key < $1.key }.map {
            Minute(minute: $0.key, jobs: $0.value.jobs, p50: $0.value.jobs > 0 ? $0.value.weightedP50 / $0.value.jobs : 0, p99: $0.value.p99)
        }
    }

    /// The reports heard in the last `recentSeconds` (the latest of each consumer and tier).
    package func recentReports(now: Int64) -> [PressureReport] {
        recent.values.filter { now - $0.at < recentSeconds * 1_000 }.map(\.report)
            .sorted { ($0.tier.rank, $0.consumerID) < ($1.tier.rank, $1.consumerID) }
    }

    /// A tier's start latency now: from the fresh reports, jobs-weighted p50 and worst p99;
    /// nil when no consumer reported the tier lately.
    package func current(_ tier: Tier, now: Int64) -> (p50: Int, p99: Int, jobs: Int)? {
        let reports = recentReports(now: now).filter { $0.tier == tier }
        let jobs = reports.reduce(0) { $0 + $1.jobs }
        guard !reports.isEmpty, jobs > 0 else { return nil }
        let p50 = reports.reduce(0) { $0 + ($1.p50Milliseconds ?? $1.p99Milliseconds) * $1.jobs } / jobs
        return (p50, reports.map(\.p99Milliseconds).max() ?? 0, jobs)
    }
}

/// What one consumer says of itself every ``interval`` on `warren.control`, busy or idle: the
/// tiers it serves, the concurrency and prefetch its admission grants it now (out of those
/// configured), the jobs it runs, and the destinations whose circuit breakers are not closed.
/// Producers keep the fresh ones for the console's overview.
package struct ConsumerStatus: Sendable, Equatable {
    package static let interval: Duration = .seconds(2)

    package var consumerID: String
    package var tiers: [Tier]
    package var concurrency: Int
    package var configuredConcurrency: Int
    package var prefetch: Int
    package var inFlight: Int
    /// Destinations whose breaker is open or half-open, sorted.
    package var openBreakers: [String]

    package init(consumerID: String, tiers: [Tier], concurrency: Int, configuredConcurrency: Int, prefetch: Int, inFlight: Int,
                 openBreakers: [String] = []) {
        self.consumerID = consumerID
        self.tiers = tiers
        self.concurrency = concurrency
        self.configuredConcurrency = configuredConcurrency
        self.prefetch = prefetch
        self.inFlight = inFlight
        self.openBreakers = openBreakers
    }
}
