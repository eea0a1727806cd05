import Foundation
import WarrenConfig
import WarrenJobs
import WarrenResilience
import WarrenSupport

/// How one consumer process works its tier's queue. Every field has a `WARREN_*` variable
/// (see `init(tier:environment:)` and the README) and the `consumer` command's flags win.
package struct ConsumerConfiguration: Sendable {
    /// The tier this process serves: its own pool's tier, or an overflow pool's highest.
    package var tier: Tier
    /// The tier queues it takes from, highest first: `[tier]` for a tier's own pool; several
    /// for an overflow pool (``overflow(tiers:)``), whose free slots go to the highest tier
    /// with a delivery waiting.
    package var tiers: [Tier]
    /// `x-priority` of its subscriptions. A tier's own pool has none (0); an overflow pool has
    /// ``overflowPriority``, so the broker gives it a queue's work only while that queue's own
    /// consumers are full (a backlog).
    package var subscriptionPriority: Int32?
    /// Jobs run at once (a bounded task group).
    package var concurrency: Int
    /// Unacknowledged deliveries the broker may push to this consumer (per-consumer QoS).
    /// Finished jobs wait for their batch write before their ack, so this should exceed
    /// `concurrency` by about a batch.
    package var prefetch: UInt16
    /// A result batch is written when it has this many rows ...
    package var batchMaxRows: Int
    /// ... or when its first row waited this long.
    package var batchMaxDelay: Duration
    /// On SIGTERM, how long in-flight jobs may take to finish before they are handed back.
    package var shutdownGrace: Duration
    /// Drain mode: exit once the queue stayed empty this long and everything is flushed.
    package var exitWhenIdle: Duration?
    /// How long a handler may go on after it was cancelled (its timeout passed, its job was
    /// cancelled) before it is abandoned: its delivery left unacked, its slot freed.
    package var abandonAfter: Duration
    package var retry: RetryPolicy
    /// Per job type retry policies, overriding `retry`.
    package var retryByType: [String: RetryPolicy]
    /// Names this process in `job_runs.consumer_id` and the broker's connection list.
    package var consumerID: String
    /// Fleet-wide limits on job types (see ``OutboundLimits``).
    package var outboundLimits: OutboundLimits
    /// The process's OS scheduling priority (nice, 0-19) at all times; nil: adaptive, the
    /// tier's ``ProcessPriority/defaultNice(for:)`` only while it gives way (``PriorityKeeper``).
    package var nice: Int32?
    /// How long a keyed job's concurrency slot outlives its last refresh (refreshed every
    /// third of it while the job runs): how soon a slot of a crashed consumer frees.
    package var keyLeaseTTL: Duration
    /// The start-latency targets of the tiers above this pool's: while one is missed, this
    /// pool gives way (see ``AdmissionControl``).
    package var tierTargets: TierTargets
    /// How running jobs' progress is written, and when a quiet one is stalled.
    package var progress: ProgressTracker.Settings
    /// Which jobs' rows keep their message (payload and headers, ``KeptMessage``).
    package var keepPayloads: KeepPayloads

    /// `WARREN_KEEP_PAYLOADS`: `failed` (the default) keeps the message of every job that did
    /// not succeed at its first try (retrying, failed, dead, cancelled while running), so the
    /// console shows it and "retry now" can send it on, and a job that simply succeeds costs
    /// nothing more; `all` keeps every job's too.
    package enum KeepPayloads: String, Sendable, CaseIterable {
        case failed, all
    }
    /// Keyed jobs that may wait here for their key (holding a prefetched delivery, no worker
    /// slot); past it, they go back to the 1 s delay queue (no attempt spent).
    package var maxKeyWaiting: Int {
        max(concurrency, Int(prefetch) / 2)
    }

    /// Defaults per tier, tuned with `infra/bench/run` (see BENCHMARKS.md): paid tiers get
    /// more concurrency and a deeper prefetch.
    package static func defaults(for tier: Tier) -> (concurrency: Int, prefetch: UInt16) {
        switch tier {
        case .enterprise: (64, 2_000)
        case .premium: (32, 1_500)
        case .free: (16, 1_000)
        }
    }

    /// The overflow pool's subscription priority (below the tiers' own pools, which have 0).
    package static let overflowPriority: Int32 = -10

    /// Defaults of an overflow pool: its prefetch is per tier queue, and a delivery it holds
    /// unstarted is one no other consumer can run, so it holds little beyond its slots.
    package static let overflowDefaults: (concurrency: Int, prefetch: UInt16) = (32, 64)

    package init(tier: Tier, concurrency: Int? = nil, prefetch: UInt16? = nil) {
        let defaults = Self.defaults(for: tier)
        self.tier = tier
        self.tiers = [tier]
        self.subscriptionPriority = nil
        self.concurrency = max(1, concurrency ?? defaults.concurrency)
        self.prefetch = max(1, prefetch ?? defaults.prefetch)
        batchMaxRows = 1_000
        batchMaxDelay = .milliseconds(5)
        shutdownGrace = .seconds(25)
        exitWhenIdle = nil
        abandonAfter = .seconds(10)
        retry = RetryPolicy()
        retryByType = [:]
        consumerID = "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-\(tier.rawValue)"
        outboundLimits = OutboundLimits()
        nice = nil
        keyLeaseTTL = .seconds(30)
        tierTargets = TierTargets()
        progress = ProgressTracker.Settings()
        keepPayloads = .failed
    }

    /// Reads the `WARREN_*` variables over the tier's defaults.
    package init(tier: Tier, environment: [String: String]) throws(SettingsError) {
        self.init(tier: tier)
        let reader = EnvironmentReader(environment)
        if let number = try reader.integer("WARREN_CONCURRENCY", 1...10_000) { concurrency = number }
        if let number = try reader.integer("WARREN_PREFETCH", 1...65_535) { prefetch = UInt16(number) }
        if let number = try reader.integer("WARREN_BATCH_MAX_ROWS", 1...10_000) { batchMaxRows = number }
        if let number = try reader.integer("WARREN_BATCH_MAX_DELAY_MS", 0...10_000) { batchMaxDelay = .milliseconds(number) }
        if let duration = try reader.seconds("WARREN_SHUTDOWN_GRACE_SECONDS", 0...3_600) { shutdownGrace = duration }
        if let duration = try reader.seconds("WARREN_HANDLER_ABANDON_SECONDS", 0...3_600) { abandonAfter = duration }
        if let number = try reader.integer("WARREN_RETRY_MAX_ATTEMPTS", 1...1_000) { retry.maxAttempts = number }
        if let duration = try reader.seconds("WARREN_RETRY_BASE_SECONDS", 0.001...86_400) {
            retry.backoff.base = duration
            retry.backoff.floor = min(retry.backoff.floor, duration)
        }
        if let duration = try reader.seconds("WARREN_RETRY_CAP_SECONDS", 0.001...86_400) { retry.backoff.cap = duration }
        if let text = reader.string("WARREN_RETRY_MAX_ATTEMPTS_BY_TYPE") {
            // "email.send=8,report.build=2"
            for entry in text.split(separator: ",") {
                let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, let attempts = Int(parts[1]), attempts >= 1 else {
                    throw SettingsError(key: "WARREN_RETRY_MAX_ATTEMPTS_BY_TYPE", message: "expects type=attempts,..., got '\(entry)'")
                }
                var policy = retry
                policy.maxAttempts = attempts
                retryByType[parts[0]] = policy
            }
        }
        if let id = reader.string("WARREN_CONSUMER_ID") { consumerID = id }
        if let text = reader.string("WARREN_KEEP_PAYLOADS") {
            guard let keep = KeepPayloads(rawValue: text) else {
                throw SettingsError(key: "WARREN_KEEP_PAYLOADS", message: "expects failed or all, got '\(text)'")
            }
            keepPayloads = keep
        }
        outboundLimits = try OutboundLimits(environment: environment)
        if let number = try reader.integer("WARREN_NICE", 0...19) { nice = Int32(number) }
        if let duration = try reader.seconds("WARREN_KEY_LEASE_SECONDS", 0.3...3_600) { keyLeaseTTL = duration }
        tierTargets = try TierTargets(environment: environment)
        if let number = try reader.integer("WARREN_PROGRESS_FLUSH_MS", 10...60_000) { progress.flushInterval = .milliseconds(number) }
        progress.stallAfter = .seconds(try Settings(environment: environment).stallSeconds)
        if let seconds = try reader.integer("WARREN_SLOW_JOB_SECONDS", 0...604_800) { progress.slowAfter = seconds == 0 ? nil : .seconds(seconds) }
        if let text = reader.string("WARREN_SLOW_JOB_SECONDS_BY_TYPE") {
            // "report.build=600,email.send=5" (0: never slow)
            for entry in text.split(separator: ",") {
                let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2, !parts[0].isEmpty, let seconds = Int(parts[1]), (0...604_800).contains(seconds) else {
                    throw SettingsError(key: "WARREN_SLOW_JOB_SECONDS_BY_TYPE", message: "expects type=seconds,..., got '\(entry)'")
                }
                progress.slowAfterByType[parts[0]] = seconds == 0 ? .some(nil) : .some(.seconds(seconds))
            }
        }
    }

    /// An overflow pool over `tiers` (any order; it serves them highest first), with the
    /// ``overflowDefaults`` and then the `WARREN_*` variables.
    package static func overflow(tiers: [Tier], environment: [String: String]) throws(SettingsError) -> ConsumerConfiguration {
        let ordered = Tier.allCases.filter(tiers.contains)
        precondition(!ordered.isEmpty, "an overflow pool needs at least one tier")
        var base = environment
        if EnvironmentReader(environment).string("WARREN_CONCURRENCY") == nil { base["WARREN_CONCURRENCY"] = "\(overflowDefaults.concurrency)" }
        if EnvironmentReader(environment).string("WARREN_PREFETCH") == nil { base["WARREN_PREFETCH"] = "\(overflowDefaults.prefetch)" }
        var configuration = try ConsumerConfiguration(tier: ordered[0], environment: base)
        configuration.tiers = ordered
        configuration.subscriptionPriority = overflowPriority
        if EnvironmentReader(environment).string("WARREN_CONSUMER_ID") == nil {
            configuration.consumerID = "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)-overflow"
        }
        return configuration
    }

    /// What logs and `/status` call this pool: its tier, or `overflow(enterprise,premium,free)`.
    package var poolName: String {
        tiers.count == 1 && subscriptionPriority == nil ? tier.rawValue : "overflow(\(tiers.map(\.rawValue).joined(separator: ",")))"
    }

    package func retryPolicy(for type: String) -> RetryPolicy { retryByType[type] ?? retry }
}

extension ProcessPriority {
    /// The nice a pool takes while it gives way (BENCHMARKS.md, tiers): free 10, premium 5,
    /// enterprise and an overflow pool 0 (an overflow pool yields by its consumer priorities).
    package static func defaultNice(for configuration: ConsumerConfiguration) -> Int32 {
        guard configuration.tiers.count == 1, configuration.subscriptionPriority == nil else { return 0 }
        switch configuration.tier {
        case .enterprise: return 0
        case .premium: return 5
        case .free: return 10
        }
    }
}
