import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport
import WarrenWorker

/// Adaptive admission between tiers against the real broker and Postgres: an enterprise
/// consumer falling behind its start-latency target reports it on `warren.control`, and a
/// free pool gives way (fewer jobs at once, a smaller prefetch on fresh subscriptions), then
/// grows back once enterprise is idle again, losing nothing.
@Suite(.enabled(if: TestServices.enabled))
struct AdmissionIntegrationTests {
    typealias World = ConsumerIntegrationTests.World

    func sleepJobs(_ tier: Tier, _ count: Int, ms: Int) -> [JobEnvelope] {
        (0..<count).map { JobEnvelope(type: "sleep", tier: tier, payload: Array(#"{"ms":\#(ms)}"#.utf8), tenant: "t\($0 % 16)") }
    }

    func admission(_ consumer: JobConsumer) async -> [String: Any] {
        let object = (try? JSONSerialization.jsonObject(with: Data(await consumer.statusJSON().utf8))) as? [String: Any]
        return object?["admission"] as? [String: Any] ?? [:]
    }

    /// The broker's view of the consumers on `tier`'s lanes in this world's vhost: their prefetch counts.
    func brokerPrefetches(_ world: World, _ tier: Tier) async throws -> [Int] {
        let vhost = String(world.amqpURL.split(separator: "/").last ?? "")
        let (_, data) = try await Management.request("GET", "/api/consumers/\(vhost)")
        let list = (try JSONSerialization.jsonObject(with: data) as? [[String: Any]]) ?? []
        let queues = Set(tier.queueNames)
        return list.compactMap { consumer in
            guard let queue = (consumer["queue"] as? [String: Any])?["name"] as? String, queues.contains(queue) else { return nil }
            return consumer["prefetch_count"] as? Int
        }
    }

    /// Enterprise jobs that arrive 400 ms late (enqueued-at in the past, as if a slow host or a
    /// starved process held them), 25 a second, to an enterprise consumer with room to spare,
    /// until the task is cancelled (at most 120 s): the test ends it once it has seen what it
    /// waits for, so a slow machine cannot run out of late jobs before the free pool has given way.
    func lateEnterpriseTrickle(_ world: World) -> Task<Void, any Error> {
        Task {
            let deadline = ContinuousClock.now + .seconds(120)
            while !Task.isCancelled, ContinuousClock.now < deadline {
                let late = Timestamp(microseconds: Timestamp.now().microseconds - 400_000)
                try await world.publish([JobEnvelope(type: "sleep", tier: .enterprise, payload: Array(#"{"ms":1}"#.utf8), enqueuedAt: late)])
                try? await Task.sleep(for: .milliseconds(40))
            }
        }
    }

    @Test func aFreePoolGivesWayWhileEnterpriseIsBehindItsTargetAndGrowsBackAfter() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let test = ConsumerIntegrationTests()
            try await world.publish(sleepJobs(.free, 2_000, ms: 20))
            try await test.withConsumer(world, tier: .enterprise, configure: {
                $0.concurrency = 16
                $0.prefetch = 64
            }) { _ in
                try await test.withConsumer(world, tier: .free, configure: {
                    $0.concurrency = 8
                    $0.prefetch = 64
                    $0.tierTargets = TierTargets([.enterprise: .milliseconds(100)])
                }) { free in
                    try await TestServices.waitUntil(timeout: .seconds(60), "free work runs") {
                        try await world.count("SELECT count(*) FROM job_runs WHERE tier = 'free' AND status = 'succeeded'") > 50
                    }
                    #expect(await admission(free)["concurrency"] as? Int == 8, "at full before enterprise has work")
                    // Enterprise's consumer has room (16 slots, 1 ms jobs, 25/s), but its jobs
                    // start 400 ms after they were enqueued: past the 100 ms target.
                    let trickle = lateEnterpriseTrickle(world)
                    defer { trickle.cancel() }
                    try await TestServices.waitUntil(timeout: .seconds(30), "the free pool is down to one job at a time") {
                        await admission(free)["concurrency"] as? Int == 1
                    }
                    let shrunk = try await world.pool.query("SELECT now()::text").rows[0].string(0)
                    try await TestServices.waitUntil(timeout: .seconds(30), "and to its smallest prefetch") {
                        await admission(free)["prefetch"] as? Int == 1
                    }
                    // At the broker: one consumer per free lane, each with the new prefetch
                    // (the old subscriptions were cancelled, not left beside the new ones).
                    var seen: [Int] = []
                    let resubscribed = try await TestServices.holds(within: .seconds(20)) {
                        seen = try await brokerPrefetches(world, .free)
                        return seen == Array(repeating: 1, count: Tier.lanes)
                    }
                    guard resubscribed else {
                        Issue.record("the broker did not show 8 free consumers with prefetch 1 within 20 s; last seen \(seen), admission \(await admission(free))")
                        return
                    }
                    let status = await admission(free)
                    let watching = (status["watching"] as? [String: Any])?["enterprise"] as? [String: Any]
                    #expect(watching?["target_ms"] as? Int == 100, "\(status)")
                    #expect((watching?["p99_ms"] as? Int ?? 0) > 100, "\(status)")
                    // Enterprise stays behind while free goes on at its smallest grant for a
                    // while (20 of its jobs after the shrink settled), then goes idle.
                    try await TestServices.waitUntil(timeout: .seconds(30), "20 free jobs run at the smallest grant") {
                        try await world.count("""
                            SELECT count(*) FROM job_runs WHERE tier = 'free' AND started_at > '\(shrunk)'::timestamptz + interval '500 ms'
                            """) >= 20
                    }
                    trickle.cancel()
                    try await trickle.value
                    // Between the shrink (plus a moment for the jobs already running) and the
                    // last enterprise start, counted from the rows: the most free jobs running at once.
                    let peak = try await world.count("""
                        WITH free AS (SELECT started_at AS s, finished_at AS f FROM job_runs WHERE tier = 'free' AND status = 'succeeded'),
                             window_ AS (SELECT '\(shrunk)'::timestamptz + interval '500 ms' AS a,
                                                (SELECT max(started_at) FROM job_runs WHERE tier = 'enterprise') AS b)
                        SELECT coalesce(max((SELECT count(*) FROM free o WHERE o.s <= x.s AND o.f > x.s)), 0)
                        FROM free x, window_ WHERE x.s BETWEEN window_.a AND window_.b
                        """)
                    let ranMeanwhile = try await world.count("""
                        SELECT count(*) FROM job_runs WHERE tier = 'free' AND started_at BETWEEN '\(shrunk)'::timestamptz + interval '500 ms'
                          AND (SELECT max(started_at) FROM job_runs WHERE tier = 'enterprise')
                        """)
                    #expect(peak == 1, "free jobs running at once while enterprise was behind: \(peak)")
                    #expect(ranMeanwhile > 0, "free work still went on, at its smallest grant")
                    // Enterprise idle: its reports stop, they age out, and free gets everything back.
                    try await TestServices.waitUntil(timeout: .seconds(30), "the free pool is back at full") {
                        let now = await admission(free)
                        return now["concurrency"] as? Int == 8 && now["prefetch"] as? Int == 64
                    }
                    try await TestServices.waitUntil(timeout: .seconds(20), "the broker sees 8 free consumers with prefetch 64") {
                        try await brokerPrefetches(world, .free) == Array(repeating: 64, count: Tier.lanes)
                    }
                    try await TestServices.waitUntil(timeout: .seconds(120), "every free job ran") {
                        try await world.count("SELECT count(*) FROM job_runs WHERE tier = 'free' AND status = 'succeeded'") == 2_000
                    }
                }
            }
            let enterprise = try await world.count("SELECT count(*) FROM job_runs WHERE tier = 'enterprise'")
            #expect(try await world.count("SELECT count(*) FROM job_runs") == 2_000 + enterprise, "one row per job")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE attempts <> 1 OR status <> 'succeeded'") == 0)
            #expect(try await world.connection.withControl { control in try control.readyCount(.free) + control.readyCount(.enterprise) } == 0)
        }
    }

    @Test func aFreePoolKeepsItsGrantWhileEnterpriseDrainsABacklogAsFastAsItCan() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let test = ConsumerIntegrationTests()
            try await world.publish(sleepJobs(.free, 1_000, ms: 20))
            try await test.withConsumer(world, tier: .free, configure: {
                $0.concurrency = 8
                $0.prefetch = 64
                $0.tierTargets = TierTargets([.enterprise: .milliseconds(20)])
            }) { free in
                // A backlog on one enterprise slot: start latencies of seconds, but its consumer
                // is saturated (its slot busy, its deliveries waiting): giving way would not
                // start its jobs sooner.
                try await world.publish(sleepJobs(.enterprise, 200, ms: 20))
                try await test.withConsumer(world, tier: .enterprise, configure: {
                    $0.concurrency = 1
                    $0.prefetch = 4
                }) { _ in
                    var smallest = 8
                    var heard = false
                    let deadline = ContinuousClock.now + .seconds(120)
                    // The grant, read every 100 ms until the backlog is drained.
                    while try await world.count("SELECT count(*) FROM job_runs WHERE tier = 'enterprise' AND status = 'succeeded'") < 200 {
                        guard ContinuousClock.now < deadline else {
                            Issue.record("the enterprise backlog did not drain within 120 s")
                            break
                        }
                        let status = await admission(free)
                        smallest = min(smallest, status["concurrency"] as? Int ?? 0)
                        let watching = (status["watching"] as? [String: Any])?["enterprise"] as? [String: Any]
                        heard = heard || watching?["p99_ms"] is Int
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    #expect(heard, "the enterprise consumer's reports arrived")
                    #expect(smallest == 8, "the free pool shrank to \(smallest) for a tier draining its own backlog")
                }
            }
        }
    }
}
