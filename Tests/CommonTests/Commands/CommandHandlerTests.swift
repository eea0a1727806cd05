import Foundation
import Logging
import Testing
@testable import WarrenCommands
@testable import WarrenConfig
@testable import WarrenJobs

/// Command handlers against real programs (`/bin/sh` scripts in a temporary folder): the exit
/// status as the outcome, the payload on stdin, metadata in the environment, output caps, and
/// the kill past the timeout.
@Suite struct CommandHandlerTests {
    /// A script in a fresh folder, executable; the folder is the test's scratch space.
    struct Script {
        let folder: URL
        let path: String

        init(_ body: String) throws {
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("warren-exec-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            path = folder.appendingPathComponent("job.sh").path
            try Data("#!/bin/sh\n\(body)\n".utf8).write(to: URL(fileURLWithPath: path))
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
        }

        func read(_ name: String) -> String? {
            try? String(contentsOf: folder.appendingPathComponent(name), encoding: .utf8)
        }
    }

    func context(_ payload: String = "{}", attempt: Int = 1, tenant: String? = "acme") -> JobContext {
        var job = JobEnvelope(type: "thumbnail", tier: .premium, payload: Array(payload.utf8), tenant: tenant, idempotencyKey: "thumb-1")
        job.attempt = attempt
        return JobContext(job: job, logger: Logger(label: "test"), deadline: .now + .seconds(30), consumerID: "test")
    }

    func handler(_ script: Script, _ configure: (inout CommandHandler.Settings) -> Void = { _ in }) -> CommandHandler {
        var settings = CommandHandler.Settings()
        configure(&settings)
        return CommandHandler(type: "thumbnail", executable: script.path, settings: settings,
                              environment: ["PATH": "/usr/bin:/bin", "WARREN_DATABASE_URL": "postgresql://secret", "HOME": "/tmp"])
    }

