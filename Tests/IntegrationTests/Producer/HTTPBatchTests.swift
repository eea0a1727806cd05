import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres

/// `POST /v1/batches` and `GET /v1/batches/{id}` with a real consumer, and load shedding on a
/// tiny capped queue.
@Suite(.enabled(if: TestServices.enabled))
struct HTTPBatchTests {
    func batch(_ server: APIServer, _ token: String, _ id: String) async throws -> [String: Any] {
        HTTP.object(try await server.request("GET", "/v1/batches/\(id)", token: token, contentType: nil).2)
    }

    @Test func progressCountsErrorsAndOnCompleteOnce() async throws {
        try await APIServer.with(extra: ["WARREN_BATCH_SWEEP_MS": "100"]) { server, _, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:write,jobs:read")
            let jobs = [#"{"type":"noop"}"#, #"{"type":"noop","payload":{"n":2}}"#, #"{"type":"fail","payload":{"permanent":true}}"#,
                        #"{"type":"noop"}"#, #"{"type":"fail","payload":{"permanent":true}}"#, #"{"type":"sleep","payload":{"ms":1}}"#]
            let body = #"{"jobs":[\#(jobs.joined(separator: ","))],"on_complete":{"type":"noop","payload":{"report":true}}}"#
            let (status, _, created) = try await server.request("POST", "/v1/batches", token: token, body: body)
            #expect(status == 202, "\(created)")
            let object = HTTP.object(created)
            let id = try #require(object["id"] as? String)
            let jobIDs = try #require(object["jobs"] as? [String])
            #expect(jobIDs.count == 6 && object["total"] as? Int == 6)

            let before = try await batch(server, token, id)
            #expect(before["status"] as? String == "running")
            #expect((before["counts"] as? [String: Int])?["queued"] == 6, "\(before)")
            #expect(before["progress"] as? Double == 0)

            let consumer = try RunningProduct("consumer", ["--tier", "premium"], environment: server.environment)
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(20), "the batch completed and its on_complete job ran") {
                let now = try await batch(server, token, id)
                guard now["status"] as? String == "complete", let onComplete = now["on_complete"] as? [String: Any],
                      onComplete["published"] as? Bool == true, let job = onComplete["job_id"] as? String else { return false }
                let run = HTTP.object(try await server.request("GET", "/v1/jobs/\(job)", token: token, contentType: nil).2)
                return run["status"] as? String == "succeeded"
            }
            let done = try await batch(server, token, id)
            let counts = try #require(done["counts"] as? [String: Int])
            #expect(counts["succeeded"] == 4 && counts["failed"] == 2 && counts["queued"] == 0, "\(counts)")
            #expect(done["progress"] as? Double == 1 && done["finished"] as? Int == 6)
            let errors = try #require(done["errors"] as? [[String: Any]])
            #expect(errors.count == 1, "one message, aggregated: \(errors)")
            #expect(errors.first?["message"] as? String == "failed permanently, as asked")
            #expect(errors.first?["count"] as? Int == 2)
            #expect(Set(errors.first?["job_ids"] as? [String] ?? []) == Set([jobIDs[2], jobIDs[4]]))

            // Published once, however many sweeps ran since.
            let onComplete = try #require(done["on_complete"] as? [String: Any])
            let onCompleteJob = try #require(onComplete["job_id"] as? String)
            let completions = try await server.withDatabase { pool in
                try await pool.query("SELECT count(*) FROM job_runs WHERE type = 'noop' AND idempotency_key = $1",
                                     ["batch:\(id):on_complete"]).rows.first?.int(0)
            }
            #expect(completions == 1)
            let run = HTTP.object(try await server.request("GET", "/v1/jobs/\(onCompleteJob)", token: token, contentType: nil).2)
            #expect(run["idempotency_key"] as? String == "batch:\(id):on_complete")

            // Batches stay within their tenant.
            let globex = try await server.token(tier: "premium", scopes: "jobs:read", tenant: "globex")
            #expect(try await server.request("GET", "/v1/batches/\(id)", token: globex, contentType: nil).0 == 404)
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }

    @Test func batchItemsCarryTheirConcurrencyKeysAndABadLimitRejectsTheBatch() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write")
            let bad = try await server.request("POST", "/v1/batches", token: token,
                                               body: #"{"jobs":[{"type":"noop"},{"type":"noop","concurrency_limit":2}]}"#)
            #expect(bad.0 == 422 && bad.2.contains(#""field":"jobs[1].concurrency_limit""#), "\(bad.2)")
            #expect(try await connection.withControl { try $0.readyCount(.free) } == 0, "nothing was published")
            let (status, _, text) = try await server.request(
                "POST", "/v1/batches", token: token,
                body: #"{"jobs":[{"type":"noop","concurrency_key":"ingest:acme","concurrency_limit":2},{"type":"noop"}]}"#)
            #expect(status == 202, "\(text)")
            let deliveries = try await connection.consume(queue: Tier.free.queueName(tenant: "acme"), prefetch: 2)
            var iterator = deliveries.makeAsyncIterator()
            var keys: [String] = []
            for _ in 0..<2 {
                let delivery = try #require(try await iterator.next())
                let job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
                keys.append(job.concurrencyKey.map { "\($0)/\(job.concurrencyLimit)" } ?? "none")
            }
            #expect(keys.sorted() == ["ingest:acme/2", "none"])
        }
    }

    @Test func anInvalidItemRejectsTheWholeBatchListingEveryBadItem() async throws {
        try await APIServer.with(extra: ["WARREN_HTTP_MAX_BODY_BYTES": "200000"]) { server, connection, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write")
            let body = #"{"jobs":[{"type":"noop"},{"type":"nope"},{"payload":{}},{"type":"noop","tier":"enterprise"},7],"on_complete":{"type":"nah"}}"#
            let (status, _, text) = try await server.request("POST", "/v1/batches", token: token, body: body)
            #expect(status == 422, "\(text)")
            let errors = try #require(HTTP.object(text)["errors"] as? [[String: Any]])
            #expect(errors.compactMap { $0["index"] as? Int } == [1, 2, 3, 4], "\(errors)")
            #expect(errors.compactMap { $0["field"] as? String }
                    == ["jobs[1].type", "jobs[2].type", "jobs[3].tier", "jobs[4]", "on_complete.type"], "\(errors)")
            #expect(errors.first?["code"] as? String == "unknown_type")

            let many = #"{"jobs":[\#(Array(repeating: #"{"type":"noop"}"#, count: 1_001).joined(separator: ","))]}"#
            let tooMany = try await server.request("POST", "/v1/batches", token: token, body: many)
            #expect(tooMany.0 == 422 && tooMany.2.contains(#""code":"too_many_jobs""#), "\(tooMany.2)")
            #expect(try await server.request("POST", "/v1/batches", token: token, body: #"{"jobs":[]}"#).0 == 422)
            #expect(try await server.request("POST", "/v1/batches", token: token, body: #"{"jobs":{}}"#).0 == 422)
            #expect(try await server.request("POST", "/v1/batches", token: token, body: #"{"jobs":["#).0 == 400)

            let depth = try await connection.withControl { control in try control.readyCount(Tier.free) }
            #expect(depth == 0, "nothing was published")
        }
    }

