import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Delayed jobs end to end: `POST /v1/jobs` with `delay_seconds` / `run_at` and
/// `producer publish --in` hold the job in Postgres; real `scheduler` processes publish it
/// when due, once, even with two of them.
@Suite(.enabled(if: TestServices.enabled))
struct DelayedJobTests {
    func scheduler(_ server: APIServer) throws -> RunningProduct {
        try RunningProduct("scheduler", ["--admin-port", "0"], environment: server.environment)
    }

    func delayedStates(_ server: APIServer) async throws -> [String: Int] {
        try await server.withDatabase { pool in
            var states: [String: Int] = [:]
            for row in try await pool.query("SELECT state, count(*) FROM delayed_jobs GROUP BY state").rows {
                states[try row.string(0)] = try row.int(1)
            }
            return states
        }
    }

    @Test func aDelayedJobIsScheduledThenPublishedNoEarlierThanItsTime() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:write,jobs:read")
            let (status, _, body) = try await server.request("POST", "/v1/jobs", token: token,
                                                             body: #"{"type":"noop","delay_seconds":2,"idempotency_key":"later-1"}"#)
            #expect(status == 202, "\(body)")
            let answer = HTTP.object(body)
            #expect(answer["status"] as? String == "scheduled")
            let id = try #require(answer["id"] as? String)
            let runAt = try #require((answer["run_at"] as? String).flatMap(Timestamp.init(iso8601:)))
            let (_, _, statusBody) = try await server.request("GET", "/v1/jobs/\(id)", token: token)
            #expect(HTTP.object(statusBody)["status"] as? String == "scheduled")
            #expect(HTTP.object(statusBody)["run_at"] as? String == runAt.iso8601)

            // The same key again: the first job, not a second one.
            let (again, _, againBody) = try await server.request("POST", "/v1/jobs", token: token,
                                                                 body: #"{"type":"noop","delay_seconds":2,"idempotency_key":"later-1"}"#)
            #expect(again == 200 && HTTP.object(againBody)["id"] as? String == id, "\(againBody)")

            let first = try scheduler(server)
            let second = try scheduler(server)
            defer { first.signal(SIGKILL); second.signal(SIGKILL) }
            let deliveries = try await connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 10)
            var iterator = deliveries.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            let received = Timestamp.now()
            let job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
            #expect(job.id.lowercasedString == id && job.idempotencyKey == "later-1" && job.tenant == "acme")
            #expect(received >= runAt, "published before its time: \(received.iso8601) < \(runAt.iso8601)")
            #expect(job.enqueuedAt == runAt, "it enters its queue at run_at")
            try await connection.ack(delivery)
            try await TestServices.waitUntil(timeout: .seconds(10), "the row is marked published after the confirm") {
                try await delayedStates(server) == ["published": 1]
            }
            let (_, _, after) = try await server.request("GET", "/v1/jobs/\(id)", token: token)
            #expect(HTTP.object(after)["status"] as? String == "queued")
            #expect(try await connection.withControl { try $0.readyCount(Tier.premium) } == 0, "published once")
            first.signal(SIGTERM)
            second.signal(SIGTERM)
            #expect(try await first.wait(timeout: .seconds(20)) == 0)
            #expect(try await second.wait(timeout: .seconds(20)) == 0)
        }
    }

    @Test func twoSchedulersPublishEachOfManyDueJobsOnce() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "enterprise", scopes: "jobs:write")
            let runAt = Timestamp(microseconds: Timestamp.now().microseconds + 3_000_000).iso8601
            var scheduled = 0
            for index in 0..<60 {
                let (status, _, body) = try await server.request(
                    "POST", "/v1/jobs", token: token, body: #"{"type":"noop","payload":{"n":\#(index)},"run_at":"\#(runAt)"}"#)
                #expect(status == 202, "\(body)")
                // A run_at already past (a slow machine) means now: published at once.
                if HTTP.object(body)["status"] as? String == "scheduled" { scheduled += 1 }
            }
            #expect(scheduled > 0)
            let schedulers = [try scheduler(server), try scheduler(server)]
            defer { for scheduler in schedulers { scheduler.signal(SIGKILL) } }
            try await TestServices.waitUntil(timeout: .seconds(20), "every delayed job is published") {
                try await delayedStates(server) == ["published": scheduled]
            }
            #expect(try await connection.withControl { try $0.readyCount(Tier.enterprise) } == 60)
        }
    }

    @Test func aCancelledDelayedJobIsNeverPublished() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "enterprise", scopes: "jobs:write,jobs:read")
            let runAt = Timestamp(microseconds: Timestamp.now().microseconds + 1_000_000).iso8601
            var ids: [String] = []
            for name in ["keep", "cancel"] {
                let (_, _, body) = try await server.request("POST", "/v1/jobs", token: token,
                                                            body: #"{"type":"noop","payload":{"name":"\#(name)"},"run_at":"\#(runAt)"}"#)
                ids.append(try #require(HTTP.object(body)["id"] as? String))
            }
            let (status, _, body) = try await server.request("DELETE", "/v1/jobs/\(ids[1])", token: token)
            #expect(status == 200 && HTTP.object(body)["status"] as? String == "cancelled", "\(body)")
            let scheduler = try scheduler(server)
            defer { scheduler.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(20), "the kept job is published") {
                try await delayedStates(server) == ["published": 1, "cancelled": 1]
            }
            let deliveries = try await connection.consume(queue: Tier.enterprise.queueName(tenant: "acme"), prefetch: 10)
            var iterator = deliveries.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            #expect(try JobEnvelope(properties: delivery.properties, body: delivery.body).id.lowercasedString == ids[0])
            try await connection.ack(delivery)
            #expect(try await connection.withControl { try $0.readyCount(Tier.enterprise) } == 0)
            let (_, _, cancelled) = try await server.request("GET", "/v1/jobs/\(ids[1])", token: token)
            #expect(HTTP.object(cancelled)["status"] as? String == "cancelled")
        }
    }

    @Test func badDelaysAreRefusedNamingTheField() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write")
            let cases: [(String, String)] = [
                (#"{"type":"noop","run_at":"tomorrow"}"#, "run_at"),
                (#"{"type":"noop","run_at":"2026-12-24T09:00:00"}"#, "run_at"),
                (#"{"type":"noop","delay_seconds":-1}"#, "delay_seconds"),
                (#"{"type":"noop","delay_seconds":"10"}"#, "delay_seconds"),
                (#"{"type":"noop","delay_seconds":40000000}"#, "delay_seconds"),
                (#"{"type":"noop","run_at":"10000-01-01T00:00:00Z"}"#, "run_at"),
                (#"{"type":"noop","run_at":"2026-12-24T09:00:00Z","delay_seconds":5}"#, "delay_seconds"),
            ]
            for (body, field) in cases {
                let (status, _, answer) = try await server.request("POST", "/v1/jobs", token: token, body: body)
                #expect(status == 422, "\(body) → \(answer)")
                #expect((HTTP.object(answer)["error"] as? [String: Any])?["field"] as? String == field, "\(body) → \(answer)")
            }
            #expect(try await delayedStates(server).isEmpty, "nothing was stored")
            // Any instant with a four-digit year is a time to run at (a reminder years ahead);
            // only delay_seconds has a bound, against seconds confused with a timestamp.
            let (status, _, answer) = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop","run_at":"2099-01-01T00:00:00Z"}"#)
            #expect(status == 202 && HTTP.object(answer)["status"] as? String == "scheduled", "\(answer)")
            #expect(try await delayedStates(server) == ["pending": 1])
        }
    }

    @Test func producerPublishInHoldsTheJobUntilTheSchedulerPublishesIt() async throws {
        try await APIServer.with { server, connection, _ in
            let result = try await Products.run("producer", ["publish", "--type", "noop", "--tier", "free", "--in", "1s"],
                                                environment: server.environment)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.contains("scheduled for"), "\(result.stdout)")
            let bad = try await Products.run("producer", ["publish", "--type", "noop", "--tier", "free", "--in", "soon"],
                                             environment: server.environment)
            #expect(bad.status == 2 && bad.stderr.contains("--in"), "\(bad.stderr)")
            #expect(try await delayedStates(server) == ["pending": 1])
            let scheduler = try scheduler(server)
            defer { scheduler.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(20), "the job is in the queue") {
                try await connection.withControl { try $0.readyCount(Tier.free) } == 1
            }
        }
    }
}
