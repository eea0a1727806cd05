import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenSupport

/// `producer serve` and `producer tokens` as users run them, over real HTTP, against the real
/// broker (a vhost of its own) and Postgres (a schema of its own).
@Suite(.enabled(if: TestServices.enabled))
struct HTTPAPITests {
    func withServer<T: Sendable>(extra: [String: String] = [:], _ body: (APIServer, AMQPConnection) async throws -> T) async throws -> T {
        try await APIServer.with(extra: extra) { server, connection, _ in try await body(server, connection) }
    }

    @Test func aConcurrencyKeyTravelsToTheBrokerAndABadLimitIsRefusedPublishingNothing() async throws {
        try await withServer { server, connection in
            let token = try await server.token(tier: "premium", scopes: "jobs:write")
            for bad in [#"{"type":"noop","concurrency_limit":2}"#, #"{"type":"noop","concurrency_key":"k","concurrency_limit":0}"#,
                        #"{"type":"noop","concurrency_key":"k","concurrency_limit":"2"}"#, #"{"type":"noop","concurrency_key":""}"#] {
                let (status, _, body) = try await server.request("POST", "/v1/jobs", token: token, body: bad)
                #expect(status == 422 && body.contains("concurrency_"), "\(bad): \(body)")
            }
            #expect(try await connection.withControl { try $0.readyCount(.premium) } == 0, "a refused request published nothing")
            let (status, _, body) = try await server.request("POST", "/v1/jobs", token: token,
                                                            body: #"{"type":"noop","concurrency_key":"ingest:acme","concurrency_limit":3}"#)
            #expect(status == 202, "\(body)")
            let deliveries = try await connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 1)
            var iterator = deliveries.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            #expect(delivery.properties.headers[JobEnvelope.Header.concurrencyKey]?.stringValue == "ingest:acme")
            let job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
            #expect(job.concurrencyKey == "ingest:acme" && job.concurrencyLimit == 3)
        }
    }