    @Test func aFullQueueSheds503AndNothingIsHalfAccepted() async throws {
        try await APIServer.with { server, connection, _ in
            // A tiny cap on the free queue (the smaller of policy and queue argument wins).
            try await Management.setPolicy(vhost: server.vhost, name: "tiny-free", pattern: "^warren\\.jobs\\.free(\\.[0-9]+)?$",
                                           definition: #"{"max-length":3,"overflow":"reject-publish"}"#)
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let premium = try await server.token(tier: "premium", scopes: "jobs:write")
            var accepted = 0
            try await TestServices.waitUntil(timeout: .seconds(10), "the policy holds: a publish is refused") {
                let (status, headers, body) = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"}"#)
                if status == 202 {
                    accepted += 1
                    return false
                }
                #expect(status == 503, "\(body)")
                #expect(body.contains(#""code":"queue_full""#), "\(body)")
                #expect(Int(headers["retry-after"] ?? "") ?? 0 >= 1)
                return true
            }
            let depth = try await connection.withControl { control in try control.readyCount(Tier.free) }
            // Quorum queues check the cap when a message arrives, so the one that fills the
            // queue past it is still taken: at most cap + 1.
            #expect((3...4).contains(accepted), "\(accepted) accepted before the cap")
            #expect(depth == accepted, "every 202 is in the queue, every 503 is not")
            // A refused job left no trace: no status to find, no row.
            let rows = try await server.withDatabase { pool in
                try await pool.query("SELECT count(*) FROM api_jobs").rows.first?.int(0)
            }
            #expect(rows == accepted, "only the accepted jobs are recorded")

            // A batch into the full queue: nothing accepted, and it says so item by item.
            let (status, _, text) = try await server.request("POST", "/v1/batches", token: token,
                                                             body: #"{"jobs":[{"type":"noop"},{"type":"noop"}]}"#)
            #expect(status == 503, "\(text)")
            let object = HTTP.object(text)
            #expect((object["rejected"] as? [[String: Any]])?.count == 2 && (object["accepted"] as? [Any])?.isEmpty == true, "\(text)")
            #expect(object["batch_id"] is NSNull)

            // Other tiers are not affected.
            #expect(try await server.request("POST", "/v1/jobs", token: premium, body: #"{"type":"noop"}"#).0 == 202)
        }
    }
}
