import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// When `producer serve` refuses new work of a tier (503, `code: "shed"`): the rule, pure.
///
/// A tier's *load* is the ready messages of its own queue and of every tier above it: free
/// counts everything, premium counts premium and enterprise, enterprise only its own. A tier
/// is shed once its load reaches its threshold, and taken back once the load falls below 90%
/// of it (so it does not flap on every poll). With the thresholds rising from free to
/// enterprise, growing pressure sheds free first, then premium, and enterprise last; a backlog
/// of free work alone never sheds a paid tier.
package struct ShedPolicy: Sendable, Equatable {
    /// Default thresholds, in ready messages: half of each tier's queue cap
    /// (``Topology/queueCaps``), so shedding starts well before `reject-publish` would.
    package static let defaults: [Tier: Int] = [.free: 25_000, .premium: 100_000, .enterprise: 500_000]

    /// A tier's threshold; a tier missing here is never shed.
    package var thresholds: [Tier: Int]

    package init(thresholds: [Tier: Int] = ShedPolicy.defaults) { self.thresholds = thresholds }

    /// `WARREN_SHED_BACKLOG_<TIER>` (ready messages; 0 turns shedding of that tier off).
    package init(environment: [String: String]) throws(SettingsError) {
        let reader = EnvironmentReader(environment)
        var thresholds = Self.defaults
        for tier in Tier.allCases {
            guard let value = try reader.integer("WARREN_SHED_BACKLOG_\(tier.rawValue.uppercased())", 0...100_000_000) else { continue }
            thresholds[tier] = value == 0 ? nil : value
        }
        self.init(thresholds: thresholds)
    }

    /// The tiers above `tier`, and itself.
    static func counted(for tier: Tier) -> [Tier] {
        switch tier {
        case .enterprise: [.enterprise]
        case .premium: [.enterprise, .premium]
        case .free: [.enterprise, .premium, .free]
        }
    }

    /// The load that counts against `tier`.
    package func load(for tier: Tier, backlog: [Tier: Int]) -> Int {
        Self.counted(for: tier).reduce(0) { $0 + (backlog[$1] ?? 0) }
    }

    /// Whether `tier` is shed, given whether it was until now.
    package func sheds(_ tier: Tier, backlog: [Tier: Int], wasShedding: Bool) -> Bool {
        guard let threshold = thresholds[tier] else { return false }
        let load = load(for: tier, backlog: backlog)
        return wasShedding ? load * 10 >= threshold * 9 : load >= threshold
    }
}

/// Each tier queue's backlog as `producer serve` last saw it, and which tiers it sheds.
///
/// A ``Service``: every `interval` it asks the broker for the ready-message count of the three
/// tier queues (a passive declare, on a connection of its own that never publishes, so a
/// broker blocking publishers does not stall it) and applies the ``ShedPolicy``. When it has
/// no answer younger than `staleAfter` (broker unreachable) it sheds nothing: publishing then
/// fails on its own, with its own answer. Metrics: `warren_tier_backlog{tier}`,
/// `warren_shed_threshold{tier}`, `warren_shedding{tier}` (1 while shed).
package final class TierPressure: Service, Sendable {
    package struct Snapshot: Sendable, Equatable {
        package var backlog: [Tier: Int]
        package var shedding: Set<Tier>
        package var at: ContinuousClock.Instant
    }

    package let policy: ShedPolicy
    private let amqp: AMQPConfiguration
    private let interval: Duration
    private let staleAfter: Duration
    private let logger: Logger
    private let latest = Mutex<Snapshot?>(nil)
    private let backlogGauges: [Tier: Gauge]
    private let sheddingGauges: [Tier: Gauge]

    package init(policy: ShedPolicy, amqp: AMQPConfiguration, interval: Duration = .milliseconds(500), logger: Logger) {
        self.policy = policy
        var amqp = amqp
        amqp.connectionName += " (tier pressure)"
        self.amqp = amqp
        self.interval = interval
        self.staleAfter = max(interval * 4, .seconds(2))
        self.logger = logger
        var backlogGauges: [Tier: Gauge] = [:]
        var sheddingGauges: [Tier: Gauge] = [:]
        for tier in Tier.allCases {
            backlogGauges[tier] = Gauge(label: "warren_tier_backlog", dimensions: [("tier", tier.rawValue)])
            sheddingGauges[tier] = Gauge(label: "warren_shedding", dimensions: [("tier", tier.rawValue)])
            Gauge(label: "warren_shed_threshold", dimensions: [("tier", tier.rawValue)]).record(policy.thresholds[tier] ?? 0)
        }
        self.backlogGauges = backlogGauges
        self.sheddingGauges = sheddingGauges
    }

    /// The last answer, if it is recent enough to act on.
    package var current: Snapshot? {
        guard let snapshot = latest.withLock({ $0 }), ContinuousClock.now - snapshot.at < staleAfter else { return nil }
        return snapshot
    }

    /// Whether new work of `tier` is refused right now.
    package func isShedding(_ tier: Tier) -> Bool { current?.shedding.contains(tier) ?? false }

    package func run() async throws {
        await cancelWhenGracefulShutdown {
            // Once connected, the connection reconnects by itself; until then, a fresh one
            // each round.
            var connection: AMQPConnection?
            while !Task.isCancelled {
                if connection == nil {
                    let candidate = AMQPConnection(configuration: self.amqp, logger: self.logger)
                    do {
                        try await candidate.connect()
                        connection = candidate
                    } catch {
                        self.logger.debug("tier pressure: cannot connect", metadata: ["error": "\(error)"])
                    }
                }
                if let connection { await self.poll(connection) }
                try? await Task.sleep(for: self.interval)
            }
            await connection?.close()
        }
    }

    /// One round: read the depths and decide.
    private func poll(_ connection: AMQPConnection) async {
        do {
            let depths = try await connection.withControl { control in
                try Tier.allCases.map { tier in (tier, try control.readyCount(tier)) }
            }
            record(Dictionary(uniqueKeysWithValues: depths))
        } catch {
            logger.debug("tier pressure: cannot read the queue depths", metadata: ["error": "\(error)"])
        }
    }

    private func record(_ backlog: [Tier: Int]) {
        let (snapshot, changed) = latest.withLock { latest -> (Snapshot, [Tier: Bool]) in
            let before = latest?.shedding ?? []
            var shedding = Set<Tier>()
            for tier in Tier.allCases where policy.sheds(tier, backlog: backlog, wasShedding: before.contains(tier)) {
                shedding.insert(tier)
            }
            let snapshot = Snapshot(backlog: backlog, shedding: shedding, at: .now)
            latest = snapshot
            var changed: [Tier: Bool] = [:]
            for tier in Tier.allCases where before.contains(tier) != shedding.contains(tier) { changed[tier] = shedding.contains(tier) }
            return (snapshot, changed)
        }
        for tier in Tier.allCases {
            backlogGauges[tier]?.record(snapshot.backlog[tier] ?? 0)
            sheddingGauges[tier]?.record(snapshot.shedding.contains(tier) ? 1 : 0)
        }
        for (tier, on) in changed.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            logger.warning(on ? "shedding new work of a tier" : "no longer shedding new work of a tier",
                           metadata: ["tier": "\(tier.rawValue)", "load": "\(policy.load(for: tier, backlog: backlog))",
                                      "threshold": "\(policy.thresholds[tier] ?? 0)"])
        }
    }
}
