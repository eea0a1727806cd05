import Foundation
import Metrics
import Synchronization
import WarrenJobs
import WarrenSupport

/// The admission a lower tier's pool grants itself: a level 1/2^k of its configured
/// concurrency and prefetch, k from 0 (all of it) to ``maxShift``. Pure.
///
/// - While a watched tier is behind its target, the level halves, at most once per
///   `shrinkEvery` (the first step at once).
/// - Once every watched tier is back under its target for `growAfter`, it doubles, at most
///   once per `growEvery`.
/// - When no watched tier has reported at all (idle: no job of it started lately), it goes
///   straight back to 1: an idle higher tier is not at risk. (The pool tells a quiet tier
///   with jobs waiting, which counts as clear, from an idle one: ``AdmissionControl``.)
package struct AdmissionPolicy: Sendable, Equatable {
    package static let maxShift = 6

    package private(set) var shift = 0
    private var lastChange: ContinuousClock.Instant?
    private var clearSince: ContinuousClock.Instant?
    package var shrinkEvery: Duration = .seconds(1)
    package var growAfter: Duration = .seconds(1)
    package var growEvery: Duration = .milliseconds(500)

    package init() {}

    /// What the watched tiers' state means for the level: `behind` (some tier over its
    /// target), `clear` (all under), `idle` (none reported). Returns true when the level changed.
    package enum Signal: Sendable, Equatable { case behind, clear, idle }

    package mutating func update(_ signal: Signal, at now: ContinuousClock.Instant) -> Bool {
        let before = shift
        switch signal {
        case .behind:
            clearSince = nil
            if shift < Self.maxShift, lastChange.map({ now - $0 >= shrinkEvery }) ?? true || shift == 0 {
                shift += 1
            }
        case .clear:
            let since = clearSince ?? now
            clearSince = since
            if shift > 0, now - since >= growAfter, lastChange.map({ now - $0 >= growEvery }) ?? true {
                shift -= 1
            }
        case .idle:
            clearSince = nil
            shift = 0
        }
        if shift != before { lastChange = now }
        return shift != before
    }

    /// The share of the configured capacity granted now.
    package var level: Double { 1 / Double(1 << shift) }

    /// Concurrency and prefetch granted now, out of the configured ones (at least 1 each).
    package func granted(concurrency: Int, prefetch: UInt16) -> (concurrency: Int, prefetch: UInt16) {
        (max(1, concurrency >> shift), max(1, prefetch >> UInt16(shift)))
    }
}

/// The start latencies of the jobs one consumer started of each tier since the last report.
final class StartLatencies: Sendable {
    private let windows: Mutex<[Tier: [Int]]>

    init() { windows = Mutex([:]) }

    func record(_ tier: Tier, milliseconds: Int) {
        windows.withLock { $0[tier, default: []].append(milliseconds) }
    }

    /// The tiers with starts in the current window.
    var tiers: [Tier] { windows.withLock { window in Tier.allCases.filter { window[$0]?.isEmpty == false } } }

    /// Per tier with starts: the window's p99, p50 and its count; the windows start again.
    func drain() -> [(tier: Tier, p99: Int, p50: Int, jobs: Int)] {
        let taken = windows.withLock { windows -> [Tier: [Int]] in
            defer { windows.removeAll(keepingCapacity: true) }
            return windows
        }
        return Tier.allCases.compactMap { tier in
            guard var values = taken[tier], !values.isEmpty else { return nil }
            values.sort()
            let index = min(values.count - 1, Int((Double(values.count) * 0.99).rounded(.up)) - 1)
            return (tier, values[max(0, index)], values[(values.count - 1) / 2], values.count)
        }
    }
}

