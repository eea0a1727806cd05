import Foundation
import Synchronization
import Testing
import Warren
@testable import WarrenJobs
@testable import WarrenPostgres
import WarrenSupport

/// Progress and heartbeats end to end, read as a user reads them (`GET /v1/jobs/{id}`,
/// `GET /v1/batches/{id}`, the consumer's `/metrics` and `/status`): from a Swift handler in a
/// `Worker`, from a command's `warren-progress` lines, from an HTTP handler posting to its
/// progress URL (the docs' receiver), a job gone quiet read as stalled while one that heartbeats
/// is not, and reports Postgres refuses kept until it takes them, the job unharmed.
@Suite(.enabled(if: TestServices.enabled))
struct ProgressTests {
    static let fast = ["WARREN_PROGRESS_FLUSH_MS": "100"]

    func progress(_ job: [String: Any]) -> [String: Any]? { job["progress"] as? [String: Any] }

    /// Reports 3 of 10, waits for the test to open its gate, then reports 10 of 10 and succeeds.
    struct BuildReport: JobHandler {
        let type = "report.build"
        let gate: OneShot<Bool>
        func run(_ context: JobContext) async -> JobOutcome {
            context.progress(done: 3, total: 10, message: "rendering page 3")
            guard await gate.wait() == true else { return .retry("cancelled") }
            context.progress(done: 10, total: 10, message: "done")
            return .success
        }
    }

