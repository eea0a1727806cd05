import Foundation
import Testing
import WarrenAMQP
@testable import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Dead letters as an operator meets them: a job that failed for good is taken off
/// `warren.jobs.dead` by the scheduler, listed per tenant (an admin sees all), replayed after its
/// fix and run once more, discarded; a replay whose publish is confirmed but not recorded (the
/// writer "crashed" between the two) is published again and still runs once; a dead letter
/// Postgres refuses stays on the queue until it is recorded. Real broker, Postgres, consumer,
/// scheduler and `producer serve`; runs are counted by the job's program.
@Suite(.enabled(if: TestServices.enabled))
struct DeadLetterTests {
    /// `fix.me` fails for good until a file `fixed` exists beside it; every run adds a line to `runs`.
    func program() throws -> TestScripts {
        try TestScripts(["fix-me": """
            echo "$WARREN_JOB_ID" >> "$(dirname "$0")/runs"
            [ -e "$(dirname "$0")/fixed" ] || { echo "the report template is missing" >&2; exit 3; }
            echo '{"fixed": true}'
            """], prefix: "warren-dead")
    }

    func fleet(_ server: APIServer, program: String) throws -> (consumer: RunningProduct, scheduler: RunningProduct) {
        let consumer = try RunningProduct("consumer", ["--tier", "free"], environment: server.environment.merging([
            "WARREN_EXEC_HANDLERS": "fix.me=\(program)",
        ]) { $1 })
        let scheduler = try RunningProduct("scheduler", ["--admin-port", "0"], environment: server.environment)
        return (consumer, scheduler)
    }

    func dead(_ server: APIServer, _ token: String, _ query: String = "") async throws -> (status: Int, body: [String: Any]) {
        let (status, _, text) = try await server.request("GET", "/v1/dead" + query, token: token, contentType: nil)
        return (status, HTTP.object(text))
    }

    func deadList(_ server: APIServer, _ token: String, _ query: String = "") async throws -> [[String: Any]] {
        try await dead(server, token, query).body["dead"] as? [[String: Any]] ?? []
    }

    func post(_ server: APIServer, _ path: String, _ token: String, _ body: String) async throws -> (Int, [String: Any]) {
        let (status, _, text) = try await server.request("POST", path, token: token, body: body)
        return (status, HTTP.object(text))
    }