/// One consumer's part in adaptive admission between tiers.
///
/// - It reports: every ``reportInterval`` it sends, for each paid tier whose jobs it started,
///   the p99 of their start latencies (first deliveries only: no retries, deferrals, keyed or
///   rate-limited jobs, whose waits are their own) and whether it was saturated, on
///   `warren.control`.
/// - It listens: every consumer hears every report (``receive(_:)``).
/// - A pool of a lower tier decides (``decide(at:watchedBacklog:)``): while a watched tier's
///   worst fresh p99 among consumers with room is over its target it halves its granted
///   concurrency and prefetch (``AdmissionPolicy``), and grows back once they are all under.
///   A tier whose consumers are saturated is behind because of its own capacity (a backlog
///   drained as fast as they can: more consumers or an overflow pool help it, shedding
///   protects it); the tiers below do not give way to it, which would only serialize a
///   mixed backlog (the e2e benchmark drained at half its rate when they did). The consumer applies the grant: its job limiter
///   at once, its prefetch by consuming again (on a freed channel or a new one) and
///   cancelling the old subscriptions (their deliveries still run and are acked; nothing is
///   handed back).
///
/// Metrics: `warren_tier_pressure_ms{tier}` (worst fresh p99 heard; -1 none),
/// `warren_tier_target_ms{tier}`, `warren_admission_level{tier}` (1 = everything granted),
/// `warren_admission_concurrency{tier}`, `warren_admission_prefetch{tier}`.
final class AdmissionControl: Sendable {
    static let reportInterval: Duration = .milliseconds(500)
    static let decideInterval: Duration = .milliseconds(250)

    let targets: TierTargets
    /// The tiers this pool gives way to (none: it never shrinks).
    let watched: [Tier]
    let latencies = StartLatencies()
    private let pool: Tier
    private let configured: (concurrency: Int, prefetch: UInt16)
    private let state: Mutex<(board: PressureBoard, policy: AdmissionPolicy, pressure: [Tier: Int], yielding: Bool)>
    private let pressureGauges: [Tier: Gauge]
    private let levelGauge: Gauge
    private let concurrencyGauge: Gauge
    private let prefetchGauge: Gauge

    init(configuration: ConsumerConfiguration) {
        targets = configuration.tierTargets
        // An overflow pool already yields by its priority and its backlog gate.
        watched = configuration.tiers.count == 1 ? configuration.tierTargets.watched(by: configuration.tier) : []
        pool = configuration.tier
        configured = (configuration.concurrency, configuration.prefetch)
        state = Mutex((PressureBoard(), AdmissionPolicy(), [:], false))
        var pressureGauges: [Tier: Gauge] = [:]
        for tier in watched {
            pressureGauges[tier] = Gauge(label: "warren_tier_pressure_ms", dimensions: [("tier", tier.rawValue)])
            Gauge(label: "warren_tier_target_ms", dimensions: [("tier", tier.rawValue)]).record((targets.targets[tier] ?? .zero).milliseconds)
        }
        self.pressureGauges = pressureGauges
        let dimensions = [("tier", configuration.tier.rawValue)]
        levelGauge = Gauge(label: "warren_admission_level", dimensions: dimensions)
        concurrencyGauge = Gauge(label: "warren_admission_concurrency", dimensions: dimensions)
        prefetchGauge = Gauge(label: "warren_admission_prefetch", dimensions: dimensions)
        levelGauge.record(1.0)
        concurrencyGauge.record(configured.concurrency)
        prefetchGauge.record(Int(configured.prefetch))
    }

    /// The concurrency and prefetch granted now.
    var currentGrant: (concurrency: Int, prefetch: UInt16) {
        state.withLock { $0.policy.granted(concurrency: configured.concurrency, prefetch: configured.prefetch) }
    }

    /// Whether this pool ever changes its grant.
    var adapts: Bool { !watched.isEmpty }