    @Test func aSwiftHandlersProgressShowsInItsJobAndSumsInItsBatch() async throws {
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "report.build"]) { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            var configuration = try Worker.Configuration(tiers: [.free], environment: server.environment.merging(Self.fast) { $1 })
            configuration.concurrency = 4
            let gate = OneShot<Bool>()
            let worker = try Worker(configuration: configuration, handlers: [BuildReport(gate: gate)], logger: TestServices.logger)
            let running = Task { try await worker.run() }
            defer { running.cancel() }

            let id = try await server.submit(token, #"{"type":"report.build"}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the job's first report is visible") {
                progress(try await server.job(token, id))?["done"] as? Int == 3
            }
            let midway = try await server.job(token, id)
            #expect(midway["status"] as? String == "running")
            #expect(midway["stalled"] as? Bool == false)
            let reported = try #require(progress(midway))
            #expect(reported["total"] as? Int == 10)
            #expect(reported["percent"] as? Double == 30)
            #expect(reported["message"] as? String == "rendering page 3")
            #expect((reported["updated_at"] as? String).flatMap(Timestamp.init(iso8601:)) != nil, "\(reported)")

            gate.fulfil(true)
            try await TestServices.waitUntil(timeout: .seconds(30), "the job succeeded with its last report") {
                let done = try await server.job(token, id)
                return done["status"] as? String == "succeeded" && progress(done)?["done"] as? Int == 10
            }
            let done = try #require(progress(try await server.job(token, id)))
            #expect(done["percent"] as? Double == 100 && done["message"] as? String == "done", "\(done)")

            // A batch sums its jobs' reports.
            let (status, _, created) = try await server.request("POST", "/v1/batches", token: token,
                                                                body: #"{"jobs":[{"type":"report.build"},{"type":"report.build"},{"type":"noop"}]}"#)
            #expect(status == 202, "\(created)")
            let batch = try #require(HTTP.field("id", in: created))
            try await TestServices.waitUntil(timeout: .seconds(30), "the batch's reports are summed") {
                let view = HTTP.object(try await server.request("GET", "/v1/batches/\(batch)", token: token, contentType: nil).2)
                let sum = view["reported_progress"] as? [String: Any]
                return sum?["done"] as? Int == 20 && sum?["total"] as? Int == 20 && sum?["jobs"] as? Int == 2
                    && sum?["percent"] as? Double == 100
            }
            running.cancel()
            try await running.value
        }
    }

    @Test func aQuietJobReadsStalledWhileOneThatHeartbeatsDoesNot() async throws {
        let scripts = try TestScripts([
            // Reports once on stderr, then heartbeats until the test leaves a file behind.
            "beat": """
                echo "warren-progress 1/4 warming up" >&2
                until [ -e "$(dirname "$0")/go" ]; do echo warren-heartbeat >&2; sleep 0.2; done
                echo "warren-progress 4/4" >&2
                echo '{"beats": "done"}'
                """,
        ])
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "beat", "WARREN_STALL_SECONDS": "2"]) { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let consumer = try RunningProduct("consumer", ["--tier", "free", "--concurrency", "2"], environment: server.environment.merging([
                "WARREN_EXEC_HANDLERS": "beat=\(scripts.path("beat"))", "WARREN_STALL_SECONDS": "2",
            ].merging(Self.fast) { $1 }) { $1 })
            defer { consumer.signal(SIGKILL) }
            let admin = try await consumer.listeningPort("admin_port")
            let quiet = try await server.submit(token, #"{"type":"sleep","payload":{"ms":600000}}"#)
            let beating = try await server.submit(token, #"{"type":"beat"}"#)

            try await TestServices.waitUntil(timeout: .seconds(30), "the quiet job reads stalled") {
                try await server.job(token, quiet)["stalled"] as? Bool == true
            }
            #expect(try await server.job(token, quiet)["status"] as? String == "running", "stalled is not a status of its own")
            let started = try await server.withDatabase { pool in
                try await pool.query("SELECT started_at < now() - interval '2 seconds' FROM job_runs WHERE job_id = $1",
                                     [UUID(uuidString: beating)!]).rows.first?.bool(0)
            }
            #expect(started == true, "the heartbeating job has run longer than the stall time too")
            let alive = try await server.job(token, beating)
            #expect(alive["status"] as? String == "running" && alive["stalled"] as? Bool == false, "\(alive)")
            #expect(progress(alive)?["done"] as? Int == 1 && progress(alive)?["message"] as? String == "warming up",
                    "the command's warren-progress line: \(alive)")

            try await TestServices.waitUntil(timeout: .seconds(10), "the consumer counts one stalled job") {
                let metrics = try await HTTP.request("GET", "http://127.0.0.1:\(admin)/metrics").2
                let status = try await HTTP.request("GET", "http://127.0.0.1:\(admin)/status").2
                return metrics.contains(#"warren_consumer_jobs_stalled{tier="free"} 1"#) && status.contains(#""stalled_jobs":1"#)
            }

            #expect(scripts.touch("go"))
            try await TestServices.waitUntil(timeout: .seconds(20), "the heartbeating job finished with its last report") {
                let done = try await server.job(token, beating)
                return done["status"] as? String == "succeeded" && progress(done)?["done"] as? Int == 4
            }
            let finished = try await server.job(token, beating)
            #expect((finished["result"] as? [String: Any])?["beats"] as? String == "done",
                    "progress lines are not output, stdout is the result: \(finished)")
            let (cancel, _, answer) = try await server.request("DELETE", "/v1/jobs/\(quiet)", token: token, contentType: nil)
            #expect(cancel == 202, "\(answer)")
            try await TestServices.waitUntil(timeout: .seconds(10), "the quiet job is cancelled and no longer counted") {
                let metrics = try await HTTP.request("GET", "http://127.0.0.1:\(admin)/metrics").2
                return try await server.job(token, quiet)["stalled"] as? Bool == false
                    && metrics.contains(#"warren_consumer_jobs_stalled{tier="free"} 0"#)
            }
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }

    @Test func anHTTPHandlerReportsThroughItsProgressURLValidOnlyWhileItRuns() async throws {
        let receiver = try RunningProduct(executable: URL(fileURLWithPath: "/usr/bin/python3"), [HTTPHandlerTests.receiverScript, "0"],
                                          environment: ["WARREN_HTTP_HANDLER_SECRET": HTTPHandlerTests.secret])
        defer { receiver.signal(SIGKILL) }
        let port = try await receiver.listeningPort("port")
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "demo.call"]) { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let consumer = try RunningProduct("consumer", ["--tier", "free"], environment: server.environment.merging([
                "WARREN_HTTP_HANDLERS": "demo.call=http://127.0.0.1:\(port)/jobs", "WARREN_HTTP_HANDLER_SECRET": HTTPHandlerTests.secret,
                "WARREN_ADMIN_HOST": "127.0.0.1",
            ].merging(Self.fast) { $1 }) { $1 })
            defer { consumer.signal(SIGKILL) }
            let id = try await server.submit(token, #"{"type":"demo.call","payload":{"steps":4}}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the job succeeded with the receiver's last report") {
                let done = try await server.job(token, id)
                return done["status"] as? String == "succeeded" && progress(done)?["done"] as? Int == 4
            }
            let done = try await server.job(token, id)
            let reported = try #require(progress(done))
            #expect(reported["total"] as? Int == 4 && reported["percent"] as? Double == 100 && reported["message"] as? String == "step 4")
            let url = try #require((done["result"] as? [String: Any])?["progress_url"] as? String, "\(done)")
            #expect(url.hasPrefix("http://127.0.0.1:"), "the admin address the consumer listens on: \(url)")
            let late = try await HTTP.request("POST", url, body: #"{"done": 5, "total": 4}"#)
            #expect(late.0 == 404, "the URL died with its run: \(late)")
            let forged = try await HTTP.request("POST", String(url.dropLast(4)) + "beef", body: #"{"done": 1}"#)
            #expect(forged.0 == 404)
            #expect(progress(try await server.job(token, id))?["done"] as? Int == 4, "nothing changed")
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }

    @Test func reportsPostgresRefusesAreKeptUntilItTakesThemAndTheJobIsUnharmed() async throws {
        let scripts = try TestScripts(["count": #"echo "warren-progress 5/5 counted" >&2; echo '{"counted": 5}'"#])
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "count"]) { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            try await server.withDatabase { pool in
                try await pool.query("""
                    CREATE FUNCTION refuse_progress() RETURNS trigger LANGUAGE plpgsql AS
                    $$ BEGIN RAISE EXCEPTION 'job_progress refused by the test'; END $$
                    """)
                try await pool.query("""
                    CREATE TRIGGER refuse_progress BEFORE INSERT OR UPDATE ON job_progress
                    FOR EACH ROW EXECUTE FUNCTION refuse_progress()
                    """)
            }
            let consumer = try RunningProduct("consumer", ["--tier", "free"], environment: server.environment.merging([
                "WARREN_EXEC_HANDLERS": "count=\(scripts.path("count"))",
            ].merging(Self.fast) { $1 }) { $1 })
            defer { consumer.signal(SIGKILL) }
            let admin = try await consumer.listeningPort("admin_port")
            let id = try await server.submit(token, #"{"type":"count"}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the job succeeded and a progress write was refused") {
                let metrics = try await HTTP.request("GET", "http://127.0.0.1:\(admin)/metrics").2
                return try await server.job(token, id)["status"] as? String == "succeeded"
                    && metrics.contains("warren_consumer_progress_write_failures_total")
                    && !metrics.contains("warren_consumer_progress_write_failures_total 0")
            }
            let refused = try await server.job(token, id)
            #expect(refused["progress"] is NSNull, "nothing stored yet: \(refused)")
            #expect((refused["result"] as? [String: Any])?["counted"] as? Int == 5)

            try await server.withDatabase { pool in _ = try await pool.query("DROP TRIGGER refuse_progress ON job_progress") }
            try await TestServices.waitUntil(timeout: .seconds(20), "the kept report is written once Postgres takes it") {
                progress(try await server.job(token, id))?["done"] as? Int == 5
            }
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }
}
