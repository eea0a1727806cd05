import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// A batch published while the producer's broker link goes silent: its jobs were recorded
/// with their outbox entries, so the 503 lists them `unconfirmed` (kept, not to be resent),
/// the scheduler's leader publishes each under its id once the lease ends, each runs once, and
/// the batch completes with its on_complete job once. On main the unconfirmed jobs were
/// reported rejected and deleted with their batch (resending them could run them twice), and a
/// batch whose bookkeeping failed after publishing never completed.
@Suite(.enabled(if: TestServices.enabled))
struct BatchOutboxTests {
    @Test func anUnconfirmedBatchStaysWholeIsPublishedByTheOutboxAndCompletesOnce() async throws {
        try await RelayedServer.with(extra: ["WARREN_BATCH_SWEEP_MS": "200"]) { server, relay, serve, pool, vhostURL in
            let token = try await server.token(tier: "premium", scopes: "jobs:write,jobs:read")
            let body = #"{"jobs":[{"type":"noop"},{"type":"noop"},{"type":"noop"}],"on_complete":{"type":"noop"}}"#

            // The link goes silent: no confirm comes; heartbeats end the connection.
            relay.stall()
            let (status, _, text) = try await server.request("POST", "/v1/batches", token: token, body: body)
            #expect(status == 503, "\(text)")
            let answer = HTTP.object(text)
            let unconfirmed = (answer["unconfirmed"] as? [[String: Any]] ?? []).compactMap { $0["id"] as? String }
            #expect(unconfirmed.count == 3, "every job is unconfirmed, none rejected: \(text)")
            #expect((answer["rejected"] as? [Any])?.isEmpty == true, "\(text)")
            let batchID = try #require(answer["batch_id"] as? String, "the batch is kept: \(text)")

            let scheduler = try RunningProduct("scheduler", ["--admin-port", "0"], environment: server.environment)
            defer { scheduler.signal(SIGKILL) }
            let consumer = try RunningProduct("consumer", ["--tier", "premium"], environment: server.environment)
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(120), "the batch completed and its on_complete job ran") {
                let (_, _, now) = try await server.request("GET", "/v1/batches/\(batchID)", token: token, contentType: nil)
                let batch = HTTP.object(now)
                guard batch["status"] as? String == "complete", let onComplete = batch["on_complete"] as? [String: Any],
                      let job = onComplete["job_id"] as? String else { return false }
                let run = HTTP.object(try await server.request("GET", "/v1/jobs/\(job)", token: token, contentType: nil).2)
                return run["status"] as? String == "succeeded"
            }
            // Each job ran once, under the id the 503 gave, and nothing is left on the queue.
            let runs = try await pool.query("""
                SELECT job_id, count(*) FROM message_logs WHERE event = 'succeeded' GROUP BY job_id
                """).rows.map { (try $0.uuid(0).lowercasedString, try $0.int(1)) }
            #expect(runs.count == 4, "three jobs and the on_complete job: \(runs)")
            #expect(runs.allSatisfy { $0.1 == 1 }, "each once: \(runs)")
            #expect(Set(unconfirmed).isSubset(of: Set(runs.map(\.0))))
            let left = try await TestServices.withConnection("test batch outbox", url: vhostURL) { connection in
                try await connection.withControl { try $0.readyCount(Tier.premium) }
            }
            #expect(left == 0)
            for product in [consumer, scheduler, serve] { product.signal(SIGTERM) }
            for product in [consumer, scheduler, serve] { #expect(try await product.wait() == 0) }
        }
    }
}
