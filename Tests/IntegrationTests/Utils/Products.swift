import Foundation
import Testing

/// Runs the package's executables (`producer`, `consumer`, `scheduler`) as a user would, from
/// the build folder the test bundle sits in (`swift build --build-tests` builds them too).
enum Products {
    struct Output: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func url(_ product: String) throws -> URL {
        let folder = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let url = folder.appendingPathComponent(product)
        guard FileManager.default.isExecutableFile(atPath: url.path) else {
            Issue.record("\(product) is not built next to the tests (\(folder.path)); run `swift build --build-tests`")
            throw CancellationError()
        }
        return url
    }

    /// Runs `product` to completion with `arguments`, extra `environment` and `stdin`, without
    /// blocking the cooperative pool (the wait is a termination handler).
    static func run(_ product: String, _ arguments: [String], environment: [String: String] = [:],
                    stdin: String? = nil) async throws -> Output {
        try await run(executable: try url(product), arguments, environment: environment, stdin: stdin)
    }

    /// The repository's root (for its scripts).
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func run(executable: URL, _ arguments: [String], environment: [String: String] = [:],
                    stdin: String? = nil) async throws -> Output {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["WARREN_ADMIN_PORT": "0"].merging(environment) { $1 }) { $1 }
        let out = Pipe(), err = Pipe(), input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        // Both pipes are read to their end while the process runs (so a full pipe never stalls
        // it), and only their end completes the output: a readability handler can still hold
        // the last chunk when the process has exited, and then stderr loses its tail.
        async let stdoutData = readToEnd(out.fileHandleForReading)
        async let stderrData = readToEnd(err.fileHandleForReading)
        let status: Int32
        do {
            status = try await withCheckedThrowingContinuation { continuation in
                process.terminationHandler = { process in continuation.resume(returning: process.terminationStatus) }
                do {
                    try process.run()
                } catch {
                    continuation.resume(throwing: error)
                    return
                }
                // A product that exits without reading it all is an answer, not a crash (EPIPE:
                // the test process ignores SIGPIPE).
                if let stdin { try? input.fileHandleForWriting.write(contentsOf: Data(stdin.utf8)) }
                try? input.fileHandleForWriting.close()
            }
        } catch {
            // Never started: end the readers (a started process's copies are closed by `run()`).
            try? out.fileHandleForWriting.close()
            try? err.fileHandleForWriting.close()
            _ = await (stdoutData, stderrData)
            throw error
        }
        let (stdout, stderr) = await (String(decoding: stdoutData, as: UTF8.self), String(decoding: stderrData, as: UTF8.self))
        return Output(status: status, stdout: stdout, stderr: stderr)
    }

    /// Reads `handle` to its end on a thread of its own: a blocking read must hold neither a
    /// thread of the cooperative pool nor one of Dispatch's global queues (on Linux only about
    /// as wide as the machine has cores, and URLSession and file handles need them).
    private static func readToEnd(_ handle: FileHandle) async -> Data {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: handle.readDataToEndOfFile()) }.start()
        }
    }
}

/// A product started in the background: signal it, wait for it, read what it printed.
final class RunningProduct: Sendable {
    private let process: Process
    private let collected: OutputCollector
    private let exit: AsyncStream<Int32>

    /// Starts `product`, or `launcher` with the product's path first among its arguments (a
    /// command that execs it, as `nice -n 3` or `setpriv` do, so the pid stays the product's).
    convenience init(_ product: String, _ arguments: [String], environment: [String: String] = [:], launcher: [String] = []) throws {
        try self.init(executable: try Products.url(product), arguments, environment: environment, launcher: launcher)
    }

    /// Starts the program at `executable` (one built outside this package, such as an example's).
    init(executable: URL, _ arguments: [String], environment: [String: String] = [:], launcher: [String] = []) throws {
        process = Process()
        if let command = launcher.first {
            process.executableURL = URL(fileURLWithPath: command)
            process.arguments = launcher.dropFirst() + [executable.path] + arguments
        } else {
            process.executableURL = executable
            process.arguments = arguments
        }
        process.environment = ProcessInfo.processInfo.environment.merging(["WARREN_ADMIN_PORT": "0"].merging(environment) { $1 }) { $1 }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let collected = OutputCollector()
        self.collected = collected
        // Each pipe is read on a thread of its own until its end, never with a readability
        // handler: Foundation's Dispatch source on the pipe kept firing at end of file and,
        // when the handle went away with its source still registered, crashed the whole test
        // process in `_dispatch_event_loop_drain`.
        for (pipe, isError) in [(out, false), (err, true)] {
            let handle = pipe.fileHandleForReading
            Thread {
                while true {
                    let data = handle.availableData
                    if data.isEmpty { break }
                    collected.append(data, error: isError)
                }
            }.start()
        }
        let (stream, continuation) = AsyncStream<Int32>.makeStream(bufferingPolicy: .bufferingNewest(1))
        exit = stream
        process.terminationHandler = { process in
            continuation.yield(process.terminationStatus)
            continuation.finish()
        }
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var stderr: String { collected.text.1 }

    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// The port the product logged under `key` once it listens (`http_port`, `admin_port`, the
    /// stand-in's `port`). Start a server on port 0 and ask this, so no two servers of a
    /// parallel run can race for one port and a test never talks to another test's server.
    /// A product that exits first, or logs nothing within `timeout`, is a recorded issue (and
    /// is killed).
    func listeningPort(_ key: String, timeout: Duration = .seconds(30)) async throws -> Int {
        // A JSON log line (`"key":"123"`) or swift-log's plain one (`key=123`).
        let pattern = try Regex("(?:\"\(key)\":\"|\\b\(key)=)([0-9]+)")
        var port: Int?
        var exited = false
        let name = process.executableURL?.lastPathComponent ?? "product"
        _ = try await TestServices.holds(within: timeout) {
            if let match = stderr.firstMatch(of: pattern), let value = match.output[1].substring.flatMap({ Int($0) }) {
                port = value
            }
            exited = !isRunning
            return port != nil || exited
        }
        guard let port else {
            signal(SIGKILL)
            Issue.record("\(name) \(exited ? "exited" : "did not log its \(key) within \(timeout)"). stderr:\n\(stderr.suffix(4_000))")
            throw CancellationError()
        }
        return port
    }

    /// The exit status (or the signal number for a killed process), within `timeout`.
    func wait(timeout: Duration = .seconds(60)) async throws -> Int32 {
        let stream = exit
        return try await withThrowingTaskGroup(of: Int32?.self) { group in
            group.addTask {
                for await status in stream { return status }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            guard let status = first else {
                self.signal(SIGKILL)
                Issue.record("process did not exit within \(timeout); killed. stderr:\n\(self.stderr.suffix(4_000))")
                throw CancellationError()
            }
            return status
        }
    }
}

private final class OutputCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var out = Data()
    private var err = Data()

    func append(_ data: Data, error: Bool) {
        lock.withLock { if error { err.append(data) } else { out.append(data) } }
    }

    var text: (String, String) {
        lock.withLock { (String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self)) }
    }
}