    @Test func acceptedJobsAreConfirmedInTheTokensTierWithTheRequestIdAsCorrelation() async throws {
        try await withServer { server, connection in
            let token = try await server.token(tier: "premium", scopes: "jobs:write")
            let (status, headers, body) = try await server.request("POST", "/v1/jobs", token: token,
                                                                  body: #"{"type":"noop","payload":{"n":1},"idempotency_key":"k-1"}"#,
                                                                  headers: ["X-Request-Id": "req-42"])
            #expect(status == 202, "\(body)")
            #expect(headers["x-request-id"] == "req-42")
            #expect(body.contains(#""status":"queued""#) && body.contains(#""tier":"premium""#))
            let deliveries = try await connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 1)
            var iterator = deliveries.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            let job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
            #expect(body.contains(job.id.lowercasedString))
            #expect(job.correlationID == "req-42")
            #expect(job.tenant == "acme")
            #expect(job.idempotencyKey == "k-1")
            #expect(job.payload == Array(#"{"n":1}"#.utf8))
            try await connection.ack(delivery)
        }
    }

    @Test func badRequestsGetPreciseErrorsAndPublishNothing() async throws {
        try await withServer { server, connection in
            let writer = try await server.token(tier: "free", scopes: "jobs:write")
            let reader = try await server.token(tier: "free", scopes: "jobs:read")
            let cases: [(String, Int, String?, String?, String?)] = [
                ("no token", 401, nil, "application/json", #"{"type":"noop"}"#),
                ("unknown token", 401, "wrn_nope", "application/json", #"{"type":"noop"}"#),
                ("missing scope", 403, reader, "application/json", #"{"type":"noop"}"#),
                ("wrong content type", 415, writer, "text/plain", #"{"type":"noop"}"#),
                ("invalid JSON", 400, writer, "application/json", #"{"type":"#),
                ("too large", 413, writer, "application/json", #"{"type":"noop","payload":"\#(String(repeating: "x", count: 3_000))"}"#),
                ("unknown type", 422, writer, "application/json", #"{"type":"no.such"}"#),
                ("missing type", 422, writer, "application/json", #"{"payload":{}}"#),
                ("unknown field", 422, writer, "application/json", #"{"type":"noop","tier":"enterprise"}"#),
                ("bad delay", 422, writer, "application/json", #"{"type":"noop","delay_seconds":"soon"}"#),
            ]
            for (name, expected, token, contentType, body) in cases {
                let (status, headers, text) = try await server.request("POST", "/v1/jobs", token: token, contentType: contentType, body: body)
                #expect(status == expected, "\(name): \(text)")
                #expect(text.hasPrefix(#"{"error":{"code":"#), "\(name): \(text)")
                if expected == 401 { #expect(headers["www-authenticate"]?.hasPrefix("Bearer") == true, "\(name)") }
            }
            let revoked = try await Products.run("producer", ["tokens", "revoke", String(writer.prefix(12))], environment: server.environment)
            #expect(revoked.status == 0, "\(revoked.stderr)")
            // Valid tokens are remembered for WARREN_TOKEN_CACHE_SECONDS (2 s): revocation takes hold within that.
            let revokedAt = ContinuousClock.now
            try await TestServices.waitUntil(timeout: .seconds(10), "the revoked token is refused") {
                try await server.request("GET", "/v1/jobs/\(UUID().uuidString)", token: writer, contentType: nil).0 == 401
            }
            #expect(ContinuousClock.now - revokedAt < .seconds(4), "within the cache's 2 s (and some slack)")
            let refused = try await server.request("POST", "/v1/jobs", token: writer, body: #"{"type":"noop"}"#)
            #expect(refused.0 == 401 && refused.2.contains("revoked"), "\(refused.2)")
            let depths = try await connection.withControl { control in
                try Tier.allCases.map { try control.readyCount($0) }
            }
            #expect(depths == [0, 0, 0], "nothing was published")
        }
    }

    @Test func anIdempotencyKeyReturnsTheFirstJobAndPublishesOnce() async throws {
        try await withServer { server, connection in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let body = #"{"type":"noop","idempotency_key":"order-7"}"#
            let first = try await server.request("POST", "/v1/jobs", token: token, body: body)
            let second = try await server.request("POST", "/v1/jobs", token: token, body: body)
            #expect(first.0 == 202, "\(first.2)")
            #expect(second.0 == 200, "\(second.2)")
            let id = try #require(first.2.split(separator: "\"").dropFirst(3).first.map(String.init))
            #expect(second.2.contains(id) && second.2.contains(#""duplicate":true"#), "\(second.2)")
            // Another key is another job.
            #expect(try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop","idempotency_key":"order-8"}"#).0 == 202)
            let depth = try await connection.withControl { control in try control.readyCount(Tier.free) }
            #expect(depth == 2, "published once per key")
        }
    }

    @Test func statusFollowsTheJobAndStaysWithinItsTenant() async throws {
        try await withServer { server, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:write,jobs:read")
            let writeOnly = try await server.token(tier: "premium", scopes: "jobs:write")
            let other = try await Products.run("producer", ["tokens", "create", "--tenant", "globex", "--tier", "premium",
                                                            "--scopes", "jobs:read"], environment: server.environment)
            let otherToken = other.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let created = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"fail","payload":{"times":1}}"#)
            #expect(created.0 == 202)
            let id = try #require(created.2.split(separator: "\"").dropFirst(3).first.map(String.init))

            let queued = try await server.request("GET", "/v1/jobs/\(id)", token: token, contentType: nil)
            #expect(queued.0 == 200, "\(queued.2)")
            #expect(queued.2.contains(#""status":"queued""#), "\(queued.2)")
            #expect(try await server.request("GET", "/v1/jobs/\(id)", token: otherToken, contentType: nil).0 == 404, "another tenant's job")
            #expect(try await server.request("GET", "/v1/jobs/\(id)", token: writeOnly, contentType: nil).0 == 403)
            #expect(try await server.request("GET", "/v1/jobs/\(UUID().uuidString)", token: token, contentType: nil).0 == 404)
            #expect(try await server.request("GET", "/v1/jobs/not-a-uuid", token: token, contentType: nil).0 == 404)

            // A consumer runs it (one retry through the 1 s queue), and the status says so.
            var environment = server.environment
            environment["WARREN_RETRY_BASE_SECONDS"] = "0.01"
            let consumer = try RunningProduct("consumer", ["--tier", "premium"], environment: environment)
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(20), "the job succeeded") {
                try await server.request("GET", "/v1/jobs/\(id)", token: token, contentType: nil).2.contains(#""status":"succeeded""#)
            }
            let done = try await server.request("GET", "/v1/jobs/\(id)", token: token, contentType: nil).2
            #expect(done.contains(#""attempts":2"#) && done.contains(#""result":{"attempts":2}"#), "\(done)")
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }

    @Test func overTheTiersRateLimitA429SaysWhenToComeBack() async throws {
        // A token every 5 s, two at most: three requests on a loaded machine can take longer
        // than 1 s (with "1,2" a token came back before the third and it got 202).
        try await withServer(extra: ["WARREN_RATE_LIMIT_FREE": "0.2,2"]) { server, _ in
            let free = try await server.token(tier: "free", scopes: "jobs:write")
            let premium = try await server.token(tier: "premium", scopes: "jobs:write")
            let body = #"{"type":"noop"}"#
            let first = try await server.request("POST", "/v1/jobs", token: free, body: body)
            #expect(first.0 == 202)
            #expect(first.1["ratelimit-limit"] == "2")
            #expect(first.1["ratelimit-remaining"] == "1")
            #expect(try await server.request("POST", "/v1/jobs", token: free, body: body).0 == 202)
            let limited = try await server.request("POST", "/v1/jobs", token: free, body: body)
            #expect(limited.0 == 429, "\(limited.2)")
            #expect(Int(limited.1["retry-after"] ?? "") ?? 0 >= 1)
            #expect(limited.1["ratelimit-remaining"] == "0")
            #expect(limited.2.contains(#""code":"rate_limited""#))
            // Coming back after Retry-After (the client's wait the header asks for) succeeds.
            let retryAfter = try #require(Int(limited.1["retry-after"] ?? ""))
            try await Task.sleep(for: .seconds(retryAfter))
            let again = try await server.request("POST", "/v1/jobs", token: free, body: body)
            #expect(again.0 == 202, "after Retry-After: \(again.2)")
            // Another tenant's token (another tier) has its own bucket.
            #expect(try await server.request("POST", "/v1/jobs", token: premium, body: body).0 == 202)
        }
    }

    @Test func healthReadinessAndMetrics() async throws {
        try await withServer { server, _ in
            #expect(try await server.request("GET", "/healthz").0 == 200)
            #expect(try await server.request("GET", "/readyz").0 == 200)
            #expect(try await server.request("POST", "/v1/jobs", body: "{}").0 == 401)
            let (status, _, metrics) = try await server.request("GET", "/metrics")
            #expect(status == 200)
            #expect(metrics.contains(#"warren_http_requests_total{route="/v1/jobs",status="401"} 1"#), "\(metrics)")
        }
    }
}
