import Foundation
import Testing

/// Slow jobs (past their type's threshold) and slow requests (past `WARREN_SLOW_REQUEST_MS`)
/// are counted in the services' `/metrics`, read as Prometheus reads them.
@Suite(.enabled(if: TestServices.enabled))
struct SlowWarningTests {
    @Test func aJobPastItsTypesThresholdAndARequestPastTheLimitAreCounted() async throws {
        try await APIServer.with(extra: ["WARREN_SLOW_REQUEST_MS": "1"]) { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let consumer = try RunningProduct("consumer", ["--tier", "free"], environment: server.environment.merging([
                "WARREN_SLOW_JOB_SECONDS_BY_TYPE": "sleep=1", "WARREN_SLOW_JOB_SECONDS": "0",
            ]) { $1 })
            defer { consumer.signal(SIGKILL) }
            let admin = try await consumer.listeningPort("admin_port")
            for body in [#"{"type":"sleep","payload":{"ms":2500}}"#, #"{"type":"sleep","payload":{"ms":10}}"#, #"{"type":"noop"}"#] {
                #expect(try await server.request("POST", "/v1/jobs", token: token, body: body).0 == 202)
            }
            try await TestServices.waitUntil(timeout: .seconds(30), "the long sleep is counted slow, once") {
                let metrics = try await HTTP.request("GET", "http://127.0.0.1:\(admin)/metrics").2
                return metrics.contains(#"warren_consumer_slow_jobs_total{tier="free",type="sleep"} 1"#)
            }
            let metrics = try await HTTP.request("GET", "http://127.0.0.1:\(admin)/metrics").2
            #expect(!metrics.contains(#"type="noop""#), "a type without a threshold (the default set to 0) is never slow")
            // Accepting a job takes more than 1 ms (a quorum queue's confirm waits for its log on
            // disk): past the limit.
            let served = try await server.request("GET", "/metrics").2
            #expect(served.contains(#"warren_http_slow_requests_total{route="/v1/jobs"}"#),
                    "\(served.split(separator: "\n").filter { $0.contains("slow") })")
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }
}
