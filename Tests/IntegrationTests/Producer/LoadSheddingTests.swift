import Common
import Foundation
import Testing

/// Shedding at the front door by tier: `producer serve` reads the tier queues' backlogs from the
/// broker and refuses new work of the lowest tiers first (503 `shed`). The queues are filled
/// straight on the broker (no consumer runs), with thresholds small enough to reach. Each probe
/// that is accepted adds a job too: the fills leave hundreds of jobs of room either way.
@Suite(.enabled(if: TestServices.enabled))
struct LoadSheddingTests {
    static let thresholds = ["WARREN_SHED_BACKLOG_FREE": "500", "WARREN_SHED_BACKLOG_PREMIUM": "1000",
                             "WARREN_SHED_BACKLOG_ENTERPRISE": "2000", "WARREN_SHED_POLL_MS": "50"]

    /// Puts `count` jobs of `tier` on its queue, confirmed.
    func fill(_ connection: AMQPConnection, _ tier: Tier, _ count: Int) async throws {
        let messages = (0..<count).map { _ in JobEnvelope(type: "noop", tier: tier, payload: Array("{}".utf8)).outgoingMessage }
        for result in await connection.publish(messages) { try result.get() }
    }

    func depth(_ connection: AMQPConnection, _ tier: Tier) async throws -> Int {
        try await connection.withControl { control in try control.readyCount(tier) }
    }

