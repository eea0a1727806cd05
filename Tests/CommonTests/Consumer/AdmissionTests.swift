import Foundation
import Synchronization
import Testing
@testable import WarrenAMQP
@testable import WarrenConfig
@testable import WarrenJobs
@testable import WarrenSupport
@testable import WarrenWorker

/// Adaptive admission's pure parts: the policy's level, the pressure board, the targets, the
/// latency windows, the reports on the wire and the resizable limiter.
struct AdmissionTests {
    let start = ContinuousClock.now

    func at(_ milliseconds: Int) -> ContinuousClock.Instant { start + .milliseconds(milliseconds) }

    @Test func behindHalvesAtOnceThenAtMostOncePerSecondDownToTheFloor() {
        let policy = PolicyBox()
        #expect(policy.update(.behind, at: at(0)))
        #expect(policy.shift == 1)
        #expect(!policy.update(.behind, at: at(500)), "not twice within a second")
        #expect(policy.update(.behind, at: at(1_000)))
        #expect(policy.shift == 2)
        for second in 2...20 { _ = policy.update(.behind, at: at(second * 1_000)) }
        #expect(policy.shift == AdmissionPolicy.maxShift)
        #expect(policy.granted(concurrency: 16, prefetch: 1_000) == (1, 15))
        #expect(policy.granted(concurrency: 64, prefetch: 2_000) == (1, 31))
    }

    @Test func clearGrowsBackAfterASecondAndThenEveryHalfSecond() {
        let policy = PolicyBox()
        _ = policy.update(.behind, at: at(0))
        _ = policy.update(.behind, at: at(1_000))
        _ = policy.update(.behind, at: at(2_000))
        #expect(policy.shift == 3)
        #expect(!policy.update(.clear, at: at(2_250)))
        #expect(!policy.update(.clear, at: at(3_000)), "clear for 750 ms only")
        #expect(policy.update(.clear, at: at(3_250)))
        #expect(policy.shift == 2)
        #expect(!policy.update(.clear, at: at(3_500)))
        #expect(policy.update(.clear, at: at(3_750)))
        #expect(policy.update(.clear, at: at(4_250)))
        #expect(policy.shift == 0)
        #expect(policy.level == 1)
        #expect(!policy.update(.clear, at: at(5_000)))
    }

    @Test func behindAgainRestartsTheClearPeriod() {
        let policy = PolicyBox()
        _ = policy.update(.behind, at: at(0))
        _ = policy.update(.clear, at: at(800))
        _ = policy.update(.behind, at: at(900))
        #expect(!policy.update(.clear, at: at(1_500)), "clear since 1,500 only")
        #expect(policy.shift == 1)
    }

    @Test func anIdleHigherTierGivesEverythingBackAtOnce() {
        let policy = PolicyBox()
        for second in 0...6 { _ = policy.update(.behind, at: at(second * 1_000)) }
        #expect(policy.shift == AdmissionPolicy.maxShift)
        #expect(policy.update(.idle, at: at(6_100)))
        #expect(policy.shift == 0)
        #expect(policy.granted(concurrency: 16, prefetch: 1_000) == (16, 1_000))
    }

    @Test func theBoardAnswersTheWorstFreshReportOfATier() {
        var board = PressureBoard(freshFor: .seconds(2))
        board.receive(PressureReport(tier: .enterprise, consumerID: "a", p99Milliseconds: 10, jobs: 5), at: at(0))
        board.receive(PressureReport(tier: .enterprise, consumerID: "b", p99Milliseconds: 80, jobs: 5), at: at(100))
        board.receive(PressureReport(tier: .premium, consumerID: "c", p99Milliseconds: 500, jobs: 5), at: at(100))
        #expect(board.pressure(of: .enterprise, at: at(200)) == 80)
        board.receive(PressureReport(tier: .enterprise, consumerID: "b", p99Milliseconds: 5, jobs: 5), at: at(600))
        #expect(board.pressure(of: .enterprise, at: at(700)) == 10, "a consumer's newer report replaces its older one")
        #expect(board.pressure(of: .enterprise, at: at(2_300)) == 5, "a's report aged out")
        #expect(board.pressure(of: .enterprise, at: at(2_700)) == nil, "no consumer reported lately: idle")
        #expect(board.pressure(of: .premium, at: at(2_700)) == nil)
    }

