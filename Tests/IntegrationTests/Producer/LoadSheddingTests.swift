import Foundation
import Synchronization
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport

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
            #expect(metrics.contains(#"warren_http_shed_total{tier="enterprise",reason="backlog"}"#))
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

    /// What the consumers would send on `warren.control`, as a test sets it: sent every 200 ms
    /// (a consumer reports every 500 ms) until the task is cancelled.
    final class Reporter: Sendable {
        let reports = Mutex<[PressureReport]>([])
        /// Rounds of reports the broker confirmed.
        let rounds = Atomic(0)
        func set(_ reports: [PressureReport]) { self.reports.withLock { $0 = reports } }

        func run(_ connection: AMQPConnection) -> Task<Void, Never> {
            Task {
                while !Task.isCancelled {
                    let messages = reports.withLock { $0 }.map { ControlMessage.pressure($0).outgoing }
                    if !messages.isEmpty, await connection.publish(messages).allSatisfy({ (try? $0.get()) != nil }) {
                        rounds.add(1, ordering: .relaxed)
                    }
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
        }
    }

    @Test func whileAPaidTierIsBehindItsTargetFreeIsShedThenPremiumAndEnterpriseNever() async throws {
        var extra = Self.thresholds
        extra["WARREN_TIER_TARGET_MS_ENTERPRISE"] = "100"
        extra["WARREN_TIER_TARGET_MS_PREMIUM"] = "200"
        try await APIServer.with(extra: extra) { server, connection, _ in
            var tokens: [Tier: String] = [:]
            for tier in Tier.allCases { tokens[tier] = try await server.token(tier: tier.rawValue, scopes: "jobs:write") }
            try await waitFor([.enterprise: 202, .premium: 202, .free: 202], server, tokens, "nothing is shed before any report")
            // Bad control messages are skipped, and the reports after them still count.
            let junk = [Array("not json".utf8), Array(#"{"action":"pressure","tier":"enterprise","p99_ms":"fast"}"#.utf8)]
            for body in junk {
                for result in await connection.publish([AMQPOutgoingMessage(exchange: Topology.controlExchange, routingKey: "", body: body, mandatory: false)]) {
                    try result.get()
                }
            }
            let reporter = Reporter()
            let reporting = reporter.run(connection)
            defer { reporting.cancel() }

            // An enterprise consumer with room whose jobs start 150 ms after they were enqueued.
            reporter.set([PressureReport(tier: .enterprise, consumerID: "e1", p99Milliseconds: 150, jobs: 40)])
            try await waitFor([.enterprise: 202, .premium: 202, .free: 503], server, tokens, "free is shed for enterprise's latency")
            let (_, _, body) = try await server.request("POST", "/v1/jobs", token: tokens[.free], body: #"{"type":"noop"}"#)
            #expect(body.contains("start-latency target"), "\(body)")
            let metrics = try await server.request("GET", "/metrics").2
            #expect(metrics.contains(#"warren_shedding_for_latency{tier="free"} 1"#), "\(metrics)")
            #expect(metrics.contains(#"warren_tier_pressure_ms{tier="enterprise"} 150"#), "\(metrics)")
            #expect(metrics.contains(#"warren_tier_target_ms{tier="enterprise"} 100"#), "\(metrics)")
            #expect(metrics.contains(#"warren_http_shed_total{tier="free",reason="latency"}"#), "\(metrics)")

            // Over twice its target: premium gives way too; enterprise is still served.
            reporter.set([PressureReport(tier: .enterprise, consumerID: "e1", p99Milliseconds: 250, jobs: 40)])
            try await waitFor([.enterprise: 202, .premium: 503, .free: 503], server, tokens, "then premium")

            // The same latency from a saturated consumer (its own slots hold its jobs back):
            // refusing the tiers below would not start them sooner, nothing is shed.
            reporter.set([PressureReport(tier: .enterprise, consumerID: "e1", p99Milliseconds: 250, jobs: 40, saturated: true)])
            try await waitFor([.enterprise: 202, .premium: 202, .free: 202], server, tokens, "a saturated tier sheds nothing")

            // Premium behind its own target: only free gives way.
            reporter.set([PressureReport(tier: .premium, consumerID: "p1", p99Milliseconds: 300, jobs: 40)])
            try await waitFor([.enterprise: 202, .premium: 202, .free: 503], server, tokens, "premium's latency sheds free")

            // The reports stop (no job of a paid tier started lately): they age out, all served.
            reporter.set([])
            try await waitFor([.enterprise: 202, .premium: 202, .free: 202], server, tokens, "served again once the reports stop")
        }
    }

    @Test func latencySheddingTurnsOffWithZero() async throws {
        var extra = Self.thresholds
        extra["WARREN_TIER_TARGET_MS_ENTERPRISE"] = "100"
        extra["WARREN_SHED_BACKLOG_FREE"] = "0"
        extra["WARREN_SHED_ON_LATENCY"] = "0"
        try await APIServer.with(extra: extra) { server, connection, _ in
            let free = try await server.token(tier: "free", scopes: "jobs:write")
            let premium = try await server.token(tier: "premium", scopes: "jobs:write")
            let reporter = Reporter()
            reporter.set([PressureReport(tier: .enterprise, consumerID: "e1", p99Milliseconds: 5_000, jobs: 40)])
            let reporting = reporter.run(connection)
            defer { reporting.cancel() }
            // Premium shed by the backlog: the server is reading the broker; and five more
            // rounds of reports of an enterprise 50x over its target: it would have heard them.
            try await fill(connection, .enterprise, 1_200)
            try await TestServices.waitUntil(timeout: .seconds(20), "premium is shed for the backlog") {
                try await server.request("POST", "/v1/jobs", token: premium, body: #"{"type":"noop"}"#).0 == 503
            }
            let heard = reporter.rounds.load(ordering: .relaxed) + 5
            try await TestServices.waitUntil(timeout: .seconds(20), "five more rounds of reports") {
                reporter.rounds.load(ordering: .relaxed) >= heard
            }
            let (status, _, body) = try await server.request("POST", "/v1/jobs", token: free, body: #"{"type":"noop"}"#)
            #expect(status == 202, "\(body)")
            let metrics = try await server.request("GET", "/metrics").2
            #expect(!metrics.contains("warren_shedding_for_latency"), "\(metrics)")
        }
    }
}