    /// The status each tier's `POST /v1/jobs` gets right now, with the shed answers' bodies.
    func answers(_ server: APIServer, _ tokens: [Tier: String]) async throws -> [Tier: Int] {
        var statuses: [Tier: Int] = [:]
        for tier in Tier.allCases {
            let (status, headers, body) = try await server.request("POST", "/v1/jobs", token: tokens[tier], body: #"{"type":"noop"}"#)
            statuses[tier] = status
            if status == 503 {
                #expect(body.contains(#""code":"shed""#), "\(body)")
                #expect(headers["retry-after"] == "5", "\(headers)")
            }
        }
        return statuses
    }

    /// Waits until the server answers every tier as `expected` (it polls the backlogs every
    /// 50 ms) and returns the statuses it saw last.
    func waitFor(_ expected: [Tier: Int], _ server: APIServer, _ tokens: [Tier: String], _ what: String) async throws {
        var last: [Tier: Int] = [:]
        let held = try await TestServices.holds(within: .seconds(20)) {
            last = try await answers(server, tokens)
            return last == expected
        }
        #expect(held, "\(what): wanted \(expected), got \(last)")
    }

    @Test func freeIsShedFirstThenPremiumAndEnterpriseLast() async throws {
        try await APIServer.with(extra: Self.thresholds) { server, connection, _ in
            var tokens: [Tier: String] = [:]
            for tier in Tier.allCases { tokens[tier] = try await server.token(tier: tier.rawValue, scopes: "jobs:write") }
            try await waitFor([.enterprise: 202, .premium: 202, .free: 202], server, tokens, "nothing is shed while the queues are empty")

            // 750 enterprise jobs waiting: free (which counts every tier above it) gives way.
            try await fill(connection, .enterprise, 750)
            try await waitFor([.enterprise: 202, .premium: 202, .free: 503], server, tokens, "free is shed first")
            // 1,500 and more: premium too; enterprise is still served.
            try await fill(connection, .enterprise, 750)
            try await waitFor([.enterprise: 202, .premium: 503, .free: 503], server, tokens, "then premium")
            try await fill(connection, .enterprise, 600)
            try await waitFor([.enterprise: 503, .premium: 503, .free: 503], server, tokens, "enterprise last")

            // A shed request publishes nothing and records nothing.
            let before = try await (depth(connection, .enterprise), depth(connection, .premium), depth(connection, .free))
            let rowsBefore = try await server.withDatabase { pool in try await pool.query("SELECT count(*) FROM api_jobs").rows.first?.int(0) }
            for tier in Tier.allCases {
                let (status, _, body) = try await server.request("POST", "/v1/jobs", token: tokens[tier],
                                                                 body: #"{"type":"noop","idempotency_key":"shed-1"}"#)
                #expect(status == 503 && body.contains(#""code":"shed""#), "\(body)")
                let batch = try await server.request("POST", "/v1/batches", token: tokens[tier], body: #"{"jobs":[{"type":"noop"}]}"#)
                #expect(batch.0 == 503 && batch.2.contains(#""code":"shed""#), "\(batch.2)")
            }
            let after = try await (depth(connection, .enterprise), depth(connection, .premium), depth(connection, .free))
            #expect(before == after, "nothing published while shed: \(before) then \(after)")
            let rowsAfter = try await server.withDatabase { pool in try await pool.query("SELECT count(*) FROM api_jobs").rows.first?.int(0) }
            #expect(rowsBefore == rowsAfter, "nothing recorded while shed")

            // Bad input still gets its own answer, and a job for later is not shed (it adds
            // nothing to a queue now).
            let bad = try await server.request("POST", "/v1/jobs", token: tokens[.free], body: #"{"type":"no such type"}"#)
            #expect(bad.0 == 422, "\(bad.2)")
            let later = try await server.request("POST", "/v1/jobs", token: tokens[.free], body: #"{"type":"noop","delay_seconds":600}"#)
            #expect(later.0 == 202 && later.2.contains(#""status":"scheduled""#), "\(later.2)")

            // /metrics shows the rule's inputs and its decision.
            let metrics = try await server.request("GET", "/metrics").2
            #expect(metrics.contains(#"warren_shedding{tier="free"} 1"#), "\(metrics)")
            #expect(metrics.contains(#"warren_shed_threshold{tier="premium"} 1000"#))
            #expect(metrics.contains(#"warren_http_shed_total{tier="enterprise"}"#))
            #expect(metrics.contains(#"warren_tier_backlog{tier="enterprise"}"#))

            // Drained below 90% of each threshold, every tier is served again.
            for tier in Tier.allCases { _ = try await connection.withControl { control in try control.purgeQueue(tier.queueName) } }
            try await waitFor([.enterprise: 202, .premium: 202, .free: 202], server, tokens, "served again once the queues drained")
        }
    }

    @Test func aFreeBacklogShedsOnlyFree() async throws {
        try await APIServer.with(extra: Self.thresholds) { server, connection, _ in
            var tokens: [Tier: String] = [:]
            for tier in Tier.allCases { tokens[tier] = try await server.token(tier: tier.rawValue, scopes: "jobs:write") }
            // Far past every threshold, but all free work: the paid tiers do not pay for it.
            try await fill(connection, .free, 3_000)
            try await waitFor([.enterprise: 202, .premium: 202, .free: 503], server, tokens, "only free is shed")
        }
    }

    @Test func sheddingTurnsOffPerTierWithZero() async throws {
        var extra = Self.thresholds
        extra["WARREN_SHED_BACKLOG_FREE"] = "0"
        try await APIServer.with(extra: extra) { server, connection, _ in
            var tokens: [Tier: String] = [:]
            for tier in Tier.allCases { tokens[tier] = try await server.token(tier: tier.rawValue, scopes: "jobs:write") }
            try await fill(connection, .enterprise, 1_500)
            // Premium is shed (1,500 >= 1,000), so the server has read the backlog; free, off, is not.
            try await waitFor([.enterprise: 202, .premium: 503, .free: 202], server, tokens, "free's shedding is off")
        }
    }

    @Test func withNoAnswerFromTheBrokerNothingIsShed() async throws {
        try await RelayedServer.with(extra: Self.thresholds) { server, relay, _, _, vhostURL in
            let token = try await server.token(tier: "free", scopes: "jobs:write")
            try await TestServices.withConnection("test fill", url: vhostURL) { connection in try await fill(connection, .free, 3_000) }
            try await TestServices.waitUntil(timeout: .seconds(20), "free is shed") {
                try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"}"#).2.contains(#""code":"shed""#)
            }
            // The serve's broker link is cut: its backlog count goes stale, and a stale count
            // sheds nothing (the publish then answers for itself).
            relay.cut()
            var last = ""
            let cleared = try await TestServices.holds(within: .seconds(20)) {
                let (status, _, body) = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"}"#)
                last = "\(status) \(body)"
                return status == 503 && !body.contains(#""code":"shed""#)
            }
            #expect(cleared, "still answered \(last)")
        }
    }
}