    /// The reports to send now (and the windows start again): every tier, whatever this
    /// consumer's own targets (the pools below decide with theirs; free's reports are for the
    /// producers' console, no pool gives way to free). `saturated` says, per tier, whether this
    /// consumer's own capacity is what holds its jobs back now.
    func reports(consumerID: String, saturated: (Tier) -> Bool = { _ in false }) -> [PressureReport] {
        latencies.drain().map {
            PressureReport(tier: $0.tier, consumerID: consumerID, p99Milliseconds: $0.p99, jobs: $0.jobs, saturated: saturated($0.tier),
                           p50Milliseconds: $0.p50)
        }
    }

    func receive(_ report: PressureReport, at now: ContinuousClock.Instant = .now) {
        guard watched.contains(report.tier) else { return }
        state.withLock { $0.board.receive(report, at: now) }
    }

    /// Whether the watched tiers went quiet (no fresh report) while this pool is below its
    /// full grant: then ``decide(at:watchedBacklog:)`` wants to know if they have jobs waiting.
    func quiet(at now: ContinuousClock.Instant = .now) -> Bool {
        state.withLock { state in
            state.policy.shift > 0 && watched.allSatisfy { state.board.pressure(of: $0, at: now) == nil }
        }
    }

    /// Reads the board and updates the level: the grant if it changed. No fresh report means
    /// idle (everything back at once), unless `watchedBacklog`: a watched tier with jobs
    /// waiting and no consumer starting them is not idle, so the level only grows back step
    /// by step, as when it is clear.
    func decide(at now: ContinuousClock.Instant = .now, watchedBacklog: Bool = false) -> (concurrency: Int, prefetch: UInt16)? {
        let (changed, level, grant, pressure) = state.withLock { state -> (Bool, Double, (concurrency: Int, prefetch: UInt16), [Tier: Int]) in
            var signal = AdmissionPolicy.Signal.idle
            var pressure: [Tier: Int] = [:]
            for tier in watched {
                guard let p99 = state.board.pressure(of: tier, at: now) else { continue }
                pressure[tier] = p99
                let target = targets.targets[tier].map { Int($0.milliseconds) } ?? .max
                if p99 > target { signal = .behind } else if signal == .idle { signal = .clear }
            }
            state.pressure = pressure
            if signal == .idle, watchedBacklog { signal = .clear }
            let changed = state.policy.update(signal, at: now)
            state.yielding = state.policy.shift > 0 || watched.contains { state.board.hasRoom($0, at: now) }
            return (changed, state.policy.level, state.policy.granted(concurrency: configured.concurrency, prefetch: configured.prefetch), pressure)
        }
        for tier in watched { pressureGauges[tier]?.record(pressure[tier] ?? -1) }
        guard changed else { return nil }
        levelGauge.record(level)
        concurrencyGauge.record(grant.concurrency)
        prefetchGauge.record(Int(grant.prefetch))
        return grant
    }

    /// Whether this pool gives way now, as of the last ``decide(at:watchedBacklog:)``: its grant
    /// is below everything, or a watched tier has consumers with room starting jobs (what an
    /// adaptive ``PriorityKeeper`` lowers the process's priority for).
    var yielding: Bool { state.withLock { $0.yielding } }

    /// The concurrency and prefetch granted now.
    var granted: (concurrency: Int, prefetch: UInt16) {
        state.withLock { $0.policy.granted(concurrency: configured.concurrency, prefetch: configured.prefetch) }
    }

    /// `/status`'s `admission` member.
    var statusJSON: String {
        let (policy, pressure, yielding) = state.withLock { ($0.policy, $0.pressure, $0.yielding) }
        let grant = policy.granted(concurrency: configured.concurrency, prefetch: configured.prefetch)
        let watching = watched.map { tier in
            #""\#(tier.rawValue)":{"target_ms":\#(targets.targets[tier]?.milliseconds ?? 0),"p99_ms":\#(pressure[tier].map(String.init) ?? "null")}"#
        }.joined(separator: ",")
        return #"{"level":\#(policy.level),"yielding":\#(yielding),"concurrency":\#(grant.concurrency),"prefetch":\#(grant.prefetch),"watching":{\#(watching)}}"#
    }
}
