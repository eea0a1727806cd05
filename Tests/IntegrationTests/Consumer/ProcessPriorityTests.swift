import Common
import Foundation
import Testing

/// Lower tiers' consumers at a lower OS priority while a tier above has latency at stake: every
/// thread, including the ones libdispatch starts after the first renice.
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

    /// The threads' nice values sampled every 50 ms for `duration` (a keeper applies a change
    /// within 250 ms): the first sample with `value`, or the last one.
    static func samples(of pid: Int32, for duration: Duration, stoppingAt value: Int) async throws -> [Int] {
        let until = ContinuousClock.now + duration
        var seen = nice(of: pid)
        while ContinuousClock.now < until, !seen.contains(value) {
            try await Task.sleep(for: .milliseconds(50))
            seen = nice(of: pid)
        }
        return seen
    }

    /// Sends enterprise pressure reports, as an enterprise consumer starting jobs would, every
    /// 250 ms until cancelled.
    static func reporting(_ world: ConsumerIntegrationTests.World, saturated: Bool) -> Task<Void, Never> {
        Task {
            let report = PressureReport(tier: .enterprise, consumerID: "test-enterprise", p99Milliseconds: 3, jobs: 100, saturated: saturated)
            while !Task.isCancelled {
                _ = await world.connection.publish([ControlMessage.pressure(report).outgoing])
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    /// Adaptive by default: a free consumer runs at 0 while no tier above it has consumers with
    /// room, at 10 (every thread, including libdispatch's later ones) while one has, and back at
    /// 0 once their reports stop, or say they are saturated (a backlog every tier drains).
    @Test func aFreeConsumerIsNicedOnlyWhileEnterpriseHasConsumersWithRoom() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            try await OverflowPoolTests().withConsumer(world, id: "free", ["--tier", "free"]) { status, pid in
                // Work makes libdispatch start pool threads; the keeper catches them.
                try await world.publish((0..<500).map { _ in JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8)) })
                try await TestServices.waitUntil(timeout: .seconds(30), "the jobs ran") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 500
                }
                #expect(!Self.nice(of: pid).contains(10), "no higher tier at work: nice 0")

                var seen: [Int] = []
                let withRoom = Self.reporting(world, saturated: false)
                let niced = try await TestServices.holds(within: .seconds(10)) {
                    seen = Self.nice(of: pid)
                    return !seen.isEmpty && seen.allSatisfy { $0 == 10 }
                }
                #expect(niced, "enterprise with room: every thread at 10, saw \(seen)")
                #expect((await status())["nice"] as? Int == 10)
                withRoom.cancel()
                _ = await withRoom.value

                let back = try await TestServices.holds(within: .seconds(10)) {
                    seen = Self.nice(of: pid)
                    return !seen.isEmpty && seen.allSatisfy { $0 == 0 }
                }
                #expect(back, "reports stopped: back at 0, saw \(seen)")

                // Saturated reports: heard (the board shows the tier at 0 ms), never niced.
                let saturated = Self.reporting(world, saturated: true)
                defer { saturated.cancel() }
                try await TestServices.waitUntil(timeout: .seconds(10), "the saturated reports are heard") {
                    let admission = (await status())["admission"] as? [String: Any]
                    let enterprise = (admission?["watching"] as? [String: Any])?["enterprise"] as? [String: Any]
                    return enterprise?["p99_ms"] as? Int == 0
                }
                seen = try await Self.samples(of: pid, for: .seconds(2), stoppingAt: 10)
                #expect(!seen.contains(10), "every enterprise consumer saturated: not niced, saw \(seen)")
            }
        }
    }

    @Test func warrenNiceFixesThePriorityWhateverTheTiersAbove() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let pools = OverflowPoolTests()
            try await pools.withConsumer(world, id: "free", ["--tier", "free"], environment: ["WARREN_NICE": "10"]) { _, pid in
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
            try await pools.withConsumer(world, id: "free-at-0", ["--tier", "free"], environment: ["WARREN_NICE": "0"]) { status, pid in
                let withRoom = Self.reporting(world, saturated: false)
                defer { withRoom.cancel() }
                try await TestServices.waitUntil(timeout: .seconds(10), "the reports are heard: the pool gives way") {
                    ((await status())["admission"] as? [String: Any])?["yielding"] as? Bool == true
                }
                let seen = try await Self.samples(of: pid, for: .seconds(2), stoppingAt: 10)
                #expect(!seen.contains(10), "WARREN_NICE=0 keeps the default priority, saw \(seen)")
            }
        }
    }
}
