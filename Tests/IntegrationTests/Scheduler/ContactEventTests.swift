import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Birthday and anniversary messages: contacts made over HTTP, sent by real `scheduler`
/// processes at 09:00 in each contact's zone, with the time injected through `--clock-file`.
@Suite(.enabled(if: TestServices.enabled))
struct ContactEventTests {
    struct Clock {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("warren-clock-\(UUID().uuidString)")

        func set(_ iso8601: String) throws { try Data(iso8601.utf8).write(to: file, options: .atomic) }

        /// A `scheduler` reading this clock, with its admin port on loopback.
        func scheduler(_ server: APIServer) async throws -> (process: RunningProduct, port: Int) {
            var environment = server.environment
            environment["WARREN_ADMIN_HOST"] = "127.0.0.1"
            let process = try RunningProduct("scheduler", ["--admin-port", "0", "--clock-file", file.path], environment: environment)
            return (process, try await process.listeningPort("admin_port"))
        }
    }

    func contact(_ server: APIServer, token: String, _ name: String, birthday: String, zone: String,
                 anniversary: String? = nil) async throws -> String {
        let extra = anniversary.map { #","anniversary":"\#($0)""# } ?? ""
        let (status, _, body) = try await server.request(
            "POST", "/v1/contacts", token: token,
            body: #"{"first_name":"\#(name)","last_name":"Test","email":"\#(name.lowercased())@example.com","birthday":"\#(birthday)","time_zone":"\#(zone)"\#(extra)}"#)
        #expect(status == 201, "\(body)")
        return try #require(HTTP.object(body)["id"] as? String)
    }

    func waitForRound(_ port: Int, at instant: String) async throws {
        let expected = try #require(Timestamp(iso8601: instant)).iso8601
        // The scheduler starts, migrates and takes the lead first: 20 s was too short when the
        // whole suite starts its processes at once.
        try await TestServices.waitUntil(timeout: .seconds(60), "the leader ran a round at \(instant)") {
            guard let (_, _, body) = try? await HTTP.request("GET", "http://127.0.0.1:\(port)/status") else { return false }
            let status = HTTP.object(body)
            return status["leader"] as? Bool == true && status["last_tick"] as? String == expected
        }
    }

    func messages(_ connection: AMQPConnection, count: Int) async throws -> [JobEnvelope] {
        try await TestServices.waitUntil(timeout: .seconds(20), "\(count) messages are in the queue") {
            try await connection.withControl { try $0.readyCount(Tier.premium) } >= count
        }
        let deliveries = try await connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 100)
        var iterator = deliveries.makeAsyncIterator()
        var jobs: [JobEnvelope] = []
        for _ in 0..<count {
            let delivery = try #require(try await iterator.next())
            jobs.append(try JobEnvelope(properties: delivery.properties, body: delivery.body))
            try await connection.ack(delivery)
        }
        return jobs
    }

    @Test func birthdaysAndAnniversariesGoOutAt0900LocalExactlyOnce() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "premium", scopes: "contacts:write")
            // 28 February 2027 (not a leap year). 09:00 in New York is 14:00Z; in Tokyo 00:00Z.
            let ann = try await contact(server, token: token, "Ann", birthday: "1990-02-28", zone: "America/New_York")
            let leap = try await contact(server, token: token, "Leap", birthday: "1992-02-29", zone: "America/New_York")
            _ = try await contact(server, token: token, "March", birthday: "1985-03-01", zone: "America/New_York")
            let tokyo = try await contact(server, token: token, "Kenji", birthday: "1980-02-28", zone: "Asia/Tokyo")
            let moved = try await contact(server, token: token, "Moved", birthday: "1970-01-01", zone: "America/New_York")
            let gone = try await contact(server, token: token, "Gone", birthday: "1971-02-28", zone: "America/New_York")
            let wed = try await contact(server, token: token, "Wed", birthday: "1980-06-01", zone: "America/New_York",
                                        anniversary: "2010-02-28")
            let clock = Clock()
            defer { try? FileManager.default.removeItem(at: clock.file) }
            try clock.set("2027-02-28T13:59:30Z")
            // Each is killed at the end even if the other fails to start.
            let one = try await clock.scheduler(server)
            defer { one.process.signal(SIGKILL) }
            let other = try await clock.scheduler(server)
            defer { other.process.signal(SIGKILL) }
            let schedulers = [one.process, other.process], ports = [one.port, other.port]
            var leader = 0
            try await TestServices.waitUntil(timeout: .seconds(20), "a leader ran a round") {
                for (index, port) in ports.enumerated() {
                    guard let (_, _, body) = try? await HTTP.request("GET", "http://127.0.0.1:\(port)/status") else { continue }
                    if HTTP.object(body)["last_tick"] as? String == "2027-02-28T13:59:30.000000Z" { leader = index; return true }
                }
                return false
            }
            // Tokyo's 09:00 has passed (14 h ago, within the day's catch-up); New York's has not.
            try await TestServices.waitUntil(timeout: .seconds(10), "Tokyo's birthday is out") {
                try await connection.withControl { try $0.readyCount(Tier.premium) } == 1
            }
            // Changes before New York's 09:00 hold that day.
            let movedBody = #"{"first_name":"Moved","last_name":"Test","email":"moved@example.com","birthday":"1970-02-28","time_zone":"America/New_York"}"#
            #expect(try await server.request("PUT", "/v1/contacts/\(moved)", token: token, body: movedBody).0 == 200)
            #expect(try await server.request("DELETE", "/v1/contacts/\(gone)", token: token, contentType: nil).0 == 204)