    @Test func aSaturatedConsumersLatencyDoesNotMakeTheTiersBelowGiveWay() {
        var board = PressureBoard(freshFor: .seconds(2))
        board.receive(PressureReport(tier: .enterprise, consumerID: "a", p99Milliseconds: 9_000, jobs: 500, saturated: true), at: at(0))
        #expect(board.pressure(of: .enterprise, at: at(10)) == 0, "heard, but only from a consumer draining a backlog")
        board.receive(PressureReport(tier: .enterprise, consumerID: "b", p99Milliseconds: 70, jobs: 5), at: at(20))
        #expect(board.pressure(of: .enterprise, at: at(30)) == 70, "a consumer with room that is late")
        var configuration = ConsumerConfiguration(tier: .free)
        configuration.tierTargets = TierTargets([.enterprise: .milliseconds(50)])
        let admission = AdmissionControl(configuration: configuration)
        admission.receive(PressureReport(tier: .enterprise, consumerID: "a", p99Milliseconds: 9_000, jobs: 500, saturated: true), at: at(0))
        #expect(admission.decide(at: at(10)) == nil, "full grant kept")
        let report = PressureReport(tier: .enterprise, consumerID: "a", p99Milliseconds: 9_000, jobs: 500, saturated: true)
        #expect(ControlMessage(body: ControlMessage.pressure(report).outgoing.body) == .pressure(report))
    }

    @Test func aPoolGivesWayWhileAWatchedTierHasConsumersWithRoomOrItsGrantIsCut() {
        var configuration = ConsumerConfiguration(tier: .free)
        configuration.tierTargets = TierTargets([.enterprise: .milliseconds(50)])
        let admission = AdmissionControl(configuration: configuration)
        _ = admission.decide(at: at(0))
        #expect(!admission.yielding, "nothing heard")
        admission.receive(PressureReport(tier: .enterprise, consumerID: "a", p99Milliseconds: 9_000, jobs: 500, saturated: true), at: at(0))
        _ = admission.decide(at: at(10))
        #expect(!admission.yielding, "only a saturated consumer: the cores would not help it")
        admission.receive(PressureReport(tier: .enterprise, consumerID: "b", p99Milliseconds: 3, jobs: 50), at: at(20))
        _ = admission.decide(at: at(30))
        #expect(admission.yielding, "a consumer with room, under its target")
        #expect(admission.statusJSON.contains(#""yielding":true"#), "\(admission.statusJSON)")
        admission.receive(PressureReport(tier: .enterprise, consumerID: "b", p99Milliseconds: 80, jobs: 50), at: at(500))
        #expect(admission.decide(at: at(510)) != nil)
        admission.receive(PressureReport(tier: .enterprise, consumerID: "b", p99Milliseconds: 9_000, jobs: 500, saturated: true), at: at(1_000))
        _ = admission.decide(at: at(1_010))
        #expect(admission.yielding, "saturated now, but the grant is still cut")
        _ = admission.decide(at: at(3_100))
        #expect(!admission.yielding, "every report aged out: idle, everything back")

        var watchingNothing = ConsumerConfiguration(tier: .free)
        watchingNothing.tierTargets = TierTargets([:])
        let unwatched = AdmissionControl(configuration: watchingNothing)
        unwatched.receive(PressureReport(tier: .enterprise, consumerID: "b", p99Milliseconds: 3, jobs: 50), at: at(0))
        _ = unwatched.decide(at: at(10))
        #expect(!unwatched.yielding, "a tier without a target is not given way to")
    }

    /// What the keeper wants, before its thread starts; what the thread applies (and whether
    /// it may) is checked against real threads in ProcessPriorityTests.
    @Test func anAdaptiveKeeperFollowsTheYieldAndAFixedOneDoesNot() {
        let adaptive = PriorityKeeper(adaptive: 10)
        let base = adaptive.base
        #expect(adaptive.target == base)
        adaptive.yield(true)
        #expect(adaptive.target == min(19, base + 10))
        adaptive.yield(false)
        #expect(adaptive.target == base)
        #expect(adaptive.current == base, "nothing applied before the keeper starts")
        let fixed = PriorityKeeper(fixed: 10)
        fixed.yield(false)
        #expect(fixed.target == 10)
        let enterprise = PriorityKeeper(adaptive: 0)
        enterprise.yield(true)
        #expect(enterprise.target == base)
    }