    @Test func exitZeroSucceedsWithStdoutAsTheResultAndThePayloadOnStdin() async throws {
        let script = try Script(#"payload=$(cat); printf '{"got": %s, "attempt": %s}' "$payload" "$WARREN_JOB_ATTEMPT""#)
        let outcome = await handler(script).run(context(#"{"w": 64}"#, attempt: 3))
        #expect(outcome == .success(result: Array(#"{"got": {"w": 64}, "attempt": 3}"#.utf8)))
    }

    @Test func theProgramSeesTheJobsMetadataButNotWarrensSettings() async throws {
        let script = try Script(#"env > "$(dirname "$0")/env""#)
        let job = context()
        #expect(await handler(script).run(job) == .success(result: nil), "no output, no result")
        let lines = Set((script.read("env") ?? "").split(separator: "\n").map(String.init))
        for expected in ["WARREN_JOB_ID=\(job.jobID)", "WARREN_JOB_TYPE=thumbnail", "WARREN_JOB_TIER=premium", "WARREN_JOB_ATTEMPT=1",
                         "WARREN_JOB_TENANT=acme", "WARREN_JOB_IDEMPOTENCY_KEY=thumb-1", "WARREN_JOB_TIMEOUT_SECONDS=300",
                         "PATH=/usr/bin:/bin", "HOME=/tmp"] {
            #expect(lines.contains(expected), "\(expected) in \(lines.sorted())")
        }
        #expect(!lines.contains { $0.hasPrefix("WARREN_DATABASE_URL=") }, "the worker's own settings stay with it")
    }

    @Test func exit75IsARetryAndAnyOtherExitIsPermanentBothWithTheEndOfStderr() async throws {
        let retry = try Script(#"echo "the image service is busy" >&2; exit 75"#)
        #expect(await handler(retry).run(context()) == .retry(error: "the image service is busy", retryAfter: nil))
        let failed = try Script(#"echo "starting" >&2; echo "no such image: cat.png" >&2; exit 3"#)
        let outcome = await handler(failed).run(context())
        #expect(outcome == .permanentFailure(error: "starting\nno such image: cat.png"), "\(outcome)")
        let silent = try Script("exit 9")
        #expect(await handler(silent).run(context()) == .permanentFailure(error: "\(silent.path) exited 9"))
        let crashed = try Script("kill -SEGV $$")
        #expect(await handler(crashed).run(context()) == .permanentFailure(error: "\(crashed.path) was killed by signal 11"))
    }

    @Test func aStdoutThatIsNotJSONOrTooLongIsKeptAsTextAndStderrOnlyItsEnd() async throws {
        let text = try Script("echo 'made thumb.png'")
        #expect(await handler(text).run(context()) == .success(result: Array(#"{"output":"made thumb.png\n","truncated":false}"#.utf8)))
        // 8 MB on each stream: read to the end (the program is not blocked on a full pipe), 1 KiB kept.
        let chatty = try Script("head -c 8000000 /dev/zero | tr '\\000' a; head -c 8000000 /dev/zero | tr '\\000' b >&2; echo last words >&2; exit 4")
        let outcome = await handler(chatty) { $0.maxOutputBytes = 1_024; $0.maxErrorBytes = 64 }.run(context())
        guard case .permanentFailure(let error) = outcome else {
            Issue.record("expected a permanent failure, got \(outcome)")
            return
        }
        #expect(error.hasPrefix("…b") && error.hasSuffix("bblast words") && error.utf8.count <= 64 + 3, "\(error.suffix(80))")
        let big = try Script("head -c 8000000 /dev/zero | tr '\\000' a")
        let result = await handler(big) { $0.maxOutputBytes = 1_024 }.run(context())
        let expected = #"{"output":""# + String(repeating: "a", count: 1_024) + #"","truncated":true}"#
        guard case .success(let bytes?) = result else {
            Issue.record("expected a success with a result")
            return
        }
        #expect(bytes.count == expected.utf8.count && bytes == Array(expected.utf8), "\(String(decoding: bytes.prefix(80), as: UTF8.self))…")
    }

    @Test func pastItsTimeoutTheProgramGetsSIGTERMThenSIGKILL() async throws {
        // Ignores SIGTERM, writes its pid, then sleeps far past the test.
        let script = try Script(#"trap 'echo term >> "$(dirname "$0")/signals"' TERM; echo $$ > "$(dirname "$0")/pid"; while true; do sleep 0.05; done"#)
        let handler = handler(script) { $0.killGrace = .milliseconds(500) }
        let running = Task { await handler.run(context()) }
        try await TestWait.until("the program started") { script.read("pid") != nil }
        let started = ContinuousClock.now
        running.cancel()   // what the worker does at the deadline
        let outcome = await running.value
        guard case .retry(let error, _) = outcome else {
            Issue.record("expected a retry, got \(outcome)")
            return
        }
        #expect(error.contains("timeout"), "\(error)")
        let pid = try #require(script.read("pid").flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        #expect(kill(pid, 0) == -1 && errno == ESRCH, "the program is gone")
        try await TestWait.until("the trap saw SIGTERM") { script.read("signals")?.contains("term") == true }
        #expect(ContinuousClock.now - started >= .milliseconds(400), "SIGKILL only after the grace")
    }

    @Test func configurationNamesWhatIsWrong() throws {
        let executable: (String) -> Bool = { $0 == "/usr/local/bin/make-thumb" || $0 == "/opt/report" }
        let handlers = try CommandHandler.configured(
            ["WARREN_EXEC_HANDLERS": "thumbnail=/usr/local/bin/make-thumb, report.build=/opt/report", "WARREN_EXEC_TIMEOUT_SECONDS": "20"],
            isExecutable: executable)
        #expect(handlers.map(\.type) == ["thumbnail", "report.build"])
        #expect(handlers.map(\.executable) == ["/usr/local/bin/make-thumb", "/opt/report"])
        #expect(handlers.allSatisfy { $0.timeout == .seconds(20) })
        #expect(try CommandHandler.configured([:]).isEmpty)
        for (value, message) in [
            ("thumbnail", "expected type=/path/to/program, got 'thumbnail'"),
            ("thumbnail=make-thumb", "'thumbnail': the program needs an absolute path (no shell, no PATH lookup), got 'make-thumb'"),
            ("thumbnail=/usr/local/bin/make-thumb,thumbnail=/opt/report", "job type 'thumbnail' is named twice"),
            ("thumbnail=/nowhere", "'thumbnail': /nowhere is not an executable file"),
            ("bad type=/opt/report", "'bad type': "),
        ] {
            #expect {
                try CommandHandler.configured(["WARREN_EXEC_HANDLERS": value], isExecutable: executable)
            } throws: { error in
                let error = error as? SettingsError
                return error?.key == "WARREN_EXEC_HANDLERS" && error?.message.hasPrefix(message) == true
            }
        }
        #expect(throws: SettingsError.self) {
            try CommandHandler.configured(["WARREN_EXEC_HANDLERS": "thumbnail=/opt/report", "WARREN_EXEC_TIMEOUT_SECONDS": "-1"],
                                          isExecutable: executable)
        }
    }

    @Test func headAndTailKeepTheirEnds() {
        var head = Head()
        head.append(Array("hello ".utf8), keeping: 8)
        head.append(Array("world".utf8), keeping: 8)
        #expect(String(decoding: head.bytes, as: UTF8.self) == "hello wo" && head.truncated)
        var tail = Tail()
        tail.append(Array("hello ".utf8), keeping: 8)
        tail.append(Array("world".utf8), keeping: 8)
        #expect(tail.text == "…lo world")
        #expect(CommandHandler.result(Array(" [1, 2] \n".utf8), truncated: false) == Array("[1, 2]".utf8))
        #expect(CommandHandler.result(Array("\n".utf8), truncated: false) == nil)
    }
}

/// Waits for a condition with a deadline (these tests need no services).
enum TestWait {
    static func until(_ what: String, timeout: Duration = .seconds(10), _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("timed out waiting for: \(what)")
                throw CancellationError()
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

/// The split of standard error into progress reports and the error text a failure keeps.
@Suite struct ProgressLinesTests {
    final class Reports: JobProgressSink, @unchecked Sendable {
        let lock = NSLock()
        var seen: [JobProgress?] = []
        func report(job: UUID, attempt: Int, _ progress: JobProgress?) { lock.withLock { seen.append(progress) } }
        func progressURL(job: UUID) -> String? { nil }
    }

    func context(_ sink: Reports) -> JobContext {
        JobContext(job: JobEnvelope(type: "thumbnail", tier: .free, payload: []), logger: Logger(label: "test"),
                   deadline: .now + .seconds(30), consumerID: "test", progressSink: sink)
    }

    @Test func reportLinesGoToTheContextAndTheRestToTheTail() {
        let sink = Reports()
        var lines = ProgressLines()
        var tail = Tail()
        // Chunks cut mid-line, as pipes deliver them.
        for chunk in ["starting\nwarren-prog", "ress 1/4 first\nwarren-heartbeat\nhalf", " a line\nwarren-progress 4/4\n", "last words"] {
            lines.feed(Array(chunk.utf8), tail: &tail, keeping: 4_096, context: context(sink))
        }
        lines.finish(tail: &tail, keeping: 4_096)
        #expect(sink.seen == [JobProgress(done: 1, total: 4, message: "first"), nil, JobProgress(done: 4, total: 4, message: nil)])
        #expect(tail.text == "starting\nhalf a line\nlast words")
    }

    @Test func anOverlongLineIsOutputEvenWithThePrefix() {
        let sink = Reports()
        var lines = ProgressLines()
        var tail = Tail()
        let long = "warren-progress 1/2 " + String(repeating: "x", count: ProgressLines.maxLine + 10) + "\nwarren-progress 2/2\n"
        lines.feed(Array(long.utf8), tail: &tail, keeping: 8_192, context: context(sink))
        #expect(sink.seen == [JobProgress(done: 2, total: 2, message: nil)])
        #expect(tail.bytes.count == ProgressLines.maxLine + 31)
    }
}
