import Foundation
import Testing
import WarrenAMQP
import WarrenJobs

/// `consumer --overflow`: one pool over every tier queue, below each tier's own consumers
/// (`x-priority`), its free slots going to the highest tier with work waiting.
@Suite(.enabled(if: TestServices.enabled))
struct OverflowPoolTests {
    typealias World = ConsumerIntegrationTests.World

    /// A `consumer` with `arguments`, named `id` in `job_runs`, once `/readyz` says it is
    /// subscribed (`body` gets its `/status` and its pid); stopped with SIGTERM afterwards,
    /// which must exit 0.
    func withConsumer<T: Sendable>(_ world: World, id: String, _ arguments: [String], environment extra: [String: String] = [:],
                                   launcher: [String] = [],
                                   _ body: (_ status: @Sendable () async -> [String: Any], _ pid: Int32) async throws -> T) async throws -> T {
        try await withConsumerAdmin(world, id: id, arguments, environment: extra, launcher: launcher) { port, pid in
            try await body({
                guard let (_, _, text) = try? await HTTP.request("GET", "http://127.0.0.1:\(port)/status") else { return [:] }
                return HTTP.object(text)
            }, pid)
        }
    }

    /// A consumer started for `body`, given its admin port, then stopped gracefully.
    func withConsumerAdmin<T: Sendable>(_ world: World, id: String, _ arguments: [String], environment extra: [String: String] = [:],
                                        launcher: [String] = [],
                                        _ body: (_ adminPort: Int, _ pid: Int32) async throws -> T) async throws -> T {
        let environment = world.environment.merging(["WARREN_ADMIN_HOST": "127.0.0.1", "WARREN_CONSUMER_ID": id]) { $1 }.merging(extra) { $1 }
        let consumer = try RunningProduct("consumer", arguments + ["--admin-port", "0"], environment: environment, launcher: launcher)
        defer { consumer.signal(SIGKILL) }
        let port = try await consumer.listeningPort("admin_port")
        try await TestServices.waitUntil(timeout: .seconds(60), "\(id) is subscribed") {
            (try? await HTTP.request("GET", "http://127.0.0.1:\(port)/readyz").0) == 200
        }
        let value = try await body(port, consumer.pid)
        consumer.signal(SIGTERM)
        #expect(try await consumer.wait(timeout: .seconds(60)) == 0, "graceful stop: \(consumer.stderr.suffix(2_000))")
        return value
    }

    func sleepJobs(_ tier: Tier, _ count: Int, ms: Int) -> [JobEnvelope] {
        (0..<count).map { _ in JobEnvelope(type: "sleep", tier: tier, payload: Array(#"{"ms":\#(ms)}"#.utf8)) }
    }

    @Test func itNeverStartsFreeWorkWhileEnterpriseWorkWaits() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            // Both queues backed up before it starts; no tier consumers at all.
            try await world.publish(sleepJobs(.free, 300, ms: 5))
            try await world.publish(sleepJobs(.enterprise, 300, ms: 5))
            try await withConsumer(world, id: "overflow", ["--overflow", "--concurrency", "4", "--prefetch", "8"]) { status, _ in
                let object = await status()
                #expect(object["tiers"] as? [String] == ["enterprise", "premium", "free"], "\(object)")
                try await TestServices.waitUntil(timeout: .seconds(90), "all 600 jobs succeeded") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 600
                }
            }
            // Every free job started before the first enterprise job or after the last one.
            let interleaved = try await world.count("""
                SELECT count(*) FROM job_runs f, (SELECT min(started_at) AS first, max(started_at) AS last FROM job_runs
                                                  WHERE tier = 'enterprise') e
                WHERE f.tier = 'free' AND f.started_at > e.first AND f.started_at < e.last
                """)
            #expect(interleaved == 0, "\(interleaved) free jobs started while enterprise work waited")
            let freeFirst = try await world.count("""
                SELECT count(*) FROM job_runs WHERE tier = 'free'
                  AND started_at < (SELECT min(started_at) FROM job_runs WHERE tier = 'enterprise')
                """)
            #expect(freeFirst <= 4, "at most its slots' worth of free work before enterprise arrived: \(freeFirst)")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE consumer_id <> 'overflow'") == 0)
        }
    }

    @Test func itTakesATiersWorkOnlyWhileThatTiersOwnConsumersAreFull() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            try await withConsumer(world, id: "free-pool", ["--tier", "free", "--concurrency", "2", "--prefetch", "4"]) { _, _ in
                try await withConsumer(world, id: "overflow", ["--overflow", "--concurrency", "8", "--prefetch", "16"]) { _, _ in
                    // One job at a time: the free pool always has room, so the broker gives it every one.
                    for _ in 0..<20 {
                        let before = try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'")
                        try await world.publish(sleepJobs(.free, 1, ms: 1))
                        try await TestServices.waitUntil(timeout: .seconds(30), "the job ran") {
                            try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == before + 1
                        }
                    }
                    #expect(try await world.count("SELECT count(*) FROM job_runs WHERE consumer_id = 'overflow'") == 0,
                            "the overflow pool took work a free consumer had room for")

                    // A backlog: the free pool is full, so the overflow pool takes its share.
                    try await world.publish(sleepJobs(.free, 400, ms: 10))
                    try await TestServices.waitUntil(timeout: .seconds(90), "the backlog drained") {
                        try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 420
                    }
                    let helped = try await world.count("SELECT count(*) FROM job_runs WHERE consumer_id = 'overflow'")
                    #expect(helped > 100, "the overflow pool ran \(helped) of the 400")
                }
            }
        }
    }

    @Test func whenOneOfItsQueuesGoesAwayItExitsWithAnErrorInsteadOfHanging() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let environment = world.environment.merging(["WARREN_ADMIN_HOST": "127.0.0.1"]) { $1 }
            let consumer = try RunningProduct("consumer", ["--overflow", "--admin-port", "0"], environment: environment)
            defer { consumer.signal(SIGKILL) }
            let port = try await consumer.listeningPort("admin_port")
            try await TestServices.waitUntil(timeout: .seconds(60), "it is subscribed") {
                (try? await HTTP.request("GET", "http://127.0.0.1:\(port)/readyz").0) == 200
            }
            // The broker ends that one subscription; the other two must be ended too, or the
            // process waits on them forever.
            _ = try await world.connection.withControl { control in try control.deleteQueue(Tier.premium.queueName) }
            let status = try await consumer.wait(timeout: .seconds(60))
            #expect(status != 0, "a subscription the broker ended is a failure, for a supervisor to restart")
        }
    }

    @Test func badTierListsAreAClearError() async throws {
        for (arguments, expected) in [(["--tiers", "gold"], "--tiers: unknown tier 'gold'"),
                                      (["--tiers", "free,free"], "distinct"),
                                      (["--tier", "free", "--overflow"], "not both")] {
            let result = try await Products.run("consumer", arguments)
            #expect(result.status != 0, "\(arguments)")
            #expect(result.stderr.contains(expected), "\(arguments): \(result.stderr)")
        }
    }
}
