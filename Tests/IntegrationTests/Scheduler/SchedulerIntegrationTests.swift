import Foundation
import Logging
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Cron schedules fired by real `scheduler` processes against the real broker and Postgres,
/// with the time injected through `--clock-file` (never the wall clock): one job per fire with
/// two schedulers, a SIGKILLed leader handing over, and catch-up after downtime.
@Suite(.enabled(if: TestServices.enabled))
struct SchedulerIntegrationTests {
    struct World: Sendable {
        var environment: [String: String]
        var clockFile: URL
        var connection: AMQPConnection
        var pool: PostgresPool

        func setClock(_ seconds: Int64) throws {
            try Data(Timestamp(microseconds: seconds * 1_000_000).iso8601.utf8).write(to: clockFile, options: .atomic)
        }

        func depth(_ tier: Tier) async throws -> Int {
            try await connection.withControl { control in try control.readyCount(tier) }
        }

        /// A `scheduler` on this clock, and its admin port.
        func scheduler(environment: [String: String]? = nil) async throws -> (process: RunningProduct, port: Int) {
            let process = try RunningProduct("scheduler", ["--admin-port", "0", "--clock-file", clockFile.path],
                                             environment: environment ?? self.environment)
            return (process, try await process.listeningPort("admin_port"))
        }

        func status(_ port: Int) async -> [String: Any] {
            guard let (_, _, body) = try? await HTTP.request("GET", "http://127.0.0.1:\(port)/status") else { return [:] }
            return HTTP.object(body)
        }

        func addSchedule(_ arguments: [String]) async throws {
            let added = try await Products.run("scheduler", ["schedules", "add", "--tenant", "acme"] + arguments, environment: environment)
            #expect(added.status == 0, "\(added.stderr)")
        }

        /// Fires by state: `skipped`, or the state of the fire's job in the outbox (`published`
        /// once the broker confirmed it).
        func fireStates() async throws -> [String: Int] {
            var states: [String: Int] = [:]
            for row in try await pool.query("""
                SELECT CASE WHEN f.state = 'skipped' THEN 'skipped' ELSE coalesce(d.state, 'not in the outbox') END, count(*)
                FROM schedule_fires f LEFT JOIN delayed_jobs d ON d.job_id = f.job_id GROUP BY 1
                """).rows {
                states[try row.string(0)] = try row.int(1)
            }
            return states
        }
    }

    func withWorld<T: Sendable>(_ body: (World) async throws -> T) async throws -> T {
        try await TestServices.withVhost { url in
            try await TestServices.withSchema { pool in
                let clockFile = FileManager.default.temporaryDirectory.appendingPathComponent("warren-clock-\(UUID().uuidString)")
                defer { try? FileManager.default.removeItem(at: clockFile) }
                let environment = ["WARREN_AMQP_URL": url, "WARREN_DATABASE_URL": TestServices.databaseURL,
                                   "WARREN_DATABASE_SCHEMA": pool.configuration.searchPath ?? "public", "WARREN_ADMIN_HOST": "127.0.0.1"]
                return try await TestServices.withConnection("test scheduler", url: url) { connection in
                    try await body(World(environment: environment, clockFile: clockFile, connection: connection, pool: pool))
                }
            }
        }
    }

