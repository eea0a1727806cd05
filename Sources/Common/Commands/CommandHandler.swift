import Foundation
import Subprocess
import WarrenJobs
import WarrenSupport

#if canImport(System)
import System
#else
import SystemPackage
#endif

/// Runs a job as a program of the user's (`WARREN_EXEC_HANDLERS=thumbnail=/usr/local/bin/make-thumb`):
/// one process per job, started directly (no shell), with the payload on standard input and the
/// job's metadata in its environment (``environment(for:)``).
///
/// - exit 0: success; standard output is the result (``result(_:truncated:)``);
/// - while it runs, a line `warren-progress <done>[/<total>] [message]` or `warren-heartbeat` on
///   standard error reports progress (``JobProgress/parse(line:)``; such lines are not kept as
///   error text), as does a POST to `$WARREN_JOB_PROGRESS_URL` when the worker serves one;
/// - exit 75 (`EX_TEMPFAIL`): retry, with the end of standard error as the error;
/// - any other exit, or death by a signal it was not sent: permanent failure, with the end of
///   standard error (or the status) as the error;
/// - past the handler's timeout the worker cancels the run: the process gets SIGTERM, then
///   SIGKILL after ``Settings/killGrace``, and the run counts as a retryable failure.
///
/// Output is read as it comes, on swift-subprocess's own I/O thread (never the cooperative pool):
/// the first ``Settings/maxOutputBytes`` of standard output and the last ``Settings/maxErrorBytes``
/// of standard error are kept, the rest read and dropped, so a chatty program neither blocks on a
/// full pipe nor grows the worker's memory.
package struct CommandHandler: JobHandler {
    package struct Settings: Sendable, Equatable {
        /// Most of standard output kept as the result.
        package var maxOutputBytes = 65_536
        /// Most of standard error kept (its end) for the error.
        package var maxErrorBytes = 4_096
        /// Between SIGTERM and SIGKILL once the timeout passed.
        package var killGrace: Duration = .seconds(5)
        /// How long one run may take.
        package var timeout: Duration = .seconds(300)

        package init() {}
    }

    /// The exit status that asks for a retry (sysexits.h `EX_TEMPFAIL`).
    package static let retryStatus: CInt = 75

    package let type: String
    package let executable: String
    package let settings: Settings
    /// The worker's own environment, less Warren's settings (they hold the database password).
    private let baseEnvironment: [String: String]

    package init(type: String, executable: String, settings: Settings = Settings(),
                 environment: [String: String] = ProcessInfo.processInfo.environment) {
        Self.ignoreBrokenPipes
        self.type = type
        self.executable = executable
        self.settings = settings
        baseEnvironment = environment.filter { !$0.key.hasPrefix("WARREN_") }
    }

    package var timeout: Duration { settings.timeout }

    /// Writing a payload to a program that closed its input raises SIGPIPE, which ends the whole
    /// worker by default; ignored, the write fails with EPIPE instead (as servers do for sockets).
    private static let ignoreBrokenPipes: Void = { signal(SIGPIPE, SIG_IGN) }()

    /// What the program finds in its environment besides the worker's (less `WARREN_*`).
    package static func metadata(for context: JobContext, timeout: Duration) -> [String: String] {
        var values = [
            "WARREN_JOB_ID": context.jobID,
            "WARREN_JOB_TYPE": context.type,
            "WARREN_JOB_TIER": context.tier.rawValue,
            "WARREN_JOB_ATTEMPT": String(context.attempt),
            "WARREN_JOB_IDEMPOTENCY_KEY": context.idempotencyKey,
            "WARREN_JOB_TIMEOUT_SECONDS": String(timeout.components.seconds),
        ]
        if let tenant = context.tenant { values["WARREN_JOB_TENANT"] = tenant }
        if let progressURL = context.progressURL { values["WARREN_JOB_PROGRESS_URL"] = progressURL }
        return values
    }

    package func environment(for context: JobContext) -> [String: String] {
        baseEnvironment.merging(Self.metadata(for: context, timeout: settings.timeout)) { $1 }
    }

    package func run(_ context: JobContext) async -> JobOutcome {
        var options = PlatformOptions()
        options.teardownSequence = [.gracefulShutDown(allowedDurationToNextStep: settings.killGrace)]
        // Raw entries are C strings: each needs its NUL.
        let environment = Environment.custom(environment(for: context).map { Array("\($0.key)=\($0.value)\0".utf8) })
        let limits = (output: settings.maxOutputBytes, error: settings.maxErrorBytes)
        let run: ExecutionResult<(output: Head, error: Tail), SequenceOutput, SequenceOutput>
        do {
            let payload = context.payload
            run = try await Subprocess.run(.path(FilePath(executable)), environment: environment, platformOptions: options,
                                           input: .inputWriter, output: .sequence, error: .sequence) { execution in
                async let output = Head.read(execution.standardOutput, keeping: limits.output)
                async let error = Tail.read(execution.standardError, keeping: limits.error, reports: context)
                // A program that does not read its input (or exits first) closes the pipe: EPIPE
                // here is its choice, not a failure; its exit status decides.
                do {
                    _ = try await execution.standardInputWriter.write(payload)
                    try await execution.standardInputWriter.finish()
                } catch {
                    try? await execution.standardInputWriter.finish()
                }
                return try await (output, error)
            }
        } catch {
            if Task.isCancelled { return .retry("\(executable): stopped past its timeout (\(settings.timeout))") }
            // Not started (missing, not executable) or its pipes failed: the fleet's fault, not the job's.
            return .retry("\(executable): \(error)")
        }
        let (output, errorTail) = run.closureResult
        let stderr = errorTail.text
        switch run.terminationStatus {
        case .exited(0):
            return .success(result: Self.result(output.bytes, truncated: output.truncated))
        case .exited(Self.retryStatus):
            return .retry(stderr.isEmpty ? "\(executable) exited 75 (retry)" : stderr)
        case .exited(let status):
            return .permanentFailure(error: stderr.isEmpty ? "\(executable) exited \(status)" : stderr)
        case .signaled(let signal):
            if Task.isCancelled { return .retry("\(executable): killed past its timeout (\(settings.timeout))") }
            return .permanentFailure(error: "\(executable) was killed by signal \(signal)" + (stderr.isEmpty ? "" : ": \(stderr)"))
        }
    }

    /// The result of a successful run: standard output itself when it is one JSON value (an
    /// object, array, string, number, ...) and was not cut; otherwise
    /// `{"output": "<the text kept>", "truncated": true|false}`; nothing for no output.
    package static func result(_ output: [UInt8], truncated: Bool) -> [UInt8]? {
        let trimmed = output.trimmingASCIIWhitespace()
        if trimmed.isEmpty && !truncated { return nil }
        if !truncated, (try? JSONScanner.validate(trimmed)) != nil {
            return Array(trimmed)
        }
        return Array(#"{"output":\#(JSONText.quoted(String(decoding: output, as: UTF8.self))),"truncated":\#(truncated)}"#.utf8)
    }
}

/// The first bytes of a stream, up to a limit; the rest is read and dropped.
package struct Head: Sendable {
    package var bytes: [UInt8] = []
    package var truncated = false

    package mutating func append(_ chunk: some Collection<UInt8>, keeping limit: Int) {
        let room = limit - bytes.count
        if chunk.count > room { truncated = true }
        if room > 0 { bytes.append(contentsOf: chunk.prefix(room)) }
    }

    static func read(_ sequence: SubprocessOutputSequence, keeping limit: Int) async throws -> Head {
        var head = Head()
        for try await buffer in sequence {
            buffer.withUnsafeBytes { head.append($0, keeping: limit) }
        }
        return head
    }
}

/// The last bytes of a stream, up to a limit, as text (where a program says why it failed).
package struct Tail: Sendable {
    package var bytes: [UInt8] = []
    package var dropped = false

    package mutating func append(_ chunk: some Collection<UInt8>, keeping limit: Int) {
        bytes.append(contentsOf: chunk.suffix(limit))
        if bytes.count > limit {
            bytes.removeFirst(bytes.count - limit)
            dropped = true
        }
    }

    /// The kept end, trimmed, marked `…` when its start was dropped.
    package var text: String {
        let text = String(decoding: bytes.trimmingASCIIWhitespace(), as: UTF8.self)
        return dropped && !text.isEmpty ? "…" + text : text
    }

    /// Reads standard error to its end, keeping its last `limit` bytes; the progress lines in it
    /// go to `context` instead (see ``ProgressLines``).
    static func read(_ sequence: SubprocessOutputSequence, keeping limit: Int, reports context: JobContext) async throws -> Tail {
        var tail = Tail()
        var lines = ProgressLines()
        for try await buffer in sequence {
            buffer.withUnsafeBytes { lines.feed($0, tail: &tail, keeping: limit, context: context) }
        }
        lines.finish(tail: &tail, keeping: limit)
        return tail
    }
}

/// Splits standard error into lines, passing each `warren-progress` / `warren-heartbeat` line to
/// the job's context and every other byte on to the ``Tail``. A line longer than ``maxLine`` is
/// never a report: it goes to the tail as it comes.
package struct ProgressLines {
    /// The longest line that may still be a report.
    package static let maxLine = 1_024
    private var line: [UInt8] = []
    /// The current line outgrew ``maxLine`` and was passed on.
    private var passing = false

    package init() {}

    package mutating func feed(_ chunk: some Collection<UInt8>, tail: inout Tail, keeping limit: Int, context: JobContext?) {
        var start = chunk.startIndex
        while start != chunk.endIndex {
            let newline = chunk[start...].firstIndex(of: 0x0A)
            let end = newline.map { chunk.index(after: $0) } ?? chunk.endIndex
            let piece = chunk[start..<end]
            start = end
            if passing {
                tail.append(piece, keeping: limit)
                if newline != nil { passing = false }
                continue
            }
            line.append(contentsOf: piece)
            if line.count > Self.maxLine + (newline == nil ? 0 : 1) {
                // Too long to be a report: output, up to its end.
                tail.append(line, keeping: limit)
                line.removeAll(keepingCapacity: true)
                passing = newline == nil
            } else if newline != nil {
                switch JobProgress.parse(line: Substring(String(decoding: line.dropLast(), as: UTF8.self))) {
                case .progress(let progress)?: context?.report(progress)
                case .heartbeat?: context?.report(nil)
                case nil: tail.append(line, keeping: limit)
                }
                line.removeAll(keepingCapacity: true)
            }
        }
    }

    /// The last line, unterminated, is output.
    package mutating func finish(tail: inout Tail, keeping limit: Int) {
        if !line.isEmpty { tail.append(line, keeping: limit) }
        line.removeAll()
    }
}

extension Array where Element == UInt8 {
    fileprivate func trimmingASCIIWhitespace() -> ArraySlice<UInt8> {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return [] }
        return self[first...last]
    }
}