            try clock.set("2027-02-28T14:00:01Z")
            try await waitForRound(ports[leader], at: "2027-02-28T14:00:01Z")
            try clock.set("2027-02-28T16:00:00Z")
            try await waitForRound(ports[leader], at: "2027-02-28T16:00:00Z")
            let jobs = try await messages(connection, count: 5)
            #expect(try await connection.withControl { try $0.readyCount(Tier.premium) } == 0, "nothing twice")

            var byKey: [String: JobEnvelope] = [:]
            for job in jobs { byKey[job.idempotencyKey ?? ""] = job }
            let expected = [(ann, "birthday"), (leap, "birthday"), (tokyo, "birthday"), (moved, "birthday"), (wed, "anniversary")]
                .map { "contact:\($0.0):\($0.1):2027-02-28" }
            #expect(Set(byKey.keys) == Set(expected), "\(byKey.keys.sorted())")
            for job in jobs {
                #expect(job.type == "message.send" && job.tier == .premium && job.tenant == "acme")
            }
            let annMessage = PayloadFields(try #require(byKey["contact:\(ann):birthday:2027-02-28"]).payload)
            #expect(annMessage?.string("to") == "ann@example.com")
            #expect(annMessage?.string("subject") == "Happy birthday, Ann!")
            #expect(annMessage?.string("body")?.contains("37th birthday") == true)
            #expect(annMessage?.string("kind") == "birthday")
            let wedMessage = PayloadFields(try #require(byKey["contact:\(wed):anniversary:2027-02-28"]).payload)
            #expect(wedMessage?.string("kind") == "anniversary" && wedMessage?.string("body")?.contains("17th anniversary") == true)

            // Added after 09:00 on its birthday: sent at once, and nobody else again.
            let late = try await contact(server, token: token, "Late", birthday: "1999-02-28", zone: "America/New_York")
            try clock.set("2027-02-28T16:00:01Z")
            try await waitForRound(ports[leader], at: "2027-02-28T16:00:01Z")
            try clock.set("2027-02-28T16:00:02Z")
            try await waitForRound(ports[leader], at: "2027-02-28T16:00:02Z")
            // (The queue's first consumer above is still subscribed: the rows tell what was sent.)
            let lateFires = try await server.withDatabase { pool in
                try await pool.query("SELECT contact_id FROM contact_fires WHERE created_at > now() - interval '1 minute' AND contact_id = $1",
                                     [try #require(UUID(uuidString: late))]).rows.count
            }
            #expect(lateFires == 1)

            let fires = try await server.withDatabase { pool in
                try await pool.query("""
                    SELECT coalesce(d.state, 'not in the outbox'), count(*)
                    FROM contact_fires f LEFT JOIN delayed_jobs d ON d.job_id = f.job_id GROUP BY 1
                    """).rows.map { "\(try $0.string(0)) \(try $0.int(1))" }
            }
            #expect(fires == ["published 6"])
            for scheduler in schedulers { scheduler.signal(SIGTERM) }
            for scheduler in schedulers { #expect(try await scheduler.wait(timeout: .seconds(20)) == 0) }
        }
    }

    @Test func aBirthdayMessageReachesTheNotificationServiceOnceAt0900Local() async throws {
        try await APIServer.with { server, _, _ in
            try await StandIn.with { standIn in
                let token = try await server.token(tier: "premium", scopes: "contacts:write")
                // 14 July 2027 in Santiago (UTC-4 in winter): 09:00 local is 13:00Z.
                let id = try await contact(server, token: token, "Ada", birthday: "1990-07-14", zone: "America/Santiago")
                let clock = Clock()
                defer { try? FileManager.default.removeItem(at: clock.file) }
                try clock.set("2027-07-14T12:59:59Z")
                let (scheduler, port) = try await clock.scheduler(server)
                defer { scheduler.signal(SIGKILL) }
                let consumer = try RunningProduct("consumer", ["--tier", "premium", "--admin-port", "0"],
                                                  environment: server.environment.merging(["WARREN_NOTIFY_URL": standIn.url]) { $1 })
                defer { consumer.signal(SIGKILL) }
                try await waitForRound(port, at: "2027-07-14T12:59:59Z")
                #expect(try await standIn.received().count == 0, "nothing before 09:00 local")

                let key = "contact:\(id):birthday:2027-07-14"
                try clock.set("2027-07-14T13:00:00Z")
                try await TestServices.waitUntil(timeout: .seconds(30), "the birthday message reached the stand-in") {
                    try await standIn.received().deliveries(key: key) == 1
                }
                try clock.set("2027-07-14T18:00:00Z")
                try await waitForRound(port, at: "2027-07-14T18:00:00Z")
                let received = try await standIn.received()
                #expect(received.requests(key: key).count == 1 && received.count == 1, "exactly once")
                #expect(received.requests(key: key).first?.body == [
                    "to": "ada@example.com", "subject": "Happy birthday, Ada!",
                    "body": "Dear Ada Test, happy 37th birthday! Have a wonderful day.", "kind": "birthday",
                ])
                consumer.signal(SIGTERM)
                scheduler.signal(SIGTERM)
                #expect(try await consumer.wait(timeout: .seconds(30)) == 0)
                #expect(try await scheduler.wait(timeout: .seconds(20)) == 0)
            }
        }
    }

    @Test func afterDowntimeADayWithinTheWindowIsSentAndOneBeyondItIsSkipped() async throws {
        try await APIServer.with(extra: ["WARREN_CONTACT_CATCH_UP_SECONDS": "43200"]) { server, connection, _ in
            let token = try await server.token(tier: "premium", scopes: "contacts:write")
            // Birthdays on 10 and 11 March 2027 in London (09:00 is 09:00Z before BST).
            _ = try await contact(server, token: token, "Early", birthday: "2000-03-10", zone: "Europe/London")
            let late = try await contact(server, token: token, "Late", birthday: "2000-03-11", zone: "Europe/London")
            let clock = Clock()
            defer { try? FileManager.default.removeItem(at: clock.file) }
            // Up at 11 March 20:00Z: the 10th's send was 35 h ago (beyond 12 h), the 11th's 11 h ago.
            try clock.set("2027-03-11T20:00:00Z")
            let (scheduler, port) = try await clock.scheduler(server)
            defer { scheduler.signal(SIGKILL) }
            try await waitForRound(port, at: "2027-03-11T20:00:00Z")
            let jobs = try await messages(connection, count: 1)
            #expect(jobs.first?.idempotencyKey == "contact:\(late):birthday:2027-03-11")
            let (_, _, body) = try await HTTP.request("GET", "http://127.0.0.1:\(port)/status")
            #expect((HTTP.object(body)["contact_days_skipped"] as? Int ?? 0) >= 1)
            #expect(try await connection.withControl { try $0.readyCount(Tier.premium) } == 0)
        }
    }
}
