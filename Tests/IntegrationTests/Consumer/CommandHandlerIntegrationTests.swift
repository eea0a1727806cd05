import Foundation
import Testing
@testable import WarrenJobs
@testable import WarrenPostgres
import WarrenSupport

/// `consumer` with `WARREN_EXEC_HANDLERS`: jobs run as programs, their exit statuses recorded as
/// outcomes in `job_runs`, against the real broker and Postgres.
@Suite(.enabled(if: TestServices.enabled))
struct CommandHandlerIntegrationTests {
    /// `scripts` (name → body) as executables (``TestScripts``); each appends a line to
    /// `runs.<name>` when it starts, so a test counts real runs.
    func scripts(_ scripts: [String: String]) throws -> (path: (String) -> String, runs: (String) -> Int) {
        let written = try TestScripts(Dictionary(uniqueKeysWithValues: scripts.map { name, body in
            (name, "echo run >> \"$(dirname \"$0\")/runs.\(name)\"\n\(body)")
        }), prefix: "warren-exec-it")
        return (written.path, { written.lines("runs.\($0)") })
    }

    @Test func exitStatusesBecomeOutcomesATimedOutProgramIsKilledAndBigOutputIsCapped() async throws {
        let (path, runs) = try scripts([
            "resize": #"payload=$(cat); printf '{"resized": %s, "job": "%s"}' "$payload" "$WARREN_JOB_ID""#,
            "flaky": #"[ "$WARREN_JOB_ATTEMPT" -ge 2 ] && exit 0; echo "upstream busy" >&2; exit 75"#,
            "broken": #"echo "cannot read image" >&2; exit 3"#,
            "stuck": #"trap '' TERM; while true; do sleep 0.05; done"#,
            "chatty": "head -c 8000000 /dev/zero | tr '\\000' x",
        ])
        let handlers = ["resize", "flaky", "broken", "stuck", "chatty"].map { "image.\($0)=\(path($0))" }.joined(separator: ",")
        try await ConsumerIntegrationTests().withWorld { world in
            let types = ["resize", "flaky", "broken", "stuck", "chatty"]
            let jobs = types.map { JobEnvelope(type: "image.\($0)", tier: .free, payload: Array(#"{"w": 64}"#.utf8)) }
            try await world.publish(jobs)
            let consumer = try RunningProduct("consumer", ["--tier", "free", "--concurrency", "8"], environment: world.environment.merging([
                "WARREN_EXEC_HANDLERS": handlers, "WARREN_EXEC_TIMEOUT_SECONDS": "2", "WARREN_EXEC_KILL_GRACE_SECONDS": "0.5",
                "WARREN_RETRY_MAX_ATTEMPTS": "2", "WARREN_RETRY_BASE_SECONDS": "0.01", "WARREN_RETRY_CAP_SECONDS": "0.01",
            ]) { $1 })
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(90), "every job reached its end") {
                try await world.count("SELECT count(*) FROM job_runs WHERE status IN ('succeeded', 'failed', 'dead')") == 5
            }
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0, "\(consumer.stderr.suffix(2_000))")

            func row(_ type: String) async throws -> (status: String, attempts: Int, error: String?, result: String?) {
                let rows = try await world.pool.query("SELECT status, attempts, error, result::text FROM job_runs WHERE type = $1",
                                                      ["image.\(type)"]).rows
                return try #require(rows.first.map { (try $0.string(0), try $0.int(1), $0[2], $0[3]) })
            }
            let resized = try await row("resize")
            #expect(resized.status == "succeeded" && resized.result == #"{"job": "\#(jobs[0].id.lowercasedString)", "resized": {"w": 64}}"#,
                    "stdout, JSON, is the result: \(resized)")
            #expect(try await row("flaky") == ("succeeded", 2, nil, nil), "75 asked for a retry; the second attempt succeeded")
            #expect(runs("flaky") == 2)
            #expect(try await row("broken") == ("failed", 1, "cannot read image", nil), "any other status fails for good, with stderr")
            #expect(runs("broken") == 1)
            let stuck = try await row("stuck")
            #expect(stuck.status == "dead" && stuck.attempts == 2, "killed past its timeout on each attempt: \(stuck)")
            #expect(runs("stuck") == 2)
            let chatty = try await row("chatty")
            #expect(chatty.status == "succeeded" && chatty.result?.hasSuffix(#"", "truncated": true}"#) == true
                    && (chatty.result?.utf8.count ?? 0) < 70_000, "8 MB read, 64 KiB kept: \(chatty.result?.suffix(60) ?? "nil")")
            let leftover = try await Products.run(executable: URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", path("stuck")])
            #expect(leftover.stdout.isEmpty, "no stuck program outlives its kill: \(leftover.stdout)")
            for queue in Tier.free.queueNames { #expect(try await world.depth(queue) == 0, "all acked") }
        }
    }

    @Test func aMalformedHandlerListStopsTheConsumerBeforeItTakesAJob() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            try await world.publish([JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8))])
            let result = try await Products.run("consumer", ["--tier", "free"], environment: world.environment.merging([
                "WARREN_EXEC_HANDLERS": "thumbnail=bin/make-thumb",
            ]) { $1 })
            #expect(result.status != 0)
            #expect(result.stderr.contains("WARREN_EXEC_HANDLERS") && result.stderr.contains("absolute path"), "\(result.stderr)")
            let clash = try await Products.run("consumer", ["--tier", "free"], environment: world.environment.merging([
                "WARREN_EXEC_HANDLERS": "noop=/bin/true",
            ]) { $1 })
            #expect(clash.status != 0 && clash.stderr.contains("'noop' is already registered"), "\(clash.stderr)")
            #expect(try await world.depth(Tier.free.queueName) == 1, "the job waits for a consumer that can start")
        }
    }
}
