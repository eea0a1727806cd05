import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// `message.send` end to end: real `consumer` processes against the real broker and Postgres
/// (a vhost and a schema per test) delivering to a real `notify-standin`.
@Suite(.enabled(if: TestServices.enabled))
struct MessageSendTests {
    typealias World = ConsumerIntegrationTests.World

    func withWorld<T: Sendable>(_ body: (World) async throws -> T) async throws -> T {
        try await TestServices.withVhost { url in
            try await TestServices.withSchema { pool in
                _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
                return try await TestServices.withConnection("test message.send", url: url) { connection in
                    try await body(World(amqpURL: url, pool: pool, connection: connection))
                }
            }
        }
    }

    /// A `consumer --tier free` delivering to `standIn` (none: no `WARREN_NOTIFY_URL`), with its
    /// admin port; stopped with SIGTERM afterwards, which must exit 0.
    func withConsumer<T: Sendable>(_ world: World, _ standIn: StandIn?, environment extra: [String: String] = [:],
                                   _ body: (_ adminPort: Int) async throws -> T) async throws -> T {
        var environment = world.environment.merging(["WARREN_ADMIN_HOST": "127.0.0.1"]) { $1 }
        if let standIn { environment["WARREN_NOTIFY_URL"] = standIn.url }
        let consumer = try RunningProduct("consumer", ["--tier", "free", "--admin-port", "0"],
                                          environment: environment.merging(extra) { $1 })
        defer { consumer.signal(SIGKILL) }
        let port = try await consumer.listeningPort("admin_port")
        try await TestServices.waitUntil(timeout: .seconds(60), "the consumer's admin port answers") {
            (try? await HTTP.request("GET", "http://127.0.0.1:\(port)/healthz").0) == 200
        }
        let value = try await body(port)
        consumer.signal(SIGTERM)
        // The consumer bounds its own stop at grace + abandonment + 5 s (40 s by default); once,
        // under a release build's load, it logged "consumer stopped" and had not exited 30 s on.
        #expect(try await consumer.wait(timeout: .seconds(60)) == 0, "graceful stop: \(consumer.stderr.suffix(2_000))")
        return value
    }

    /// The consumer's `/status` `notify` member.
    func notifyStatus(_ port: Int) async -> [String: Any] {
        guard let (_, _, body) = try? await HTTP.request("GET", "http://127.0.0.1:\(port)/status") else { return [:] }
        return HTTP.object(body)["notify"] as? [String: Any] ?? [:]
    }

    /// The breaker of `destination` on the consumer's `/status`: state and times opened.
    func breaker(_ port: Int, _ destination: String) async -> (state: String?, timesOpened: Int?) {
        let entry = (await notifyStatus(port)["destinations"] as? [String: Any])?[destination] as? [String: Any]
        return (entry?["state"] as? String, entry?["times_opened"] as? Int)
    }

