import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// A keyed job whose publish the producer could not confirm (its broker link went silent
/// mid-request) stays one job: the claim is kept as an outbox entry, a retry with the key
/// gets that job, and the scheduler's leader publishes it under its id once the lease ends.
/// On main the claim was released on a lost connection, so the retry made a second job.
@Suite(.enabled(if: TestServices.enabled))
struct KeyedOutboxTests {
    @Test func anUnconfirmedKeyedJobIsRepublishedUnderItsIdAndTheKeyNeverMakesASecondJob() async throws {
        try await RelayedServer.with { server, relay, serve, _, vhostURL in
            let token = try await server.token(tier: "premium", scopes: "jobs:write,jobs:read")
            let body = #"{"type":"noop","idempotency_key":"order-7"}"#

            // The link goes silent: the publish is never confirmed; heartbeats end the connection.
            relay.stall()
            let (status, _, text) = try await server.request("POST", "/v1/jobs", token: token, body: body)
            #expect(status == 503, "\(text)")
            let first = try await server.withDatabase { pool in
                try await pool.query("SELECT job_id FROM api_jobs WHERE idempotency_key = 'order-7'").rows.map { try $0.uuid(0) }
            }
            #expect(first.count == 1, "the claim is kept, not released")

            // Retries with the key never make a second job: 409 while unconfirmed, then that job.
            let scheduler = try RunningProduct("scheduler", ["--admin-port", "0"], environment: server.environment)
            defer { scheduler.signal(SIGKILL) }
            var answered: String?
            try await TestServices.waitUntil(timeout: .seconds(90), "a retry with the key gets the job") {
                let (status, _, text) = try await server.request("POST", "/v1/jobs", token: token, body: body)
                #expect(status == 409 || status == 200, "\(status): \(text)")
                if status == 200 { answered = HTTP.field("id", in: text) }
                return status == 200
            }
            #expect(answered == first.first?.lowercasedString)
            try await TestServices.withConnection("test outbox", url: vhostURL) { connection in
                try await TestServices.waitUntil("the job is on its queue once") {
                    try await connection.withControl { try $0.readyCount(Tier.premium) } == 1
                }
            }
            scheduler.signal(SIGTERM)
            #expect(try await scheduler.wait() == 0)
            serve.signal(SIGTERM)
            #expect(try await serve.wait() == 0)
        }
    }
}
