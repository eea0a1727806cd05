import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// Schedules that no longer evaluate (a zone gone from the time-zone data, a stored expression
/// that does not parse), against a real `scheduler` on an injected clock, a real `producer
/// serve`, the broker and Postgres: they are disabled with their errors, shown over HTTP, the
/// CLI and `/status`, and never hold back a schedule that works.
@Suite(.enabled(if: TestServices.enabled))
struct BrokenScheduleTests {
    static let zoneReason = "time_zone: unknown time zone 'Mars/Olympus' (use an IANA name such as Europe/London)"
    static let cronReason = "cron 'nonsense': expression: expected 5 fields (minute hour day-of-month month day-of-week), got 1"

    @Test func aHundredSchedulesThatNoLongerEvaluateAreDisabledWithTheirReasonsAndTheGoodOneStillFires() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "premium", scopes: "schedules:write")
            let clockFile = FileManager.default.temporaryDirectory.appendingPathComponent("warren-clock-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: clockFile) }
            func setClock(_ seconds: Int64) throws {
                try Data(Timestamp(microseconds: seconds * 1_000_000).iso8601.utf8).write(to: clockFile, options: .atomic)
            }
            var environment = server.environment
            environment["WARREN_ADMIN_HOST"] = "127.0.0.1"

            // The good schedule, as a user adds it; then 100 more, broken afterwards in the
            // database as a tzdata update or a bad write would, and due an hour before it, so
            // they come first in the leader's order (and fill its batch of 100).
            let added = try await Products.run("scheduler", ["schedules", "add", "--tenant", "acme", "--name", "good",
                                                             "--cron", "* * * * *", "--tz", "UTC", "--type", "noop", "--tier", "premium"],
                                               environment: environment)
            #expect(added.status == 0, "\(added.stderr)")
            let first = try await server.withDatabase { pool in
                let store = ScheduleStore(pool: pool)
                for index in 0..<100 {
                    try await store.put(tenant: "acme", name: "broken-\(index)", cron: "0 9 * * *", timeZone: "Europe/London",
                                        jobType: "noop", tier: .premium, payload: "{}", now: .now())
                }
                let first = try #require(try await store.get(tenant: "acme", name: "good")).nextFireAt
                try await pool.query("""
                    UPDATE schedules SET next_fire_at = $1,
                        time_zone = CASE WHEN split_part(name, '-', 2)::int < 50 THEN 'Mars/Olympus' ELSE time_zone END,
                        cron = CASE WHEN split_part(name, '-', 2)::int >= 50 THEN 'nonsense' ELSE cron END
                    WHERE name LIKE 'broken-%'
                    """, [Timestamp(microseconds: first.microseconds - 3_600_000_000)])
                return first.microseconds / 1_000_000
            }

            try setClock(first + 5)
            let scheduler = try RunningProduct("scheduler", ["--admin-port", "0", "--clock-file", clockFile.path], environment: environment)
            defer { scheduler.signal(SIGKILL) }
            let adminPort = try await scheduler.listeningPort("admin_port")
            func status() async -> [String: Any] {
                guard let (_, _, body) = try? await HTTP.request("GET", "http://127.0.0.1:\(adminPort)/status") else { return [:] }
                return HTTP.object(body)
            }

            // The good one fires: its fire row published, its job on the queue.
            try await TestServices.waitUntil(timeout: .seconds(30), "the good schedule's job is on the queue") {
                try await connection.withControl { try $0.readyCount(Tier.premium) } == 1
            }
            try await TestServices.waitUntil(timeout: .seconds(10), "the good schedule's fire is marked published") {
                try await server.withDatabase { pool in
                    try await pool.query("""
                        SELECT s.name, coalesce(d.state, 'not in the outbox')
                        FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id LEFT JOIN delayed_jobs d ON d.job_id = f.job_id
                        """).rows.map { "\(try $0.string(0)) \(try $0.string(1))" }
                } == ["good published"]
            }
            let deliveries = try await connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 10)
            var iterator = deliveries.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            let job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
            let firstLocal = WallClock.iso8601(first, in: TimeZone(identifier: "UTC")!)
            #expect(job.type == "noop" && job.tenant == "acme" && job.idempotencyKey?.hasSuffix(firstLocal) == true,
                    "\(job.idempotencyKey ?? "-")")
            try await connection.ack(delivery)

            // The hundred are disabled, each with its error, in the database...
            let stored = try await server.withDatabase { pool in
                try await pool.query("SELECT name, enabled, disabled_reason, disabled_at IS NOT NULL FROM schedules ORDER BY name").rows
                    .map { (try $0.string(0), try $0.bool(1), $0[2], try $0.bool(3)) }
            }
            #expect(stored.count == 101)
            for (name, enabled, reason, stamped) in stored {
                if name == "good" {
                    #expect(enabled && reason == nil && !stamped)
                    continue
                }
                let index = try #require(Int(name.dropFirst("broken-".count)))
                #expect(!enabled && stamped, "\(name)")
                #expect(reason == (index < 50 ? Self.zoneReason : Self.cronReason), "\(name): \(reason ?? "nil")")
            }

            // ...over HTTP (the list and one)...
            let (listed, _, listBody) = try await server.request("GET", "/v1/schedules", token: token, contentType: nil)
            #expect(listed == 200, "\(listBody)")
            let schedules = try #require(HTTP.object(listBody)["schedules"] as? [[String: Any]])
            #expect(schedules.count == 101)
            let disabledOverHTTP = schedules.filter { $0["disabled_reason"] is String }
            #expect(disabledOverHTTP.count == 100)
            #expect(disabledOverHTTP.allSatisfy { $0["enabled"] as? Bool == false && $0["disabled_at"] is String
                && ($0["next_fires"] as? [Any])?.isEmpty == true })
            let good = try #require(schedules.first { $0["name"] as? String == "good" })
            #expect(good["disabled_reason"] is NSNull && good["disabled_at"] is NSNull && good["enabled"] as? Bool == true)
            let (one, _, oneBody) = try await server.request("GET", "/v1/schedules/broken-7", token: token, contentType: nil)
            #expect(one == 200 && HTTP.object(oneBody)["disabled_reason"] as? String == Self.zoneReason, "\(oneBody)")

            // ...on the command line...
            let list = try await Products.run("scheduler", ["schedules", "list", "--tenant", "acme"], environment: environment)
            #expect(list.status == 0, "\(list.stderr)")
            let lines = list.stdout.split(separator: "\n")
                .map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
            #expect(lines.first?.last == "disabled_reason" && lines.count == 102)
            let reasons = Dictionary(lines.dropFirst().map { ($0[1], $0.last ?? "") }, uniquingKeysWith: { $1 })
            #expect(reasons["good"] == "-")
            #expect(reasons["broken-3"] == Self.zoneReason && reasons["broken-77"] == Self.cronReason)
            #expect(reasons.values.filter { $0 != "-" }.count == 100)

            // ...and on the scheduler's /status: the count and the latest few.
            try await TestServices.waitUntil(timeout: .seconds(10), "/status counts the disabled schedules") {
                await status()["schedules_disabled"] as? Int == 100
            }
            let latest = try #require(await status()["schedules_disabled_latest"] as? [[String: Any]])
            #expect(latest.count == 5 && latest.allSatisfy {
                [Self.zoneReason, Self.cronReason].contains($0["reason"] as? String ?? "") && $0["disabled_at"] is String
            }, "\(latest)")

            // Writing one again with an expression and zone that evaluate re-enables it: over
            // HTTP, and with the CLI.
            let (put, _, putBody) = try await server.request("PUT", "/v1/schedules/broken-3", token: token,
                                                             body: #"{"cron":"* * * * *","time_zone":"UTC","type":"noop"}"#)
            #expect(put == 200, "\(putBody)")
            #expect(HTTP.object(putBody)["disabled_reason"] is NSNull && HTTP.object(putBody)["enabled"] as? Bool == true, "\(putBody)")
            let readd = try await Products.run("scheduler", ["schedules", "add", "--tenant", "acme", "--name", "broken-60",
                                                             "--cron", "* * * * *", "--tz", "UTC", "--type", "noop", "--tier", "premium"],
                                               environment: environment)
            #expect(readd.status == 0, "\(readd.stderr)")
            let rewritten = try await server.withDatabase { pool in
                try await pool.query("""
                    SELECT max(next_fire_at), count(*) FILTER (WHERE enabled AND disabled_reason IS NULL AND disabled_at IS NULL)
                    FROM schedules WHERE name IN ('broken-3', 'broken-60')
                    """).rows.first.map { (try $0.timestamp(0).microseconds / 1_000_000, try $0.int(1)) }
            }
            let (nextFire, reenabled) = try #require(rewritten)
            #expect(reenabled == 2)
            try await TestServices.waitUntil(timeout: .seconds(15), "/status counts 98 disabled") {
                await status()["schedules_disabled"] as? Int == 98
            }
            // Both fire again at their next minute (as does the good one).
            try setClock(nextFire + 5)
            try await TestServices.waitUntil(timeout: .seconds(30), "the re-enabled schedules fired") {
                try await server.withDatabase { pool in
                    try await pool.query("""
                        SELECT count(DISTINCT s.name)
                        FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id JOIN delayed_jobs d ON d.job_id = f.job_id
                        WHERE d.state = 'published' AND s.name IN ('broken-3', 'broken-60')
                        """).rows.first?.int(0)
                } == 2
            }
            let stillDisabled = try await server.withDatabase { pool in
                try await pool.query("SELECT count(*) FROM schedules WHERE NOT enabled AND disabled_reason IS NOT NULL").rows.first?.int(0)
            }
            #expect(stillDisabled == 98)
            scheduler.signal(SIGTERM)
            #expect(try await scheduler.wait(timeout: .seconds(20)) == 0)
        }
    }
}