    func message(_ to: String, idempotencyKey: String? = nil) -> JobEnvelope {
        JobEnvelope(type: "message.send", tier: .free,
                    payload: Array(#"{"to":"\#(to)","subject":"Happy birthday","body":"Many happy returns, \#(to)!","kind":"birthday"}"#.utf8),
                    idempotencyKey: idempotencyKey)
    }

    func key(_ job: JobEnvelope) -> String { job.idempotencyKey ?? job.id.lowercasedString }

    func row(_ world: World, _ job: JobEnvelope) async throws -> (status: String, attempts: Int, error: String?, result: String?)? {
        try await world.rows().first { $0.id == job.id }.map { ($0.status, $0.attempts, $0.error, $0.result) }
    }

    // MARK: - Delivery

    @Test func eachMessageArrivesOnceWithItsIdempotencyKeyAndBodyAndBadPayloadsFailPermanently() async throws {
        try await withWorld { world in
            try await StandIn.with { standIn in
                let keyed = message("ada@example.com", idempotencyKey: "birthday:contact-1:2026-11-23")
                let plain = message("grace@example.com")
                let incomplete = JobEnvelope(type: "message.send", tier: .free, payload: Array(#"{"to":"x@example.com"}"#.utf8))
                let notAnObject = JobEnvelope(type: "message.send", tier: .free, payload: Array(#"["to","subject","body"]"#.utf8))
                try await world.publish([keyed, plain, incomplete, notAnObject])
                try await withConsumer(world, standIn) { _ in
                    try await TestServices.waitUntil(timeout: .seconds(30), "every job finished") {
                        try await world.count("SELECT count(*) FROM job_runs WHERE status IN ('succeeded','failed','dead')") == 4
                    }
                }
                for job in [keyed, plain] {
                    let row = try await row(world, job)
                    #expect(row?.status == "succeeded")
                    #expect(row?.attempts == 1)
                    #expect(row?.result == #"{"status": 200}"#)
                }
                #expect(try await row(world, incomplete)?.status == "failed")
                #expect(try await row(world, incomplete)?.error?.contains(#"missing or not a string: "subject", "body""#) == true)
                #expect(try await row(world, notAnObject)?.error?.contains("needs a JSON object payload") == true)

                let received = try await standIn.received()
                #expect(received.count == 2, "bad payloads never reach the service")
                #expect(received.delivered == 2)
                for job in [keyed, plain] {
                    let requests = received.requests(key: key(job))
                    #expect(requests.count == 1, "\(key(job))")
                    let sent = try #require(try JSONSerialization.jsonObject(with: Data(job.payload)) as? [String: String])
                    #expect(requests.first?.body == sent, "the payload as it is")
                    #expect(requests.first?.status == 200)
                }
                #expect(received.requests(key: "birthday:contact-1:2026-11-23").count == 1, "the producer's key is the Idempotency-Key")
            }
        }
    }

    @Test func aRefusalIsPermanentAndThrottlingOrUnavailabilityIsRetriedAfterRetryAfterThenDeliveredOnce() async throws {
        try await withWorld { world in
            try await StandIn.with { standIn in
                // Backoff alone would pick the 1 s delay queue; the stand-in's Retry-After (5 s) must win.
                try await withConsumer(world, standIn, environment: ["WARREN_RETRY_BASE_SECONDS": "0.01", "WARREN_RETRY_CAP_SECONDS": "0.01"]) { _ in
                    try await standIn.configure(#"{"next": [422]}"#)
                    let refused = message("nobody@example.com")
                    try await world.publish([refused])
                    try await TestServices.waitUntil(timeout: .seconds(60), "the refused job failed") {
                        try await row(world, refused)?.status == "failed"
                    }
                    let error = try await row(world, refused)?.error ?? ""
                    #expect(error.hasPrefix("refused: notification service answered 422"), "\(error)")
                    #expect(try await row(world, refused)?.attempts == 1, "no retry")

                    try await standIn.configure(#"{"next": [503, 429], "retry_after_seconds": 5}"#)
                    let flaky = message("ada@example.com", idempotencyKey: "flaky-1")
                    try await world.publish([flaky])
                    try await TestServices.waitUntil(timeout: .seconds(40), "the flaky job succeeded") {
                        try await row(world, flaky)?.status == "succeeded"
                    }
                    #expect(try await row(world, flaky)?.attempts == 3)
                    #expect(try await world.count("""
                        SELECT count(*) FROM message_logs WHERE job_id = '\(flaky.id.lowercasedString)'
                          AND event = 'retried' AND detail->>'delay' = '5s'
                        """) == 2, "both retries waited for Retry-After")
                    let received = try await standIn.received()
                    #expect(received.requests(key: "flaky-1").map(\.status) == [503, 429, 200])
                    #expect(received.deliveries(key: "flaky-1") == 1, "delivered exactly once")
                }
                let dead = try await world.drain(Topology.deadQueue, expecting: 1)
                #expect(dead.first?.properties.headers[JobEnvelope.Header.deadReason]?.stringValue == "permanent-failure")
            }
        }
    }

    @Test func aTimedOutCallIsRetriedWithTheSameKeySoTheMessageIsSentOnce() async throws {
        try await withWorld { world in
            try await StandIn.with(["--delay-ms", "2500"]) { standIn in
                try await withConsumer(world, standIn, environment: ["WARREN_NOTIFY_TIMEOUT_SECONDS": "1"]) { _ in
                    let slow = message("ada@example.com", idempotencyKey: "slow-1")
                    try await world.publish([slow])
                    try await TestServices.waitUntil(timeout: .seconds(60), "the first call timed out") {
                        try await row(world, slow)?.status == "retrying"
                    }
                    #expect(try await row(world, slow)?.error?.contains("timed out") == true)
                    try await standIn.configure(#"{"delay_ms": 0}"#)
                    try await TestServices.waitUntil(timeout: .seconds(60), "the retry succeeded") {
                        try await row(world, slow)?.status == "succeeded"
                    }
                    // Usually 2; 3 when a loaded machine let the retry start before the stand-in
                    // was made fast (that call timed out too): what matters is one message.
                    let attempts = try #require(try await row(world, slow)?.attempts)
                    #expect((2...3).contains(attempts))
                    // The slow requests still finish at the stand-in: one request per attempt, one message.
                    try await TestServices.waitUntil(timeout: .seconds(10), "the stand-in answered every request") {
                        try await standIn.received().count == attempts
                    }
                    let received = try await standIn.received()
                    #expect(received.requests(key: "slow-1").count == attempts)
                    #expect(received.deliveries(key: "slow-1") == 1, "the Idempotency-Key made the second one a duplicate")
                    #expect(received.delivered == 1)
                }
            }
        }
    }

    // MARK: - Circuit breaker

    @Test func theBreakerOpensAfterFiveFailuresDefersWithoutCallsOrSpentAttemptsThenCloses() async throws {
        try await withWorld { world in
            try await StandIn.with(["--failure-rate", "1"]) { standIn in
                // Open for 12 s: the five deferrals must all be seen while it is still open, and
                // on a loaded machine that took longer than 4 s (the trial had begun).
                let environment = ["WARREN_NOTIFY_BREAKER_OPEN_SECONDS": "12", "WARREN_RETRY_MAX_ATTEMPTS": "10"]
                try await withConsumer(world, standIn, environment: environment) { port in
                    #expect(await breaker(port, standIn.destination).state == "closed")
                    let jobs = (1...5).map { message("friend\($0)@example.com") }
                    try await world.publish(jobs)

                    // Five 503s open it.
                    try await TestServices.waitUntil(timeout: .seconds(60), "the breaker opened") {
                        await breaker(port, standIn.destination).state == "open"
                    }
                    let (_, _, metrics) = try await HTTP.request("GET", "http://127.0.0.1:\(port)/metrics")
                    #expect(metrics.contains(#"warren_notify_breaker_state{destination="\#(standIn.destination)"} 2"#), "\(metrics.suffix(1_500))")

                    // Their retries (Retry-After: 1 s) come back while it is open: each is deferred,
                    // with no call and at the attempt it had.
                    try await TestServices.waitUntil(timeout: .seconds(60), "every job was deferred") {
                        try await world.count("""
                            SELECT count(DISTINCT job_id) FROM message_logs WHERE event = 'retried' AND detail ? 'deferred'
                            """) == 5
                    }
                    let callsWhileOpen = try await standIn.received().count
                    let stillOpen = await breaker(port, standIn.destination)
                    #expect(stillOpen.state == "open" && stillOpen.timesOpened == 1, "no trial yet: \(stillOpen)")
                    #expect(callsWhileOpen == 5, "deferred jobs made no call")
                    #expect(try await world.count("SELECT count(*) FROM job_runs WHERE attempts <> 2") == 0,
                            "one failed attempt each; deferrals spend none")

                    // After the open period one trial goes through; it fails, so it opens again.
                    try await TestServices.waitUntil(timeout: .seconds(60), "a failed trial reopened it") {
                        await breaker(port, standIn.destination).timesOpened == 2
                    }
                    #expect(try await standIn.received().count == 6, "exactly one trial call")

                    // The service recovers: the next trial succeeds and closes it; everything is delivered.
                    try await standIn.configure(#"{"failure_rate": 0}"#)
                    try await TestServices.waitUntil(timeout: .seconds(40), "every message was delivered") {
                        try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 5
                    }
                    #expect(await breaker(port, standIn.destination).state == "closed")
                    let received = try await standIn.received()
                    #expect(received.count == 11, "5 failures, 1 failed trial, 5 deliveries: no call while open")
                    #expect(received.delivered == 5)
                    for job in jobs { #expect(received.deliveries(key: key(job)) == 1) }
                    #expect(try await world.count("SELECT sum(attempts) FROM job_runs") == 11,
                            "4 jobs in 2 attempts, the failed trial's in 3")
                    #expect(try await world.depth(Topology.deadQueue) == 0)
                }
            }
        }
    }

    // MARK: - Configuration and intake

    @Test func aConsumerWithoutANotifyURLStartsAndFailsMessagesNamingTheVariable() async throws {
        try await withWorld { world in
            try await withConsumer(world, nil) { port in
                #expect(await notifyStatus(port)["configured"] as? Bool == false)
                let job = message("ada@example.com")
                try await world.publish([job])
                try await TestServices.waitUntil(timeout: .seconds(60), "the job failed") {
                    try await row(world, job)?.status == "failed"
                }
                #expect(try await row(world, job)?.error?.contains("WARREN_NOTIFY_URL is not set") == true)
            }
        }
        let bad = try await Products.run("consumer", ["--tier", "free"], environment: ["WARREN_NOTIFY_URL": "ftp://nowhere"])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("WARREN_NOTIFY_URL"), "\(bad.stderr)")
    }

    @Test func theHTTPAPIAcceptsMessageSendAndItsKeyReachesTheService() async throws {
        try await APIServer.with { server, _, _ in
            try await StandIn.with { standIn in
                let token = try await server.token(tier: "free", scopes: "jobs:write")
                let (status, _, body) = try await server.request(
                    "POST", "/v1/jobs", token: token,
                    body: #"{"type":"message.send","payload":{"to":"ada@example.com","subject":"Hi","body":"Hello"},"idempotency_key":"api-1"}"#)
                #expect(status == 202, "\(body)")
                let consumer = try RunningProduct("consumer", ["--tier", "free", "--admin-port", "0"],
                                                  environment: server.environment.merging(["WARREN_NOTIFY_URL": standIn.url,
                                                                                           "WARREN_ADMIN_HOST": "127.0.0.1"]) { $1 })
                defer { consumer.signal(SIGKILL) }
                try await TestServices.waitUntil(timeout: .seconds(30), "the message arrived") {
                    try await standIn.received().deliveries(key: "api-1") == 1
                }
                #expect(try await standIn.received().requests(key: "api-1").first?.body == ["to": "ada@example.com", "subject": "Hi", "body": "Hello"])
                consumer.signal(SIGTERM)
                #expect(try await consumer.wait(timeout: .seconds(30)) == 0)
            }
        }
    }
}