    /// The next 09:00 in New York after the real now: where `schedules add` puts the first fire.
    func nextMorning() throws -> (CronSchedule, Int64) {
        let schedule = try CronSchedule("0 9 * * *", zone: "America/New_York")
        return (schedule, try #require(schedule.next(after: Timestamp.now().microseconds / 1_000_000)))
    }

    @Test func twoSchedulersFireOnceAndAStandbyTakesOverFromAKilledLeader() async throws {
        try await withWorld { world in
            let (schedule, first) = try nextMorning()
            try world.setClock(first - 60)
            try await world.addSchedule(["--name", "morning", "--cron", "0 9 * * *", "--tz", "America/New_York",
                                         "--type", "noop", "--tier", "premium"])
            // Each is killed at the end even if the other fails to start.
            let one = try await world.scheduler()
            defer { one.process.signal(SIGKILL) }
            let other = try await world.scheduler()
            defer { other.process.signal(SIGKILL) }
            let schedulers = [one.process, other.process], ports = [one.port, other.port]
            var leaderIndex = -1
            try await TestServices.waitUntil(timeout: .seconds(20), "one scheduler is leader, the other standby") {
                let leaders = await ports.asyncMap { await world.status($0)["leader"] as? Bool }
                guard leaders.allSatisfy({ $0 != nil }), leaders.filter({ $0 == true }).count == 1 else { return false }
                leaderIndex = leaders.firstIndex(of: true)!
                return true
            }

            try world.setClock(first + 5)
            try await TestServices.waitUntil(timeout: .seconds(20), "the first fire's job is in the queue") {
                try await world.depth(.premium) == 1
            }
            // Both kept ticking past the fire; still one job and one fire row.
            try world.setClock(first + 30)
            try await TestServices.waitUntil(timeout: .seconds(10), "both schedulers ticked after the fire") {
                let ticks = await ports.asyncMap { await world.status($0)["last_tick"] as? String }
                return ticks[leaderIndex] == Timestamp(microseconds: (first + 30) * 1_000_000).iso8601
            }
            #expect(try await world.depth(.premium) == 1)
            let deliveries = try await world.connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 10)
            var iterator = deliveries.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            let job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
            let scheduleID = try #require(try await world.pool.query("SELECT id FROM schedules").rows.first?.uuid(0))
            #expect(job.idempotencyKey == "schedule:\(scheduleID.lowercasedString):\(WallClock.iso8601(first, in: schedule.zone))")
            #expect(job.type == "noop" && job.tenant == "acme" && job.tier == .premium)
            try await world.connection.ack(delivery)

            // The leader dies; the standby takes over and fires the next morning, once.
            schedulers[leaderIndex].signal(SIGKILL)
            let standby = 1 - leaderIndex
            try await TestServices.waitUntil(timeout: .seconds(20), "the standby became leader") {
                await world.status(ports[standby])["leader"] as? Bool == true
            }
            let second = try #require(schedule.next(after: first))
            try world.setClock(second + 5)
            let next = try #require(try await iterator.next())
            let nextJob = try JobEnvelope(properties: next.properties, body: next.body)
            #expect(nextJob.idempotencyKey == "schedule:\(scheduleID.lowercasedString):\(WallClock.iso8601(second, in: schedule.zone))")
            try await world.connection.ack(next)
            // The fire is marked published after the broker's confirm (the delivery can come first).
            try await TestServices.waitUntil(timeout: .seconds(10), "one published fire row per fire, nothing twice") {
                try await world.fireStates() == ["published": 2]
            }
            #expect(try await world.depth(.premium) == 0)
            schedulers[standby].signal(SIGTERM)
            #expect(try await schedulers[standby].wait(timeout: .seconds(20)) == 0)
        }
    }

    @Test func aLeaderThatLosesItsDatabaseStopsFiringAndTheStandbyTakesOver() async throws {
        try await withWorld { world in
            let (_, first) = try nextMorning()
            try world.setClock(first - 60)
            try await world.addSchedule(["--name", "morning", "--cron", "0 9 * * *", "--tz", "America/New_York",
                                         "--type", "noop", "--tier", "premium"])
            // The leader reaches Postgres through a relay the test can cut.
            let databasePort = try #require(URLComponents(string: TestServices.databaseURL)?.port)
            let proxy = try TCPProxy(upstreamPort: databasePort)
            var viaProxy = world.environment
            viaProxy["WARREN_DATABASE_URL"] = TestServices.databaseURL.replacingOccurrences(of: ":\(databasePort)/", with: ":\(proxy.port)/")
            let (leader, leaderPort) = try await world.scheduler(environment: viaProxy)
            defer { leader.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(20), "the first scheduler leads") {
                await world.status(leaderPort)["leader"] as? Bool == true
            }
            let (standby, standbyPort) = try await world.scheduler()
            defer { standby.signal(SIGKILL) }
            let ports = [leaderPort, standbyPort]
            try await TestServices.waitUntil(timeout: .seconds(20), "the second scheduler stands by") {
                await world.status(ports[1])["leader"] as? Bool == false
            }

            proxy.cut()
            let cut = ContinuousClock.now
            try await TestServices.waitUntil(timeout: .seconds(20), "the standby took over") {
                await world.status(ports[1])["leader"] as? Bool == true
            }
            try await TestServices.waitUntil(timeout: .seconds(10), "the old leader knows it no longer leads") {
                await world.status(ports[0])["leader"] as? Bool == false
            }
            TestServices.logger.info("leader handover after a lost database", metadata: ["after_ms": "\((ContinuousClock.now - cut).milliseconds)"])

            try world.setClock(first + 5)
            try await TestServices.waitUntil(timeout: .seconds(20), "the new leader fired") {
                try await world.depth(.premium) == 1
            }
            try world.setClock(first + 30)
            try await TestServices.waitUntil(timeout: .seconds(10), "the new leader ran past the fire") {
                await world.status(ports[1])["last_tick"] as? String == Timestamp(microseconds: (first + 30) * 1_000_000).iso8601
            }
            #expect(try await world.depth(.premium) == 1, "one job for the fire")
            #expect(try await world.fireStates() == ["published": 1])
            let oldTick = await world.status(ports[0])["last_tick"] as? String
            #expect(oldTick == Timestamp(microseconds: (first - 60) * 1_000_000).iso8601, "the old leader ran no round after the cut")
        }
    }

