import Foundation
import Testing

/// Runs a piece of bash with `infra/local/lib.sh` sourced (or one of the `infra/local`
/// scripts), as the helpers that start services of a test's own do (``OwnRabbitMQ``,
/// ``OwnCluster``).
enum LocalScript {
    /// Runs `body` (bash, `set -euo pipefail`, lib.sh sourced) with `arguments` as `$1...`.
    /// Output goes to `log`, never a pipe: a server the script starts inherits the script's
    /// standard output and error, so a pipe would never reach end of file. Returns the
    /// script's standard output lines written to `$WARREN_SCRIPT_OUT` (a file).
    @discardableResult
    static func run(_ body: String, _ arguments: [String] = [], log: URL,
                    environment: [String: String] = [:]) async throws -> String {
        let lib = Products.repositoryRoot.appendingPathComponent("infra/local/lib.sh").path
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let output = try FileHandle(forWritingTo: log)
        defer { try? output.close() }
        try output.seekToEnd()
        let result = log.deletingLastPathComponent().appendingPathComponent("script-\(UUID().uuidString.prefix(8)).out")
        defer { try? FileManager.default.removeItem(at: result) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        // Foundation notices a child's exit when a socket the child inherits closes; a server
        // would inherit it too and keep it open, so the script closes every descriptor above 2.
        let closeInherited = #"for fd in /proc/$$/fd/*; do n=${fd##*/}; if ((n > 2)); then eval "exec $n>&-" 2>/dev/null || true; fi; done"#
        process.arguments = ["-c", "\(closeInherited); set -euo pipefail; source '\(lib)'; \(body)", "local-script"] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            .merging(["WARREN_SCRIPT_OUT": result.path]) { $1 }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = output
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do { try process.run() } catch { continuation.resume(throwing: error) }
        }
        guard status == 0 else {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            Issue.record("infra/local script failed (\(status)): \(text.suffix(2_000))")
            throw CancellationError()
        }
        return (try? String(contentsOf: result, encoding: .utf8)) ?? ""
    }

    /// A loopback port `p` such that `p`, `p + 20000` and `p + 21000` are all free (a RabbitMQ
    /// node's AMQP, Erlang distribution and epmd ports, as lib.sh derives them).
    static func freeNodePort(span: Int = 1) throws -> Int {
        for _ in 0..<200 {
            let base = Int.random(in: 10_000..<(44_000 - span))
            let ports = (0..<span).flatMap { [base + $0, base + $0 + 20_000, base + $0 + 21_000] }
            if ports.allSatisfy(isFree) { return base }
        }
        throw POSIXError(.EADDRNOTAVAIL)
    }

    static func isFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
