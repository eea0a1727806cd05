import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres

/// Postgres stopped and started again under `producer serve` and under the scheduler (a
/// cluster of the test's own, as the consumer's outage test does): both carry on without a
/// restart, and what they accepted or published is counted on the queues and in the tables.
@Suite(.enabled(if: TestServices.enabled), .serialized)
struct PostgresFaultTests {
    func depth(_ connection: AMQPConnection, _ tier: Tier = .premium) async throws -> Int {
        Int(try await connection.withControl { try $0.readyCount(tier) })
    }

    /// Every request answered during the outage is a 202 whose job is on the queue, or a 503
    /// with Retry-After that published nothing; afterwards keyed jobs are recorded again.
    @Test func producerServeRidesOutAPostgresRestart() async throws {
        try await OwnPostgres.withCluster { postgres in
            try await APIServer.with(extra: ["WARREN_TOKEN_CACHE_SECONDS": "600"], databaseURL: postgres.url) { server, connection, process in
                let token = try await server.token(tier: "premium", scopes: "jobs:write,jobs:read")
                var accepted = 0
                let (before, _, beforeBody) = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop","idempotency_key":"pg-before"}"#)
                #expect(before == 202, "\(beforeBody)")
                if before == 202 { accepted += 1 }

                try await postgres.stop()
                var refused = 0
                for index in 0..<20 {
                    let key = index.isMultiple(of: 2) ? #","idempotency_key":"pg-down-\#(index)""# : ""
                    let (status, headers, body) = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"\#(key)}"#)
                    #expect(status == 202 || (status == 503 && headers["retry-after"] != nil), "\(status) \(body)")
                    if status == 202 { accepted += 1 } else { refused += 1 }
                }
                // (Tokens are cached: the intake itself meets the outage.)
                #expect(refused >= 10, "a keyed job cannot be claimed without the database")

                try await postgres.start()
                try await TestServices.waitUntil(timeout: .seconds(60), "keyed jobs are accepted again") {
                    let (status, _, _) = try await server.request("POST", "/v1/jobs", token: token,
                                                                  body: #"{"type":"noop","idempotency_key":"pg-after"}"#)
                    if status == 202 { accepted += 1 }
                    return status == 202
                }
                #expect(process.isRunning, "no restart")
                #expect(try await depth(connection) == accepted, "every 202 is on the queue, no 503 is")
                let keys = try await server.withDatabase { pool in
                    try await pool.query("SELECT idempotency_key FROM api_jobs WHERE idempotency_key IS NOT NULL ORDER BY 1").rows.map { try $0.string(0) }
                }
                #expect(keys.contains("pg-before") && keys.contains("pg-after"), "\(keys)")
                #expect(!keys.contains { $0.hasPrefix("pg-down-") }, "no keyed job was recorded while the database was down: \(keys)")
            }
        }
    }

    /// The leader's session dies with the database; once it is back, the same scheduler
    /// process leads again and publishes every delayed job that fell due meanwhile, once.
    @Test func theSchedulerRidesOutAPostgresRestart() async throws {
        try await OwnPostgres.withCluster { postgres in
            try await APIServer.with(databaseURL: postgres.url) { server, connection, _ in
                let token = try await server.token(tier: "premium", scopes: "jobs:write")
                let count = 40
                for index in 0..<count {
                    let (status, _, body) = try await server.request(
                        "POST", "/v1/jobs", token: token,
                        body: #"{"type":"noop","delay_seconds":\#(1 + index / 4),"idempotency_key":"due-\#(index)"}"#)
                    #expect(status == 202, "\(body)")
                }
                let scheduler = try RunningProduct("scheduler", ["--admin-port", "0"], environment: server.environment)
                defer { scheduler.signal(SIGKILL) }
                try await TestServices.waitUntil(timeout: .seconds(60), "the scheduler publishes the first due jobs") {
                    try await depth(connection) > 0
                }
                try await postgres.stop()
                let duringOutage = try await depth(connection)
                #expect(duringOutage < count, "some jobs fall due while the database is down")
                try await postgres.start()
                try await TestServices.waitUntil(timeout: .seconds(90), "every delayed job is published after the restart") {
                    try await depth(connection) >= count
                }
                #expect(scheduler.isRunning, "the scheduler was not restarted: \(scheduler.stderr.suffix(2_000))")
                let states = try await server.withDatabase { pool in
                    try await pool.query("SELECT state, count(*) FROM delayed_jobs GROUP BY state").rows.map { "\(try $0.string(0))=\(try $0.int(1))" }
                }
                #expect(states == ["published=\(count)"], "\(states)")
                // Published once each: the queue holds exactly one message per job.
                let deliveries = try await connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 100)
                var keys: [String] = []
                for try await delivery in deliveries {
                    keys.append(try JobEnvelope(properties: delivery.properties, body: delivery.body).idempotencyKey ?? "")
                    try await connection.ack(delivery)
                    if keys.count == count { break }
                }
                #expect(Set(keys).count == count && keys.count == count)
                #expect(try await depth(connection) == 0, "no second copy of any job")
                scheduler.signal(SIGTERM)
                #expect(try await scheduler.wait(timeout: .seconds(30)) == 0)
            }
        }
    }
}