    @Test func aDeadJobIsListedByTenantReplayedAfterItsFixRunOnceAndDiscarded() async throws {
        let program = try program()
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "fix.me"]) { server, connection, _ in
            // Jobs come from a free token (the consumer serves free); dead letters are read with
            // enterprise ones, whose rate limit the tests' 20 ms polling stays under.
            let jobs = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let acme = try await server.token(tier: "enterprise", scopes: "jobs:read,dead:read,dead:write")
            let other = try await server.token(tier: "enterprise", scopes: "dead:read,dead:write", tenant: "globex")
            let admin = try await server.token(tier: "enterprise", scopes: "dead:read,dead:write,admin", tenant: "ops")
            let (consumer, scheduler) = try fleet(server, program: program.path("fix-me"))
            defer { consumer.signal(SIGKILL); scheduler.signal(SIGKILL) }

            let (status, created) = try await post(server, "/v1/jobs", jobs, #"{"type":"fix.me","payload":{"report":"q3"}}"#)
            #expect(status == 202)
            let id = try #require(created["id"] as? String)
            try await TestServices.waitUntil(timeout: .seconds(30), "the dead job is listed for its tenant") {
                try await deadList(server, acme).count == 1
            }
            let listed = try await dead(server, acme)
            let entry = try #require((listed.body["dead"] as? [[String: Any]])?.first)
            #expect(entry["job_id"] as? String == id && entry["reason"] as? String == "permanent-failure", "\(entry)")
            #expect((entry["error"] as? String)?.contains("the report template is missing") == true)
            #expect((entry["payload"] as? [String: Any])?["report"] as? String == "q3" && entry["replayable"] as? Bool == true)
            #expect((listed.body["by_reason"] as? [[String: Any]])?.first?["count"] as? Int == 1)
            #expect(try await connection.withControl { try $0.queueDepth(Topology.deadQueue).messages } == 0,
                    "recorded, then acked: nothing left on warren.jobs.dead")

            // Tenants see their own; another tenant's needs admin.
            #expect(try await deadList(server, other).isEmpty)
            #expect(try await dead(server, other, "?tenant=acme").status == 403)
            #expect(try await deadList(server, admin, "?tenant=acme").count == 1)
            #expect(try await post(server, "/v1/dead/replay", other, #"{"filter":{"type":"fix.me"}}"#).1["replayed"] as? Int == 0,
                    "another tenant's replay takes nothing")

            // The fix lands; the replay runs the job once more, to success.
            #expect(program.touch("fixed"))
            let deadID = try #require(entry["id"] as? Int)
            let (replayStatus, replayed) = try await post(server, "/v1/dead/replay", acme, #"{"ids":[\#(deadID)]}"#)
            #expect(replayStatus == 200 && replayed["replayed"] as? Int == 1 && replayed["published"] as? Int == 1, "\(replayed)")
            #expect(replayed["jobs"] as? [String] == [id], "the same job id")
            try await TestServices.waitUntil(timeout: .seconds(30), "the replayed job succeeded") {
                try await server.job(acme, id)["status"] as? String == "succeeded"
            }
            #expect(program.lines("runs") == 2, "one failed run, one replayed run")
            #expect(try await server.job(acme, id)["attempts"] as? Int == 1, "attempts reset by default")
            #expect(try await deadList(server, acme).isEmpty)
            #expect(try await deadList(server, acme, "?state=replayed").count == 1)
            #expect(try await post(server, "/v1/dead/replay", acme, #"{"ids":[\#(deadID)]}"#).1["replayed"] as? Int == 0,
                    "a replayed dead letter is not replayed again")

            // Discard: another failure, discarded by filter, listed as such.
            try FileManager.default.removeItem(atPath: program.path("fixed"))
            _ = try await post(server, "/v1/jobs", jobs, #"{"type":"fix.me","payload":{"report":"q4"}}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the second dead job is listed") {
                try await deadList(server, acme).count == 1
            }
            let (discardStatus, discarded) = try await post(server, "/v1/dead/discard", acme, #"{"filter":{"type":"fix.me"}}"#)
            #expect(discardStatus == 200 && discarded["discarded"] as? Int == 1, "\(discarded)")
            #expect(try await deadList(server, acme).isEmpty)
            #expect(try await deadList(server, acme, "?state=discarded").count == 1)
            #expect(program.lines("runs") == 3)

            // Bad selections change nothing.
            #expect(try await post(server, "/v1/dead/replay", acme, #"{"ids":[1],"filter":{}}"#).0 == 422)
            #expect(try await post(server, "/v1/dead/replay", acme, #"{"ids":[1],"attempts":"twice"}"#).0 == 422)
            #expect(try await post(server, "/v1/dead/discard", acme, #"{"filter":{"since":"yesterday"}}"#).0 == 422)
            #expect(try await dead(server, acme, "?limit=0").status == 422)
            consumer.signal(SIGTERM)
            scheduler.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
            #expect(try await scheduler.wait() == 0)
        }
    }

    @Test func aReplayConfirmedButNotRecordedIsPublishedAgainAndRunsOnce() async throws {
        let program = try program()
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "fix.me"]) { server, _, _ in
            let jobs = try await server.token(tier: "free", scopes: "jobs:write")
            let token = try await server.token(tier: "enterprise", scopes: "jobs:read,dead:read,dead:write")
            let (consumer, scheduler) = try fleet(server, program: program.path("fix-me"))
            defer { consumer.signal(SIGKILL); scheduler.signal(SIGKILL) }
            let (_, created) = try await post(server, "/v1/jobs", jobs, #"{"type":"fix.me"}"#)
            let id = try #require(created["id"] as? String)
            try await TestServices.waitUntil(timeout: .seconds(30), "the job is dead") { try await deadList(server, token).count == 1 }
            #expect(program.touch("fixed"))

            // Every mark of a replay as published fails, as if its writer died right after the
            // broker's confirm: the outbox entry stays pending and is published again.
            try await server.withDatabase { pool in
                try await pool.query("""
                    CREATE FUNCTION refuse_replay_mark() RETURNS trigger LANGUAGE plpgsql AS
                    $$ BEGIN IF NEW.state = 'published' AND NEW.seq > 0 THEN RAISE EXCEPTION 'writer gone'; END IF; RETURN NEW; END $$
                    """)
                _ = try await pool.query("""
                    CREATE TRIGGER refuse_replay_mark BEFORE UPDATE ON delayed_jobs FOR EACH ROW EXECUTE FUNCTION refuse_replay_mark()
                    """)
            }
            // A 503 (database_unavailable: the transaction did not commit) asks the client to try
            // again, as a client would; seen once under the full suite's load.
            var (status, replayed) = try await post(server, "/v1/dead/replay", token, #"{"filter":{}}"#)
            for _ in 0..<4 where status == 503 {
                try await Task.sleep(for: .seconds(1))  // the answer's Retry-After, not a stand-in for a condition
                (status, replayed) = try await post(server, "/v1/dead/replay", token, #"{"filter":{}}"#)
            }
            #expect(status == 200 && replayed["replayed"] as? Int == 1 && replayed["published"] as? Int == 1, "\(replayed)")
            try await TestServices.waitUntil(timeout: .seconds(90), "the job succeeded and a second copy of the replay was refused") {
                let duplicates = try await server.withDatabase { pool in
                    try await pool.query("SELECT count(*) FROM message_logs WHERE job_id = $1 AND event = 'duplicate'",
                                         [UUID(uuidString: id)!]).rows.first?.int(0) ?? 0
                }
                return try await server.job(token, id)["status"] as? String == "succeeded" && duplicates >= 1
            }
            #expect(program.lines("runs") == 2, "one failed run and one replayed run, though the replay reached the broker twice")

            _ = try await server.withDatabase { pool in try await pool.query("DROP TRIGGER refuse_replay_mark ON delayed_jobs") }
            try await TestServices.waitUntil(timeout: .seconds(90), "the outbox entry is marked published at last") {
                try await server.withDatabase { pool in
                    try await pool.query("SELECT state FROM delayed_jobs WHERE job_id = $1", [UUID(uuidString: id)!]).rows.first?.string(0)
                } == "published"
            }
            #expect(program.lines("runs") == 2)
            consumer.signal(SIGTERM)
            scheduler.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
            #expect(try await scheduler.wait() == 0)
        }
    }

    @Test func aDeadLetterPostgresRefusesStaysOnTheQueueUntilRecordedAndAMessageThatIsNoJobIsNeverReplayed() async throws {
        try await APIServer.with { server, connection, _ in
            let admin = try await server.token(tier: "enterprise", scopes: "dead:read,dead:write,admin", tenant: "ops")
            try await server.withDatabase { pool in
                try await pool.query("""
                    CREATE FUNCTION refuse_dead() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$
                    """)
                _ = try await pool.query("CREATE TRIGGER refuse_dead BEFORE INSERT ON dead_letters FOR EACH ROW EXECUTE FUNCTION refuse_dead()")
            }
            // No message id, no type: no job at all, dead-lettered with a reason of its own.
            var properties = AMQPProperties()
            properties.deliveryMode = 2
            properties.headers[JobEnvelope.Header.deadReason] = .string("malformed: message_id is missing or not a UUID")
            try await connection.publish(AMQPOutgoingMessage(exchange: Topology.deadExchange, routingKey: "", properties: properties,
                                                             body: Array("not json".utf8), mandatory: true))
            let scheduler = try RunningProduct("scheduler", ["--admin-port", "0"], environment: server.environment)
            defer { scheduler.signal(SIGKILL) }
            let queue = "/api/queues/\(server.vhost)/\(Topology.deadQueue)"
            try await TestServices.waitUntil(timeout: .seconds(30), "the keeper holds it unacked while Postgres refuses") {
                let (_, data) = try await Management.request("GET", queue)
                let info = (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
                return info["messages_unacknowledged"] as? Int == 1
            }
            #expect(try await deadList(server, admin).isEmpty)

            _ = try await server.withDatabase { pool in try await pool.query("DROP TRIGGER refuse_dead ON dead_letters") }
            try await TestServices.waitUntil(timeout: .seconds(30), "recorded once Postgres takes it, and acked") {
                let (_, data) = try await Management.request("GET", queue)
                let info = (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
                return try await deadList(server, admin).count == 1 && info["messages"] as? Int == 0
            }
            let entry = try #require(try await deadList(server, admin).first)
            #expect(entry["reason"] as? String == "malformed: message_id is missing or not a UUID")
            #expect(entry["payload"] as? String == "not json" && entry["replayable"] as? Bool == false, "\(entry)")
            let id = try #require(entry["id"] as? Int)
            let (_, replayed) = try await post(server, "/v1/dead/replay", admin, #"{"ids":[\#(id)]}"#)
            #expect(replayed["replayed"] as? Int == 0, "a message that is no job is never replayed")
            #expect(try await post(server, "/v1/dead/discard", admin, #"{"ids":[\#(id)]}"#).1["discarded"] as? Int == 1)
            scheduler.signal(SIGTERM)
            #expect(try await scheduler.wait() == 0)
        }
    }
}
