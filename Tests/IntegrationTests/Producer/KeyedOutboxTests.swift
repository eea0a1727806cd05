import Common
import Foundation
import Testing

/// A keyed job whose publish the producer could not confirm (its broker link went silent
/// mid-request) stays one job: the claim is kept as an outbox entry, a retry with the key
/// gets that job, and the scheduler's leader publishes it under its id once the lease ends.
/// On main the claim was released on a lost connection, so the retry made a second job.
@Suite(.enabled(if: TestServices.enabled))
struct KeyedOutboxTests {
    @Test func anUnconfirmedKeyedJobIsRepublishedUnderItsIdAndTheKeyNeverMakesASecondJob() async throws {
        let brokerPort = URLComponents(string: TestServices.amqpURL)?.port ?? 5682
        let relay = try TCPProxy(upstreamPort: brokerPort)
        defer { relay.cut() }
        try await TestServices.withVhost { vhostURL in
            // The producer reaches the broker only through the relay, with short heartbeats.
            var relayed = URLComponents(string: vhostURL)!
            relayed.port = relay.port
            relayed.query = "heartbeat=2"
            try await TestServices.withSchema { pool in
                _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
                let schema = pool.configuration.searchPath ?? "public"
                let database = ["WARREN_DATABASE_URL": TestServices.databaseURL, "WARREN_DATABASE_SCHEMA": schema]
                let serve = try RunningProduct("producer", ["serve"], environment: [
                    "WARREN_AMQP_URL": relayed.string!, "WARREN_HTTP_PORT": "0", "WARREN_HTTP_HOST": "127.0.0.1",
                ].merging(database) { $1 })
                defer { serve.signal(SIGKILL) }
                let port = try await serve.listeningPort("http_port")
                let server = APIServer(base: "http://127.0.0.1:\(port)", environment: ["WARREN_AMQP_URL": vhostURL].merging(database) { $1 },
                                       vhost: String(vhostURL[vhostURL.index(after: vhostURL.lastIndex(of: "/")!)...]))
                try await TestServices.waitUntil("the API answers /healthz") { (try? await server.request("GET", "/healthz").0) == 200 }
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
                        try await connection.withControl { try $0.queueDepth(Tier.premium.queueName).messages } == 1
                    }
                }
                scheduler.signal(SIGTERM)
                #expect(try await scheduler.wait() == 0)
                serve.signal(SIGTERM)
                #expect(try await serve.wait() == 0)
            }
        }
    }
}
