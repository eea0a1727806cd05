import Foundation
import Testing
import WarrenPostgres

/// A token's intake limit holds across `producer serve` replicas: two servers on one database
/// share the token's bucket (`rate_buckets`), so together they admit what one would.
@Suite(.enabled(if: TestServices.enabled))
struct SharedRateLimitTests {
    @Test func twoReplicasTogetherAdmitTheTokensRate() async throws {
        let (rate, burst) = (10.0, 10.0)
        // The lease may take 10 s here: on a loaded CI machine the default 500 ms let the
        // replicas fall back to their own buckets (61 admitted where 56 were allowed). The
        // fallback has a test of its own below.
        try await APIServer.with(extra: ["WARREN_RATE_LIMIT_FREE": "\(Int(rate)),\(Int(burst))",
                                         "WARREN_RATE_LIMIT_LEASE_TIMEOUT_MS": "10000"]) { server, _, _ in
            let second = try RunningProduct("producer", ["serve"], environment: server.environment)
            defer { second.signal(SIGKILL) }
            let secondBase = "http://127.0.0.1:\(try await second.listeningPort("http_port", timeout: .seconds(90)))"
            try await TestServices.waitUntil(timeout: .seconds(20), "the second replica answers /healthz") {
                (try? await HTTP.request("GET", secondBase + "/healthz").0) == 200
            }
            let token = try await server.token(tier: "free", scopes: "jobs:write")
            let bases = [server.base, secondBase]

            // 16 clients, half on each replica, as fast as they are answered for 4 s.
            let started = ContinuousClock.now
            let statuses = try await withThrowingTaskGroup(of: [Int].self) { group in
                for client in 0..<16 {
                    group.addTask {
                        var seen: [Int] = []
                        while ContinuousClock.now - started < .seconds(4) {
                            seen.append(try await HTTP.request("POST", bases[client % 2] + "/v1/jobs", token: token,
                                                               body: #"{"type":"noop"}"#).0)
                        }
                        return seen
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            let elapsed = ContinuousClock.now - started
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let accepted = statuses.count { $0 == 202 }
            let allowed = burst + rate * seconds
            #expect(Set(statuses).isSubset(of: [202, 429]), "\(Set(statuses))")
            #expect(statuses.count > 2 * Int(allowed), "the clients asked for far more than the limit: \(statuses.count)")
            // Each replica alone would admit the whole of it: 2x on the old per-process buckets.
            #expect(Double(accepted) <= allowed.rounded(.down), "\(accepted) accepted in \(elapsed); the limit allows \(allowed)")
            #expect(Double(accepted) >= 0.9 * allowed - 1, "\(accepted) accepted in \(elapsed); the limit allows \(allowed)")

            second.signal(SIGTERM)
            #expect(try await second.wait(timeout: .seconds(20)) == 0, "graceful stop")
        }
    }

    @Test func whenPostgresRefusesTheSharedBucketEachReplicaLimitsOnItsOwn() async throws {
        try await APIServer.with(extra: ["WARREN_RATE_LIMIT_FREE": "0.01,3"]) { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write")
            // The bucket's table gone: every take fails (42P01) while the rest still works.
            try await server.withDatabase { pool in _ = try await pool.query("DROP TABLE rate_buckets") }
            var statuses: [Int] = []
            for _ in 0..<5 {
                statuses.append(try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"}"#).0)
            }
            #expect(statuses == [202, 202, 202, 429, 429], "the replica's own bucket of 3 decides: \(statuses)")
            let metrics = try await server.request("GET", "/metrics").2
            #expect(metrics.contains("warren_rate_limit_fallback_total"), "\(metrics)")
        }
    }
}