    @Test func targetsComeFromTheEnvironmentAndZeroStopsWatchingATier() throws {
        #expect(TierTargets().watched(by: .free) == [.enterprise, .premium])
        #expect(TierTargets().watched(by: .premium) == [.enterprise])
        #expect(TierTargets().watched(by: .enterprise).isEmpty)
        let targets = try TierTargets(environment: ["WARREN_TIER_TARGET_MS_ENTERPRISE": "20", "WARREN_TIER_TARGET_MS_PREMIUM": "0"])
        #expect(targets.targets == [.enterprise: .milliseconds(20)])
        #expect(targets.watched(by: .free) == [.enterprise])
        #expect(throws: SettingsError.self) { try TierTargets(environment: ["WARREN_TIER_TARGET_MS_ENTERPRISE": "fast"]) }
        #expect(throws: SettingsError.self) { try TierTargets(environment: ["WARREN_TIER_TARGET_MS_PREMIUM": "-1"]) }
    }

    @Test func anOverflowPoolAndAnEnterprisePoolNeverShrink() throws {
        #expect(!AdmissionControl(configuration: ConsumerConfiguration(tier: .enterprise)).adapts)
        #expect(AdmissionControl(configuration: ConsumerConfiguration(tier: .premium)).adapts)
        #expect(!AdmissionControl(configuration: try .overflow(tiers: Tier.allCases, environment: [:])).adapts)
    }

    @Test func aWindowReportsItsP99PerTierAndStartsAgain() {
        let latencies = StartLatencies()
        for value in 1...200 { latencies.record(.enterprise, milliseconds: value) }
        latencies.record(.premium, milliseconds: 7)
        let drained = latencies.drain()
        #expect(drained.count == 2)
        #expect(drained[0].tier == .enterprise && drained[0].p99 == 198 && drained[0].p50 == 100 && drained[0].jobs == 200)
        #expect(drained[1].tier == .premium && drained[1].p99 == 7 && drained[1].p50 == 7 && drained[1].jobs == 1)
        #expect(latencies.drain().isEmpty)
    }

