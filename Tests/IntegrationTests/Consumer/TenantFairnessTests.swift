import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres

/// Tenant lanes: one tenant's flood waits in its own lane, and a consumer takes from its
/// tier's lanes in turn, so another tenant's jobs start within a slot or two, not after the flood.
@Suite(.enabled(if: TestServices.enabled))
struct TenantFairnessTests {
    typealias World = ConsumerIntegrationTests.World

    func sleepJobs(tenant: String?, _ count: Int, ms: Int) -> [JobEnvelope] {
        (0..<count).map { _ in JobEnvelope(type: "sleep", tier: .free, payload: Array(#"{"ms":\#(ms)}"#.utf8), tenant: tenant) }
    }

    @Test func aQuietTenantsJobsStartWhileAnotherTenantsFloodIsStillWaiting() async throws {
        let noisy = "tenant-a", quiet = "tenant-b"
        try #require(Tier.lane(tenant: noisy) != Tier.lane(tenant: quiet), "the test needs two tenants in different lanes")
        try await ConsumerIntegrationTests().withWorld { world in
            // 2,000 jobs of 5 ms on 4 slots: at least 2.5 s of work queued ahead.
            try await world.publish(sleepJobs(tenant: noisy, 2_000, ms: 5))
            let consumer = try RunningProduct("consumer", ["--tier", "free", "--concurrency", "4", "--prefetch", "16", "--admin-port", "0"],
                                              environment: world.environment.merging(["WARREN_ADMIN_HOST": "127.0.0.1"]) { $1 })
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "the flood is being worked") {
                try await world.count("SELECT count(*) FROM job_runs WHERE tenant = '\(noisy)'") > 50
            }
            try await world.publish(sleepJobs(tenant: quiet, 20, ms: 5))
            try await TestServices.waitUntil(timeout: .seconds(60), "the quiet tenant's jobs ran") {
                try await world.count("SELECT count(*) FROM job_runs WHERE tenant = '\(quiet)' AND status = 'succeeded'") == 20
            }
            // Counted from the rows, not the clock: how much of the flood had not started yet
            // when the quiet tenant's last job started (a job has a row once it started). In
            // one FIFO queue, none.
            let floodBehind = try await 2_000 - world.count("""
                SELECT count(*) FROM job_runs WHERE tenant = '\(noisy)'
                  AND started_at <= (SELECT max(started_at) FROM job_runs WHERE tenant = '\(quiet)')
                """)
            let timeline = try await world.pool.query("""
                SELECT tenant, count(*), min(started_at)::text, max(started_at)::text FROM job_runs GROUP BY tenant ORDER BY tenant
                """).rows.map { row in (0..<4).map { (try? row.string($0)) ?? "-" }.joined(separator: " ") }
            #expect(floodBehind >= 500, "only \(floodBehind) of the flood's 2,000 jobs were still waiting when the quiet tenant's last job started: \(timeline)")
            try await TestServices.waitUntil(timeout: .seconds(120), "the flood ran too") {
                try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 2_020
            }
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait(timeout: .seconds(60)) == 0, "graceful stop: \(consumer.stderr.suffix(2_000))")
        }
    }

    @Test func aTenantsJobsAllTravelThroughItsOwnLane() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            try await world.publish(sleepJobs(tenant: "initech", 3, ms: 1) + sleepJobs(tenant: nil, 2, ms: 1))
            let depths = try await world.connection.withControl { control in
                try Tier.free.queueNames.map { Int(try control.queueDepth($0).messages) }
            }
            var expected = Array(repeating: 0, count: Tier.lanes)
            expected[Tier.lane(tenant: "initech")] += 3
            expected[0] += 2
            #expect(depths == expected)
            #expect(try await world.connection.withControl { try $0.readyCount(.free) } == 5)
        }
    }
}
