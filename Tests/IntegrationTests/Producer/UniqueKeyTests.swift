import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenStore

/// `"unique": "running"` on `POST /v1/jobs`: a second job of a concurrency key is refused with
/// 409 `key_busy` while the first is unfinished, and accepted once it finished; counted from
/// the broker's queues and the `api_jobs` rows, against a real server, consumer and database.
@Suite(.enabled(if: TestServices.enabled))
struct UniqueKeyTests {
    static func body(_ key: String, ms: Int = 1, extra: String = "") -> String {
        #"{"type":"sleep","payload":{"ms":\#(ms)},"concurrency_key":"\#(key)","unique":"running"\#(extra)}"#
    }

    func jobRows(_ server: APIServer) async throws -> Int {
        try await server.withDatabase { pool in try await pool.query("SELECT count(*) FROM api_jobs").rows[0].int(0) }
    }

    func status(_ server: APIServer, _ token: String, _ id: String) async throws -> String? {
        HTTP.object(try await server.request("GET", "/v1/jobs/\(id)", token: token, contentType: nil).2)["status"] as? String
    }

    @Test func aUniqueJobIsRefusedWhileItsKeyIsUnfinishedAndAcceptedOnceItFinished() async throws {
        try await APIServer.with { server, connection, _ in
            let acme = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let globex = try await server.token(tier: "free", scopes: "jobs:write,jobs:read", tenant: "globex")
            let (first, _, firstBody) = try await server.request("POST", "/v1/jobs", token: acme, body: Self.body("ingest"))
            #expect(first == 202, "\(firstBody)")
            let holder = try #require(HTTP.field("id", in: firstBody))

            // Queued, no consumer yet: refused, named for the same tenant, unnamed for another.
            let (busy, busyHeaders, busyBody) = try await server.request("POST", "/v1/jobs", token: acme, body: Self.body("ingest"))
            #expect(busy == 409 && HTTPBadInputTests.errorCode(busyBody) == "key_busy", "\(busyBody)")
            #expect(HTTPBadInputTests.errorField(busyBody) == "concurrency_key" && HTTP.field("job_id", in: busyBody) == holder, "\(busyBody)")
            #expect(busyHeaders["retry-after"] == nil)
            let (other, _, otherBody) = try await server.request("POST", "/v1/jobs", token: globex, body: Self.body("ingest"))
            #expect(other == 409 && HTTPBadInputTests.errorCode(otherBody) == "key_busy", "\(otherBody)")
            #expect(HTTP.field("job_id", in: otherBody) == nil, "another tenant's job is not named: \(otherBody)")
            // A scheduled unique job holds its key too; another key is free.
            let (later, _, laterBody) = try await server.request("POST", "/v1/jobs", token: acme,
                                                                 body: Self.body("report", extra: #","delay_seconds":3600"#))
            #expect(later == 202 && HTTP.field("status", in: laterBody) == "scheduled", "\(laterBody)")
            let (laterBusy, _, laterBusyBody) = try await server.request("POST", "/v1/jobs", token: acme, body: Self.body("report"))
            #expect(laterBusy == 409, "\(laterBusyBody)")
            #expect(try await connection.withControl { try $0.readyCount(.free) } == 1, "the refused jobs were not published")
            #expect(try await jobRows(server) == 2, "nor recorded")

            // Cancelled while queued, the holder is finished: the key is taken over.
            let (cancel, _, cancelBody) = try await server.request("DELETE", "/v1/jobs/\(holder)", token: acme, contentType: nil)
            #expect(cancel == 200, "\(cancelBody)")
            let (second, _, secondBody) = try await server.request("POST", "/v1/jobs", token: acme, body: Self.body("ingest", ms: 3_000))
            #expect(second == 202, "\(secondBody)")
            let running = try #require(HTTP.field("id", in: secondBody))

            // A consumer runs it; while it runs the key is busy, once it succeeded it is free. (3 s: a
            // loaded machine took longer than a 300 ms job ran between seeing it run and asking.)
            let consumer = try RunningProduct("consumer", ["--tier", "free"], environment: server.environment)
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(30), "the second job runs") {
                try await status(server, acme, running) == "running"
            }
            let (whileRunning, _, whileRunningBody) = try await server.request("POST", "/v1/jobs", token: acme, body: Self.body("ingest"))
            #expect(whileRunning == 409 && HTTP.field("job_id", in: whileRunningBody) == running, "\(whileRunningBody)")
            try await TestServices.waitUntil(timeout: .seconds(30), "the second job succeeded") {
                try await status(server, acme, running) == "succeeded"
            }
            let (third, _, thirdBody) = try await server.request("POST", "/v1/jobs", token: globex, body: Self.body("ingest"))
            #expect(third == 202, "a finished holder frees the key for anyone: \(thirdBody)")
            let thirdID = try #require(HTTP.field("id", in: thirdBody))
            try await TestServices.waitUntil(timeout: .seconds(30), "the third job succeeded") {
                try await status(server, globex, thirdID) == "succeeded"
            }
            // Jobs without "unique" are not held back by it (the concurrency limit still orders their runs).
            let (plain, _, plainBody) = try await server.request("POST", "/v1/jobs", token: acme,
                                                                 body: #"{"type":"noop","concurrency_key":"report"}"#)
            #expect(plain == 202, "\(plainBody)")
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }

    @Test func ofManyRequestsAtOnceForOneKeyExactlyOneIsAccepted() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:write")
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<24 {
                    group.addTask { try await server.request("POST", "/v1/jobs", token: token, body: Self.body("once")).0 }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses.filter { $0 == 202 }.count == 1, "\(statuses)")
            #expect(statuses.filter { $0 == 409 }.count == 23, "\(statuses)")
            #expect(try await connection.withControl { try $0.readyCount(.premium) } == 1)
            #expect(try await jobRows(server) == 1)
        }
    }

    @Test func anIdempotentRetryGetsItsJobBackAndBadUniqueValuesChangeNothing() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:write")
            let keyed = Self.body("sync", extra: #","idempotency_key":"sync-1""#)
            let (first, _, firstBody) = try await server.request("POST", "/v1/jobs", token: token, body: keyed)
            #expect(first == 202, "\(firstBody)")
            let (again, _, againBody) = try await server.request("POST", "/v1/jobs", token: token, body: keyed)
            #expect(again == 200 && againBody.contains(#""duplicate":true"#), "the retry is not its own rival: \(againBody)")
            #expect(HTTP.field("id", in: againBody) == HTTP.field("id", in: firstBody))
            for bad in [#"{"type":"noop","concurrency_key":"k","unique":"always"}"#, #"{"type":"noop","concurrency_key":"k","unique":true}"#,
                        #"{"type":"noop","unique":"running"}"#] {
                let (status, _, body) = try await server.request("POST", "/v1/jobs", token: token, body: bad)
                #expect(status == 422 && HTTPBadInputTests.errorField(body) == "unique", "\(bad): \(body)")
            }
            let (batch, _, batchBody) = try await server.request("POST", "/v1/batches", token: token,
                                                                 body: #"{"jobs":[{"type":"noop","concurrency_key":"k","unique":"running"}]}"#)
            #expect(batch == 422, "not on batch items: \(batchBody)")
            #expect(try await connection.withControl { try $0.readyCount(.premium) } == 1)
            #expect(try await jobRows(server) == 1)
        }
    }

    /// A unique job the broker definitely refused is dropped with its claim, and its key with it.
    @Test func aClaimDroppedAfterARefusedPublishFreesItsKey() async throws {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let store = APIJobStore(pool: pool)
            func job() throws -> JobEnvelope {
                try JobRequest(type: "noop", tier: .free, payload: Array("{}".utf8), tenant: "acme", concurrencyKey: "drop").envelope()
            }
            let first = try job()
            #expect(try await store.claim(first, tenant: "acme", requestID: "r1", unique: true) == .claimed)
            #expect(try await store.claim(try job(), tenant: "acme", requestID: "r2", unique: true) == .keyBusy(holder: first.id))
            try await store.releaseKeyed(first.id)
            #expect(try await store.claim(try job(), tenant: "acme", requestID: "r3", unique: true) == .claimed)
            #expect(try await pool.query("SELECT count(*) FROM unique_keys").rows[0].int(0) == 1)
        }
    }
}