    @Test func reportsGoForEveryTierAndReadBackAsSent() throws {
        var configuration = ConsumerConfiguration(tier: .enterprise)
        configuration.consumerID = "host-1-\"enterprise\""
        let admission = AdmissionControl(configuration: configuration)
        admission.latencies.record(.enterprise, milliseconds: 12)
        admission.latencies.record(.free, milliseconds: 900)
        var own = ConsumerConfiguration(tier: .premium)
        own.tierTargets = TierTargets([:])
        #expect(AdmissionControl(configuration: own).reports(consumerID: "p").isEmpty, "nothing started, nothing to report")
        let reports = admission.reports(consumerID: configuration.consumerID)
        #expect(reports == [PressureReport(tier: .enterprise, consumerID: "host-1-\"enterprise\"", p99Milliseconds: 12, jobs: 1, p50Milliseconds: 12),
                            PressureReport(tier: .free, consumerID: "host-1-\"enterprise\"", p99Milliseconds: 900, jobs: 1, p50Milliseconds: 900)],
                "free's too: the producers' console shows its latency")
        #expect(ControlMessage(body: Array(#"{"action":"pressure","tier":"free","consumer_id":"x","p99_ms":3,"jobs":1}"#.utf8))
                == .pressure(PressureReport(tier: .free, consumerID: "x", p99Milliseconds: 3, jobs: 1)), "an older consumer's report, without p50")
        let message = ControlMessage.pressure(reports[0]).outgoing
        #expect(message.exchange == Topology.controlExchange)
        #expect(message.properties.expiration == "2000", "a lagging control queue drops stale reports")
        #expect(ControlMessage(body: message.body) == .pressure(reports[0]))
        #expect(ControlMessage(body: Array(#"{"action":"pressure","tier":"enterprise","consumer_id":"x","p99_ms":-3,"jobs":1}"#.utf8)) == nil)
        #expect(ControlMessage(body: Array(#"{"action":"pressure","tier":"gold","consumer_id":"x","p99_ms":3,"jobs":1}"#.utf8)) == nil)
        let freed = ControlMessage.keysFree(["ingest:acme", "quote\"d"], from: "c-1")
        #expect(ControlMessage(body: freed.outgoing.body) == freed, "keys_free round-trips")
        #expect(freed.outgoing.properties.expiration == "2000")
        #expect(ControlMessage(body: Array(#"{"action":"keys_free","keys":["a",2],"consumer_id":"c"}"#.utf8)) == nil)
        #expect(ControlMessage(body: Array(#"{"action":"keys_free","keys":{},"consumer_id":"c"}"#.utf8)) == nil)
        #expect(ControlMessage(body: Array(#"{"action":"keys_free","keys":["a"]}"#.utf8)) == nil, "names its consumer")
        let cancel = ControlMessage.cancel(job: UUID(), tier: .free)
        #expect(ControlMessage(body: cancel.outgoing.body) == cancel)
    }

    @Test func aPoolDecidesFromTheReportsOfTheTiersItWatches() {
        var configuration = ConsumerConfiguration(tier: .free, concurrency: 16, prefetch: 1_000)
        configuration.tierTargets = TierTargets([.enterprise: .milliseconds(50)])
        let admission = AdmissionControl(configuration: configuration)
        #expect(admission.decide(at: at(0)) == nil, "idle and at full: nothing changes")
        admission.receive(PressureReport(tier: .premium, consumerID: "p", p99Milliseconds: 10_000, jobs: 1), at: at(0))
        #expect(admission.decide(at: at(10)) == nil, "premium has no target here")
        admission.receive(PressureReport(tier: .enterprise, consumerID: "e", p99Milliseconds: 51, jobs: 1), at: at(20))
        #expect(admission.decide(at: at(30)).map { [$0.concurrency, Int($0.prefetch)] } == [8, 500])
        #expect(admission.statusJSON.contains(#""enterprise":{"target_ms":50,"p99_ms":51}"#), "\(admission.statusJSON)")
        #expect(admission.decide(at: at(2_100)).map { [$0.concurrency, Int($0.prefetch)] } == [16, 1_000], "the report aged out: idle")
    }

    @Test func aResizedLimiterAdmitsUpToItsNewLimit() async {
        let limiter = Limiter(limit: 1)
        await limiter.acquire()
        let admitted = Count()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    await limiter.acquire()
                    admitted.value.add(1, ordering: .relaxed)
                }
            }
            await TestClock.waitUntil { limiter.usage.waiting == 3 }
            #expect([limiter.usage.inUse, limiter.usage.waiting] == [Int]([1, 3]))
            limiter.resize(to: 3)
            #expect([limiter.usage.inUse, limiter.usage.waiting] == [Int]([3, 1]), "1 held + 2 admitted at once")
            limiter.resize(to: 1)
            limiter.release()
            limiter.release()
            #expect([limiter.usage.inUse, limiter.usage.waiting] == [Int]([1, 1]), "1 still in use, at the new limit of 1: the last waiter still waits")
            limiter.release()
            #expect([limiter.usage.inUse, limiter.usage.waiting] == [Int]([1, 0]), "a slot under the limit: the last waiter is in")
            await TestClock.waitUntil { admitted.value.load(ordering: .relaxed) == 3 }
            #expect(admitted.value.load(ordering: .relaxed) == 3)
        }
    }

    @Test func aQuietWatchedTierWithJobsWaitingGrowsBackStepByStepNotAtOnce() {
        var configuration = ConsumerConfiguration(tier: .free, concurrency: 16, prefetch: 1_000)
        configuration.tierTargets = TierTargets([.enterprise: .milliseconds(50)])
        let admission = AdmissionControl(configuration: configuration)
        for second in 0..<4 {
            admission.receive(PressureReport(tier: .enterprise, consumerID: "e", p99Milliseconds: 500, jobs: 1), at: at(second * 1_000))
            _ = admission.decide(at: at(second * 1_000 + 10))
        }
        #expect(admission.granted.concurrency == 1)
        #expect(!admission.quiet(at: at(3_500)), "a report is still fresh")
        #expect(admission.quiet(at: at(6_000)))
        #expect(admission.decide(at: at(6_000), watchedBacklog: true) == nil, "clear only since now")
        #expect(admission.decide(at: at(7_000), watchedBacklog: true).map(\.concurrency) == 2, "one step")
        #expect(admission.decide(at: at(7_100), watchedBacklog: false).map(\.concurrency) == 16, "idle with nothing waiting: all of it")
        #expect(!admission.quiet(at: at(7_200)), "at its full grant there is nothing to ask")
    }
}

/// Waits (yielding) until `condition` holds, for up to 5 s.
enum TestClock {
    static func waitUntil(_ condition: @Sendable () -> Bool) async {
        let deadline = ContinuousClock.now + .seconds(5)
        while !condition(), ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(5)) }
    }
}

/// An ``AdmissionPolicy`` in a class: `#expect` cannot wrap a mutating call on a struct.
final class PolicyBox {
    var policy = AdmissionPolicy()
    func update(_ signal: AdmissionPolicy.Signal, at now: ContinuousClock.Instant) -> Bool { policy.update(signal, at: now) }
    var shift: Int { policy.shift }
    var level: Double { policy.level }
    func granted(concurrency: Int, prefetch: UInt16) -> (concurrency: Int, prefetch: UInt16) {
        policy.granted(concurrency: concurrency, prefetch: prefetch)
    }
}

final class Count: Sendable {
    let value = Atomic(0)
}
