import Foundation
import Testing

/// `./infra/local/run` keeps to loopback, as the README says: its admin ports listened on
/// 0.0.0.0 (the products' own default, for containers). The script starts a broker and a
/// database on fixed ports, so this reads it: the defaults it exports before it starts the
/// first fleet member, evaluated by bash with none of them set.
@Suite struct LocalRunTests {
    @Test func theFleetItStartsListensOnLoopbackOnly() async throws {
        let script = try String(contentsOf: Products.repositoryRoot.appendingPathComponent("infra/local/run"), encoding: .utf8)
        let lines = script.split(separator: "\n").map(String.init)
        let firstStart = try #require(lines.firstIndex { $0.hasPrefix("start_fleet_member ") }, "the script starts a fleet")
        let exports = lines[..<firstStart].filter { $0.hasPrefix("export WARREN_") || $0.hasPrefix(": \"${WARREN_") }
        let hosts = ["WARREN_ADMIN_HOST", "WARREN_HTTP_HOST", "WARREN_STANDIN_HOST"]
        // The HTTP host is exported after the consumers start, just before `producer serve`.
        let httpExport = lines.filter { $0.hasPrefix("export WARREN_HTTP_PORT WARREN_HTTP_HOST=") }
        let program = (exports + httpExport).joined(separator: "\n") + "\n" + hosts.map { "echo \"\($0)=${\($0):-unset}\"" }.joined(separator: "\n")
        let result = try await Products.run(executable: URL(fileURLWithPath: "/usr/bin/env"),
                                            ["-u", "WARREN_ADMIN_HOST", "-u", "WARREN_HTTP_HOST", "-u", "WARREN_STANDIN_HOST",
                                             "bash", "-c", program])
        #expect(result.status == 0, "\(result.stderr)")
        let values = Dictionary(uniqueKeysWithValues: result.stdout.split(separator: "\n").compactMap { line -> (String, String)? in
            let parts = line.split(separator: "=", maxSplits: 1)
            return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
        })
        #expect(values["WARREN_ADMIN_HOST"] == "127.0.0.1", "\(values)")
        #expect(values["WARREN_HTTP_HOST"] == "127.0.0.1", "\(values)")
        // notify-standin's own default is loopback; the script must not widen it.
        #expect(values["WARREN_STANDIN_HOST"] == "unset" || values["WARREN_STANDIN_HOST"] == "127.0.0.1", "\(values)")
    }
}
