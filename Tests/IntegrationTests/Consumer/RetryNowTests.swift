import Foundation
import Testing
import WarrenAMQP
import WarrenAuth
@testable import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// "Retry now" (`POST /v1/jobs/{id}/retry`, the console's button) for a job waiting between
/// retries: its next attempt runs at once, and the copy waiting in the delay queue is
/// superseded, so the attempt runs once whichever copy a consumer takes first. Real broker,
/// Postgres, consumer and `producer serve`; runs are counted by the jobs' own side effects.
@Suite(.enabled(if: TestServices.enabled))
struct RetryNowTests {
    func rows(_ server: APIServer, _ sql: String, _ id: String) async throws -> [PostgresRow] {
        try await server.withDatabase { try await $0.query(sql, [UUID(uuidString: id)]).rows }
    }

    /// A job whose endpoint answers 503 with `Retry-After: 120` waits two minutes in
    /// `warren.retry.2m`; "retry now" runs its next attempt within seconds, from the message its
    /// row kept. Another tenant cannot; a job not waiting is a 409.
    @Test func aJobWaitingMinutesForItsRetryRunsItsNextAttemptNow() async throws {
        let (receiver, port) = try await HTTPHandlerTests().receiver()
        defer { receiver.signal(SIGKILL) }
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "demo.call"]) { server, connection, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let other = try await server.token(tier: "free", scopes: "jobs:write,jobs:read", tenant: "globex")
            let consumer = try RunningProduct("consumer", ["--tier", "free"], environment: server.environment.merging([
                "WARREN_HTTP_HANDLERS": "demo.call=http://127.0.0.1:\(port)/jobs",
                "WARREN_HTTP_HANDLER_SECRET": HTTPHandlerTests.secret,
            ]) { $1 })
            defer { consumer.signal(SIGKILL) }

            let id = try await server.submit(token, #"{"type":"demo.call","payload":{"status":503,"retry_after":120}}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the first attempt failed and waits two minutes") {
                let waiting = try await rows(server, "SELECT 1 FROM job_runs WHERE job_id = $1 AND status = 'retrying'", id).count == 1
                let queued = try await connection.withControl { try $0.queueDepth("warren.retry.2m").messages }
                return waiting && queued == 1
            }
            #expect(HTTPHandlerTests().calls(receiver) == 1)
            // The row keeps the message on its way: payload and the attempt it carries.
            let kept = try #require(try await rows(server, "SELECT payload, headers->>'x-warren-attempt' FROM job_runs WHERE job_id = $1", id).first)
            #expect(kept[0] == #"{"status":503,"retry_after":120}"# && kept[1] == "2", "\(String(describing: kept[0])) \(String(describing: kept[1]))")

            let (refused, _, _) = try await server.request("POST", "/v1/jobs/\(id)/retry", token: other, contentType: nil)
            #expect(refused == 404, "another tenant's job is not found")
            let (status, _, text) = try await server.request("POST", "/v1/jobs/\(id)/retry", token: token, contentType: nil)
            #expect(status == 202, "\(text)")
            let answer = HTTP.object(text)
            #expect(answer["attempt"] as? Int == 2 && answer["published"] as? Bool == true && answer["status"] as? String == "retrying")
            try await TestServices.waitUntil(timeout: .seconds(30), "the second attempt ran now, not in two minutes") {
                let waitingAgain = try await rows(server, "SELECT 1 FROM job_runs WHERE job_id = $1 AND status = 'retrying' AND attempts = 2", id)
                return HTTPHandlerTests().calls(receiver) == 2 && waitingAgain.count == 1
            }
            #expect(try await server.job(token, id)["run_at"] is NSNull, "sent on at once is no delayed job")
            let events = try await rows(server, "SELECT detail->>'seq' FROM message_logs WHERE job_id = $1 AND event = 'retried_now'", id)
            #expect(events.count == 1 && events.first?[0] == "2", "the retry is in the job's history, at the lineage's next position")
            #expect(try await connection.withControl { try $0.queueDepth("warren.retry.2m").messages } == 2,
                    "the superseded copy and the third attempt's wait: both in the delay queue")

            // The console's button does the same for the third attempt (now waiting two minutes),
            // and the job's page shows the payload its row kept.
            let consoleToken = try await server.token(tier: "free", scopes: "jobs:write,jobs:read,console")
            let session = try await server.withDatabase { pool in
                let checked = try await APITokenStore(pool: pool).check(consoleToken).get()
                return try await ConsoleSessionStore(pool: pool).open(for: checked, ttl: .seconds(600))
            }
            let cookie = ["Cookie": "warren_console=\(session.secret)"]
            let (_, _, jobPage) = try await server.request("GET", "/console/jobs/\(id)", contentType: nil, headers: cookie)
            #expect(jobPage.contains(#"id="retry""#) && jobPage.contains("retry_after"), "Retry now offered, payload shown")
            let (posted, _, notice) = try await server.request("POST", "/console/jobs/\(id)/retry", contentType: "application/x-www-form-urlencoded",
                                                              body: "csrf=\(session.csrf)", headers: cookie)
            #expect(posted == 200 && notice.contains("Attempt 3 sent on now"), "\(posted) \(notice.prefix(400))")
            try await TestServices.waitUntil(timeout: .seconds(30), "the third attempt ran now") {
                HTTPHandlerTests().calls(receiver) == 3
            }

            // A job that is not waiting: 409, and nothing sent.
            let done = try await server.submit(token, #"{"type":"demo.call","payload":{"report":"daily"}}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the other job succeeded") {
                try await server.job(token, done)["status"] as? String == "succeeded"
            }
            let (conflict, _, conflictText) = try await server.request("POST", "/v1/jobs/\(done)/retry", token: token, contentType: nil)
            #expect(conflict == 409 && HTTP.object(conflictText)["error"].flatMap { ($0 as? [String: Any])?["code"] as? String } == "not_waiting",
                    "\(conflictText)")
            #expect(try await rows(server, "SELECT payload FROM job_runs WHERE job_id = $1", done).first?[0] == nil,
                    "a job that simply succeeded keeps no payload")
            let (unknown, _, _) = try await server.request("POST", "/v1/jobs/\(UUID().uuidString)/retry", token: token, contentType: nil)
            #expect(unknown == 404)
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }

    /// The race: the waiting copy is already back on the tier's queue, held by a busy consumer,
    /// when the operator asks to retry now. Both copies then wait side by side, the old one first.
    /// The attempt runs once: the old copy finds its row moved past it and is skipped.
    @Test func aRetryNowRacingItsWaitingCopyRunsTheAttemptOnce() async throws {
        let program = try TestScripts([
            // Fails its first attempt (exit 75: retry), succeeds after; every run is a line in `runs`.
            "flaky": """
                echo "$WARREN_JOB_ATTEMPT" >> "$(dirname "$0")/runs"
                [ "$WARREN_JOB_ATTEMPT" = 1 ] && { echo "not yet" >&2; exit 75; }
                echo '{"ok": true}'
                """,
            // Holds its worker slot until `release` exists.
            "block": """
                while [ ! -e "$(dirname "$0")/release" ]; do sleep 0.05; done
                echo '{}'
                """,
        ], prefix: "warren-retry-now")
        try await APIServer.with(extra: ["WARREN_JOB_TYPES": "flaky,block"]) { server, connection, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            // Two slots; retries wait exactly 1 s (base = floor = 1 s: the 1 s delay queue).
            let consumer = try RunningProduct("consumer", ["--tier", "free", "--concurrency", "2"], environment: server.environment.merging([
                "WARREN_EXEC_HANDLERS": "flaky=\(program.path("flaky")),block=\(program.path("block"))",
                "WARREN_RETRY_BASE_SECONDS": "1", "WARREN_RETRY_CAP_SECONDS": "1",
            ]) { $1 })
            defer { consumer.signal(SIGKILL) }

            // One slot held; the flaky job fails in the other, which a second blocker then takes
            // (queued right behind it), well within the 1 s the retry waits.
            let first = try await server.submit(token, #"{"type":"block","payload":{}}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the first blocker runs") {
                try await server.job(token, first)["status"] as? String == "running"
            }
            let id = try await server.submit(token, #"{"type":"flaky","payload":{"n":1}}"#)
            let second = try await server.submit(token, #"{"type":"block","payload":{}}"#)
            try await TestServices.waitUntil(timeout: .seconds(30), "the flaky job failed once and both slots are held") {
                let held = try await server.job(token, second)["status"] as? String == "running"
                let waiting = try await rows(server, "SELECT 1 FROM job_runs WHERE job_id = $1 AND status = 'retrying'", id)
                return held && waiting.count == 1
            }
            // Its waiting copy comes back to the tier's queue (held by the busy consumer, not started).
            try await TestServices.waitUntil(timeout: .seconds(30), "the waiting copy left the delay queue") {
                try await connection.withControl { try $0.queueDepth("warren.retry.1s").messages } == 0
            }
            #expect(try await rows(server, "SELECT 1 FROM job_runs WHERE job_id = $1 AND status = 'retrying'", id).count == 1,
                    "still waiting: no slot was free to start it")

            let (status, _, text) = try await server.request("POST", "/v1/jobs/\(id)/retry", token: token, contentType: nil)
            #expect(status == 202 && HTTP.object(text)["attempt"] as? Int == 2, "\(text)")
            #expect(program.touch("release"))
            try await TestServices.waitUntil(timeout: .seconds(30), "the job succeeded") {
                try await server.job(token, id)["status"] as? String == "succeeded"
            }
            // Both copies were taken off the queue: the old one skipped (a `duplicate` event).
            try await TestServices.waitUntil(timeout: .seconds(30), "the superseded copy was seen and skipped") {
                try await rows(server, "SELECT 1 FROM message_logs WHERE job_id = $1 AND event = 'duplicate'", id).count == 1
            }
            #expect(program.lines("runs") == 2, "attempt 1 failed, attempt 2 ran once")
            #expect(try await server.job(token, id)["attempts"] as? Int == 2)
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }
}
