import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenSupport

/// Lower tiers' consumers at a lower OS priority while a tier above has latency at stake: every
/// thread, including the ones libdispatch starts after the first renice.
@Suite(.enabled(if: TestServices.enabled),
       .enabled(if: ProcessPriority.current == 0, "the expected nice values assume a test runner at nice 0"))
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

    /// Sets one thread's nice from outside, as a thread the keeper missed would have it.
    static func renice(thread tid: Int32, to value: Int32) -> Bool {
        setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), value) == 0
    }

    /// The nice the test runner (and so every consumer it starts) was started with.
    static let base = ProcessPriority.current

    /// Whether every thread of `pid` is at `value` within `timeout`; the last sample in `seen`.
    static func allAt(_ value: Int, _ pid: Int32, within timeout: Duration, seen: inout [Int]) async throws -> Bool {
        var last: [Int] = []
        let held = try await TestServices.holds(within: timeout) {
            last = Self.nice(of: pid)
            return !last.isEmpty && last.allSatisfy { $0 == value }
        }
        seen = last
        return held
    }

    /// Adaptive by default: a free consumer runs at 0 while no tier above it has consumers with
    /// room, at 10 (every thread, including libdispatch's later ones) while one has, and back at
    /// 0 once their reports stop, or say they are saturated (a backlog every tier drains).
    /// Needs the privilege to lower a nice (root here and in CI); without it the keeper turns
    /// itself off, as the unprivileged test below checks.
    @Test(.enabled(if: ProcessPriority.mayLowerFromAnyThread(to: Self.base), "lowering a nice needs CAP_SYS_NICE: run as root"))
    func aFreeConsumerIsNicedOnlyWhileEnterpriseHasConsumersWithRoom() async throws {
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
                #expect((await status())["nice"] as? Int == 0)

                // A thread left at 10 (one started by a thread still at 10 while the keeper went
                // back to 0 inherits 10) is brought back by the next once-a-second pass.
                // The main thread: it lives as long as the process (a pool thread may end first).
                #expect(Self.renice(thread: pid, to: Self.base + 10))
                let held1 = try await Self.allAt(0, pid, within: .seconds(5), seen: &seen)
                #expect(held1, "the missed thread is back at 0, saw \(seen)")

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

    /// Started at nice 3 (`nice -n 3`, systemd's `Nice=3`): the keeper adds to it, 13 while
    /// yielding and 3 otherwise, never 0.
    @Test(.enabled(if: ProcessPriority.mayLowerFromAnyThread(to: Self.base + 3), "lowering a nice needs CAP_SYS_NICE: run as root"))
    func anOutsideNiceIsTheBaseTheKeeperAddsTo() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            try await OverflowPoolTests().withConsumer(world, id: "free", ["--tier", "free"], launcher: ["/usr/bin/nice", "-n", "3"]) { status, pid in
                var seen: [Int] = []
                let held2 = try await Self.allAt(3, pid, within: .seconds(10), seen: &seen)
                #expect(held2, "started at 3: stays at 3, saw \(seen)")
                #expect((await status())["nice"] as? Int == 3)
                let withRoom = Self.reporting(world, saturated: false)
                let held3 = try await Self.allAt(13, pid, within: .seconds(10), seen: &seen)
                #expect(held3, "yielding: 3 + 10, saw \(seen)")
                #expect((await status())["nice"] as? Int == 13)
                withRoom.cancel()
                _ = await withRoom.value
                let held4 = try await Self.allAt(3, pid, within: .seconds(10), seen: &seen)
                #expect(held4, "back at the base, saw \(seen)")
                #expect((await status())["nice"] as? Int == 3)
            }
        }
    }

    /// Without the privilege to lower a nice, a niced pool could never come back (and the e2e
    /// benchmark drained at 0.73 with pools niced throughout): the adaptive keeper stays off,
    /// the threads at the nice they started with, and `/status` says what is applied.
    @Test func withoutThePrivilegeToLowerANiceTheAdaptiveKeeperStaysOff() async throws {
        // As root: drop CAP_SYS_NICE from the consumer's bounding set and RLIMIT_NICE to 0.
        let launcher = ProcessPriority.mayLowerFromAnyThread(to: Self.base)
            ? ["/usr/bin/prlimit", "--nice=0", "/usr/bin/setpriv", "--bounding-set=-sys_nice"] : []
        try await ConsumerIntegrationTests().withWorld { world in
            try await OverflowPoolTests().withConsumer(world, id: "free", ["--tier", "free"], launcher: launcher) { status, pid in
                let withRoom = Self.reporting(world, saturated: false)
                defer { withRoom.cancel() }
                try await TestServices.waitUntil(timeout: .seconds(10), "the reports are heard: the pool gives way") {
                    ((await status())["admission"] as? [String: Any])?["yielding"] as? Bool == true
                }
                let seen = try await Self.samples(of: pid, for: .seconds(2), stoppingAt: 10)
                #expect(!seen.isEmpty && seen.allSatisfy { $0 == 0 }, "unprivileged: never niced, saw \(seen)")
                #expect((await status())["nice"] as? Int == 0)
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