    @Test func theCLIRefusesBadArgumentsNamingThemAndStoresNothing() async throws {
        try await withWorld { world in
            try await world.addSchedule(["--name", "n", "--cron", "0 9 * * *", "--tz", "UTC", "--type", "noop", "--tier", "free"])
            let bad: [([String], String)] = [
                (["--cron", "61 9 * * *", "--tz", "UTC", "--type", "noop", "--tier", "free"], "minute: 61 is outside 0-59"),
                (["--cron", "0 9 * * *", "--tz", "Mars/Base", "--type", "noop", "--tier", "free"], "unknown time zone 'Mars/Base'"),
                (["--cron", "0 9 * * *", "--tz", "UTC", "--type", "noop", "--tier", "gold"], "--tier: unknown tier 'gold'"),
                (["--cron", "0 9 * * *", "--tz", "UTC", "--type", "noop", "--tier", "free", "--payload", "{"], "--payload is not valid JSON"),
            ]
            for (arguments, message) in bad {
                let result = try await Products.run("scheduler", ["schedules", "add", "--tenant", "acme", "--name", "n"] + arguments,
                                                    environment: world.environment)
                #expect(result.status == 64, "\(arguments): \(result.stderr)")
                #expect(result.stderr.contains(message) && result.stderr.contains("scheduler schedules add"), "\(result.stderr)")
            }
            let kept = try await world.pool.query("SELECT cron, time_zone, tier FROM schedules").rows
                .map { "\(try $0.string(0)) \(try $0.string(1)) \(try $0.string(2))" }
            #expect(kept == ["0 9 * * * UTC free"], "the schedule named n is untouched")

            let missing = try await Products.run("scheduler", ["schedules", "rm", "--tenant", "acme", "--name", "nope"],
                                                 environment: world.environment)
            #expect(missing.status == 1 && missing.stderr.contains("no schedule 'nope' for tenant 'acme'"), "\(missing.stderr)")
            #expect(!missing.stderr.contains("Usage"), "not a usage error: \(missing.stderr)")

            let next = try await Products.run("scheduler", ["cron", "next", "0 9 * * *", "--tz", "Europe/London", "--from", "tomorrow"])
            #expect(next.status == 64 && next.stderr.contains("--from: expected an ISO 8601 instant"), "\(next.stderr)")
            #expect(next.stdout.isEmpty && next.stderr.contains("scheduler cron next"), "\(next.stderr)")
        }
    }

    @Test func afterThreeHoursDownFiresWithinTheWindowArePublishedOldestFirstAndOlderOnesSkipped() async throws {
        try await withWorld { world in
            let hourly = try CronSchedule("0 * * * *", zone: "Europe/London")
            let first = try #require(hourly.next(after: Timestamp.now().microseconds / 1_000_000))
            // Two hours of catch-up; the scheduler comes up 3 h 5 s after the first fire.
            try await world.addSchedule(["--name", "hourly", "--cron", "0 * * * *", "--tz", "Europe/London",
                                         "--type", "noop", "--tier", "free", "--catch-up", "7200"])
            try world.setClock(first + 3 * 3_600 + 5)
            let (scheduler, _) = try await world.scheduler()
            defer { scheduler.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(20), "the missed fires were handled") {
                try await world.fireStates() == ["published": 2, "skipped": 2]
            }
            let deliveries = try await world.connection.consume(queue: Tier.free.queueName(tenant: "acme"), prefetch: 10)
            var iterator = deliveries.makeAsyncIterator()
            var keys: [String] = []
            for _ in 0..<2 {
                let delivery = try #require(try await iterator.next())
                keys.append(try JobEnvelope(properties: delivery.properties, body: delivery.body).idempotencyKey ?? "")
                try await world.connection.ack(delivery)
            }
            let expected = [first + 2 * 3_600, first + 3 * 3_600].map { WallClock.iso8601($0, in: hourly.zone) }
            #expect(keys.map { String($0.split(separator: ":", maxSplits: 2).last ?? "") } == expected, "oldest first: \(keys)")
            let skipped = try await world.pool.query("SELECT fire_at FROM schedule_fires WHERE state = 'skipped' ORDER BY fire_at").rows
                .map { try $0.timestamp(0).microseconds / 1_000_000 }
            #expect(skipped == [first, first + 3_600])
            let next = try await world.pool.query("SELECT next_fire_at FROM schedules").rows.first?.timestamp(0)
            #expect(next?.microseconds == (first + 4 * 3_600) * 1_000_000, "the next fire is computed from the last scheduled one")
            scheduler.signal(SIGTERM)
            #expect(try await scheduler.wait(timeout: .seconds(20)) == 0)
        }
    }
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async -> T) async -> [T] {
        var results: [T] = []
        for element in self { results.append(await transform(element)) }
        return results
    }
}
