import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import WarrenAMQP
import WarrenConfig
import WarrenJobs
import WarrenSupport

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

    /// The tiers shed because a tier above them is behind its start-latency target, given each
    /// paid tier's pressure (the worst fresh p99, in ms, among its consumers with room, as the
    /// consumers report it on `warren.control`: ``PressureBoard``). Free is shed while premium
    /// or enterprise is over its target; premium while enterprise is over twice its target;
    /// enterprise never (its own latency is not helped by refusing it).
    package static func shedForLatency(pressure: [Tier: Int], targets: TierTargets) -> Set<Tier> {
        func over(_ tier: Tier, times factor: Int) -> Bool {
            guard let p99 = pressure[tier], let target = targets.targets[tier] else { return false }
            return p99 > Int(target.milliseconds) * factor
        }
        var shed = Set<Tier>()
        if over(.enterprise, times: 1) || over(.premium, times: 1) { shed.insert(.free) }
        if over(.enterprise, times: 2) { shed.insert(.premium) }
        return shed
    }
}

/// Why `producer serve` refuses a tier's new work.
package enum ShedReason: String, Sendable, Equatable {
    /// The ready messages counted against the tier reached its threshold.
    case backlog
    /// A tier above it is behind its start-latency target.
    case latency
}

/// Each tier queue's backlog as `producer serve` last saw it, the paid tiers' start latency as
/// their consumers report it, and which tiers it sheds.
///
/// A ``Service``: every `interval` it asks the broker for the ready-message count of the three
/// tier queues (a passive declare, on a connection of its own that never publishes, so a
/// broker blocking publishers does not stall it) and applies the ``ShedPolicy``. It hears the
/// consumers' pressure reports on `warren.control` (a queue of its own, deleted with its
/// connection) and keeps them for the console (``latency``); with `latencyTargets`, it also sheds the tiers below one that is behind its
/// target (``ShedPolicy/shedForLatency(pressure:targets:)``), decided again on every report
/// and held for `latencyHold` after the last one that was behind, so it does not flap
/// between reports. When it has no backlog answer younger than `staleAfter` (broker
/// unreachable) it sheds nothing: publishing then fails on its own, with its own answer.
/// Metrics: `warren_tier_backlog{tier}`, `warren_tier_queue_capacity{tier}` (every lane's cap),
/// `warren_tier_consumers{tier}` (the fewest consumers any of its lanes has), `warren_shed_threshold{tier}`, `warren_shedding{tier}`
/// (1 while shed, for either reason), `warren_shedding_for_latency{tier}`,
/// `warren_tier_pressure_ms{tier}` (-1: no fresh report) and `warren_tier_target_ms{tier}`.
package final class TierPressure: Service, Sendable {
    package struct Snapshot: Sendable, Equatable {
        package var backlog: [Tier: Int]
        package var shedding: Set<Tier>
        package var at: ContinuousClock.Instant
    }

    private struct State {
        var snapshot: Snapshot?
        var forBacklog: Set<Tier> = []
        var board = PressureBoard()
        var latencyShedUntil: [Tier: ContinuousClock.Instant] = [:]
        var forLatency: Set<Tier> = []
        var history = LatencyHistory()
        var statuses: [String: (status: ConsumerStatus, at: ContinuousClock.Instant)] = [:]
    }

    package let policy: ShedPolicy
    /// The start-latency targets shedding keeps (nil: shedding by backlog only).
    package let latencyTargets: TierTargets?
    private let latencyHold: Duration
    private let amqp: AMQPConfiguration
    private let interval: Duration
    private let staleAfter: Duration
    private let logger: Logger
    private let state = Mutex(State())
    private let backlogGauges: [Tier: Gauge]
    private let consumerGauges: [Tier: Gauge]
    private let sheddingGauges: [Tier: Gauge]
    private let latencySheddingGauges: [Tier: Gauge]
    private let pressureGauges: [Tier: Gauge]

    package init(policy: ShedPolicy, amqp: AMQPConfiguration, interval: Duration = .milliseconds(500),
                 latencyTargets: TierTargets? = nil, latencyHold: Duration = .seconds(1), logger: Logger) {
        self.policy = policy
        self.latencyTargets = latencyTargets
        self.latencyHold = latencyHold
        var amqp = amqp
        amqp.connectionName += " (tier pressure)"
        self.amqp = amqp
        self.interval = interval
        self.staleAfter = max(interval * 4, .seconds(2))
        self.logger = logger
        var backlogGauges: [Tier: Gauge] = [:]
        var consumerGauges: [Tier: Gauge] = [:]
        var sheddingGauges: [Tier: Gauge] = [:]
        var latencySheddingGauges: [Tier: Gauge] = [:]
        var pressureGauges: [Tier: Gauge] = [:]
        for tier in Tier.allCases {
            let dimensions = [("tier", tier.rawValue)]
            backlogGauges[tier] = Gauge(label: "warren_tier_backlog", dimensions: dimensions)
            consumerGauges[tier] = Gauge(label: "warren_tier_consumers", dimensions: dimensions)
            // What its queues hold at most (every lane's cap: past it the broker refuses publishes).
            Gauge(label: "warren_tier_queue_capacity", dimensions: dimensions).record(Int(Topology.queueCaps[tier] ?? 0) * Tier.lanes)
            sheddingGauges[tier] = Gauge(label: "warren_shedding", dimensions: dimensions)
            Gauge(label: "warren_shed_threshold", dimensions: dimensions).record(policy.thresholds[tier] ?? 0)
            guard let latencyTargets else { continue }
            latencySheddingGauges[tier] = Gauge(label: "warren_shedding_for_latency", dimensions: dimensions)
            latencySheddingGauges[tier]?.record(0)
            if let target = latencyTargets.targets[tier] {
                pressureGauges[tier] = Gauge(label: "warren_tier_pressure_ms", dimensions: dimensions)
                pressureGauges[tier]?.record(-1)
                Gauge(label: "warren_tier_target_ms", dimensions: dimensions).record(target.milliseconds)
            }
        }
        self.backlogGauges = backlogGauges
        self.consumerGauges = consumerGauges
        self.sheddingGauges = sheddingGauges
        self.latencySheddingGauges = latencySheddingGauges
        self.pressureGauges = pressureGauges
    }

    /// The last answer, if it is recent enough to act on.
    package var current: Snapshot? {
        guard let snapshot = state.withLock({ $0.snapshot }), ContinuousClock.now - snapshot.at < staleAfter else { return nil }
        return snapshot
    }

    /// Whether new work of `tier` is refused right now.
    package func isShedding(_ tier: Tier) -> Bool { shedReason(tier) != nil }

    /// Why new work of `tier` is refused right now (nil: it is not); a backlog over its
    /// threshold is named before a tier above behind its target.
    package func shedReason(_ tier: Tier) -> ShedReason? {
        let (snapshot, forBacklog, forLatency) = state.withLock { ($0.snapshot, $0.forBacklog, $0.forLatency) }
        guard let snapshot, ContinuousClock.now - snapshot.at < staleAfter, snapshot.shedding.contains(tier) else { return nil }
        return forBacklog.contains(tier) ? .backlog : forLatency.contains(tier) ? .latency : nil
    }

    package func run() async throws {
        await cancelWhenGracefulShutdown {
            // Once connected, the connection reconnects by itself (declaring the control queue
            // again and subscribing to it again); until then, a fresh one each round.
            let controlQueue = "warren.control.serve.\(JobID.make().lowercasedString.prefix(12))"
            // Always: the reports also feed the console's latency figures (``latency``).
            let listens = true
            var setup: AMQPConnection.Setup?
            if listens {
                setup = { control in
                    try control.declareExchange(Topology.controlExchange, type: "fanout")
                    try control.declareQueue(controlQueue, durable: false, exclusive: true, autoDelete: true)
                    try control.bindQueue(controlQueue, exchange: Topology.controlExchange, routingKey: "")
                }
            }
            var connection: AMQPConnection?
            var listener: Task<Void, Never>?
            while !Task.isCancelled {
                if connection == nil {
                    let candidate = AMQPConnection(configuration: self.amqp, logger: self.logger, setup: setup)
                    do {
                        try await candidate.connect()
                        if listens {
                            let reports = try await candidate.consume(queue: controlQueue, prefetch: 256)
                            listener = Task { await self.listen(to: reports, on: candidate) }
                        }
                        connection = candidate
                    } catch {
                        await candidate.close()
                        self.logger.debug("tier pressure: cannot connect", metadata: ["error": "\(error)"])
                    }
                }
                if let connection { await self.poll(connection) }
                try? await Task.sleep(for: self.interval)
            }
            listener?.cancel()
            await connection?.close()
            await listener?.value
        }
    }

    /// The consumers' pressure reports, as they come.
    private func listen(to messages: AMQPDeliveries, on connection: AMQPConnection) async {
        do {
            for try await message in messages {
                switch ControlMessage(body: message.body) {
                case .pressure(let report)?: receive(report)
                case .status(let status)?: receive(status)
                default: break
                }
                try? await connection.ack(message)
            }
        } catch {
            if !Task.isCancelled { logger.warning("tier pressure: the consumers' reports ended", metadata: ["error": "\(error)"]) }
        }
    }

    /// One consumer's report: the latency part of the decision, taken again.
    package func receive(_ report: PressureReport, at now: ContinuousClock.Instant = .now) {
        let wallClock = Timestamp.now().microseconds / 1_000
        let changes = state.withLock { state -> [(Tier, Bool)] in
            state.history.record(report, at: wallClock)
            guard latencyTargets != nil else { return [] }
            state.board.receive(report, at: now)
            return decide(&state, at: now)
        }
        publish(changes)
    }

    /// One consumer's status (for the console).
    package func receive(_ status: ConsumerStatus, at now: ContinuousClock.Instant = .now) {
        state.withLock { state in
            state.statuses[status.consumerID] = (status, now)
            state.statuses = state.statuses.filter { now - $0.value.at < ConsumerStatus.interval * 3 }
        }
    }

    /// The consumers that said how they are within the last three status intervals.
    package var consumers: [ConsumerStatus] {
        let now = ContinuousClock.now
        return state.withLock { $0.statuses.values }.filter { now - $0.at < ConsumerStatus.interval * 3 }.map(\.status)
            .sorted { $0.consumerID < $1.consumerID }
    }

    /// The start latencies the consumers reported (for the console).
    package var latency: LatencyHistory { state.withLock { $0.history } }

    /// One round: read the depths and decide.
    private func poll(_ connection: AMQPConnection) async {
        do {
            let depths = try await connection.withControl { control in
                try Tier.allCases.map { tier in (tier, try control.readyAndConsumers(tier)) }
            }
            for (tier, depth) in depths { consumerGauges[tier]?.record(depth.consumers) }
            record(Dictionary(uniqueKeysWithValues: depths.map { ($0.0, $0.1.ready) }))
        } catch {
            logger.debug("tier pressure: cannot read the queue depths", metadata: ["error": "\(error)"])
        }
    }

    private func record(_ backlog: [Tier: Int]) {
        let now = ContinuousClock.now
        let changes = state.withLock { state -> [(Tier, Bool)] in
            var forBacklog = Set<Tier>()
            for tier in Tier.allCases where policy.sheds(tier, backlog: backlog, wasShedding: state.forBacklog.contains(tier)) {
                forBacklog.insert(tier)
            }
            state.forBacklog = forBacklog
            state.snapshot = Snapshot(backlog: backlog, shedding: state.snapshot?.shedding ?? [], at: now)
            return decide(&state, at: now)
        }
        for tier in Tier.allCases { backlogGauges[tier]?.record(backlog[tier] ?? 0) }
        publish(changes)
    }

    /// Takes the latency part again (the board as of `now`) and joins it with the backlog
    /// part: the tiers whose shedding changed, and whether it is on now.
    private func decide(_ state: inout State, at now: ContinuousClock.Instant) -> [(Tier, Bool)] {
        if let latencyTargets {
            var pressure: [Tier: Int] = [:]
            for tier in latencyTargets.targets.keys { pressure[tier] = state.board.pressure(of: tier, at: now) }
            for tier in ShedPolicy.shedForLatency(pressure: pressure, targets: latencyTargets) {
                state.latencyShedUntil[tier] = now + latencyHold
            }
            state.latencyShedUntil = state.latencyShedUntil.filter { $0.value > now }
            state.forLatency = Set(state.latencyShedUntil.keys)
            for tier in Tier.allCases { pressureGauges[tier]?.record(pressure[tier] ?? -1) }
        }
        guard var snapshot = state.snapshot else { return [] }
        let before = snapshot.shedding
        snapshot.shedding = state.forBacklog.union(state.forLatency)
        state.snapshot = snapshot
        return Tier.allCases.filter { before.contains($0) != snapshot.shedding.contains($0) }.map { ($0, snapshot.shedding.contains($0)) }
    }

    /// Gauges and a log line per change.
    private func publish(_ changes: [(Tier, Bool)]) {
        let (snapshot, forLatency) = state.withLock { ($0.snapshot, $0.forLatency) }
        for tier in Tier.allCases {
            sheddingGauges[tier]?.record(snapshot?.shedding.contains(tier) == true ? 1 : 0)
            latencySheddingGauges[tier]?.record(forLatency.contains(tier) ? 1 : 0)
        }
        for (tier, on) in changes {
            var metadata: Logger.Metadata = ["tier": "\(tier.rawValue)"]
            if let backlog = snapshot?.backlog {
                metadata["load"] = "\(policy.load(for: tier, backlog: backlog))"
                metadata["threshold"] = "\(policy.thresholds[tier] ?? 0)"
            }
            if on { metadata["reason"] = "\(shedReason(tier)?.rawValue ?? "backlog")" }
            logger.warning(on ? "shedding new work of a tier" : "no longer shedding new work of a tier", metadata: metadata)
        }
    }
}
