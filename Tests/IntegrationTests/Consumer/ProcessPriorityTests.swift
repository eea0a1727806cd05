import Common
import Foundation
import Testing

/// Lower tiers' consumers at a lower OS priority: every thread, including the ones libdispatch
/// starts after the first renice.
@Suite(.enabled(if: TestServices.enabled))
struct ProcessPriorityTests {
    /// The nice value of each of `pid`'s threads (field 19 of /proc/PID/task/TID/stat).
    static func nice(of pid: Int32) -> [Int] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap { task in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            // After "pid (comm)": state is field 3, so nice (19) is the 17th after the parenthesis.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 16 ? Int(fields[16]) : nil
        }
    }

    @Test func aFreeConsumersThreadsRunAtNiceTenAndAnEnterpriseOnesAtZero() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let pools = OverflowPoolTests()
            try await pools.withConsumer(world, id: "free", ["--tier", "free"]) { _, pid in
                // Work makes libdispatch start pool threads; they are caught within a second.
                try await world.publish((0..<500).map { _ in JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8)) })
                try await TestServices.waitUntil(timeout: .seconds(30), "the jobs ran") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 500
                }
                var seen: [Int] = []
                let held = try await TestServices.holds(within: .seconds(10)) {
                    seen = Self.nice(of: pid)
                    return !seen.isEmpty && seen.allSatisfy { $0 == 10 }
                }
                #expect(held, "threads' nice: \(seen)")
            }
            try await pools.withConsumer(world, id: "enterprise", ["--tier", "enterprise"]) { _, pid in
                #expect(!Self.nice(of: pid).contains(10))
            }
            try await pools.withConsumer(world, id: "free-at-0", ["--tier", "free"], environment: ["WARREN_NICE": "0"]) { _, pid in
                #expect(!Self.nice(of: pid).contains(10), "WARREN_NICE=0 keeps the default priority")
            }
        }
    }
}
