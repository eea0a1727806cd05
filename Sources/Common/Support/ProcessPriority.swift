#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Logging
import Metrics
import Synchronization

/// A lower OS scheduling priority (nice) for a lower tier's consumer on a shared host, so the
/// kernel gives the cores to a higher tier's consumer first when both want them.
///
/// On Linux nice is per thread: every thread the process has is reniced (`/proc/self/task`).
/// A new thread inherits its creator's, except libdispatch's pool threads, which it gives the
/// priority of their QoS: the keeper renices again every second.
package enum ProcessPriority {
    /// The nice a pool takes while it gives way (BENCHMARKS.md, tiers): free 10, premium 5,
    /// enterprise and an overflow pool 0 (an overflow pool yields by its consumer priorities).
    package static func defaultNice(for configuration: ConsumerConfiguration) -> Int32 {
        guard configuration.tiers.count == 1, configuration.subscriptionPriority == nil else { return 0 }
        switch configuration.tier {
        case .enterprise: return 0
        case .premium: return 5
        case .free: return 10
        }
    }

    /// Sets every thread's nice to `nice`. Returns how many threads took it and how many
    /// refused (lowering a nice needs `CAP_SYS_NICE` or a `RLIMIT_NICE` that allows it); a
    /// thread that is gone by then counts as neither.
    @discardableResult
    package static func renice(to nice: Int32) -> (changed: Int, refused: Int) {
        #if canImport(Glibc)
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        var changed = 0
        var refused = 0
        for task in tasks {
            guard let tid = UInt32(task) else { continue }
            if setpriority(__priority_which_t(PRIO_PROCESS.rawValue), tid, nice) == 0 {
                changed += 1
            } else if errno == EACCES || errno == EPERM {
                refused += 1
            }
        }
        return (changed, refused)
        #else
        return (0, 0)
        #endif
    }
}

/// Keeps the process's threads at the nice wanted now, on a thread of its own (the syscalls
/// stay off Swift's cooperative pool).
///
/// - **Fixed** (`WARREN_NICE=N`): always N.
/// - **Adaptive** (the default for a lower tier's pool): the tier's ``ProcessPriority/defaultNice(for:)``
///   only while the pool gives way (``yield(_:)``: a tier above it has consumers with room
///   starting jobs, whose latency the cores decide), and 0 otherwise. When every tier drains a
///   backlog, each consumer's own capacity is what holds it back, and a niced consumer only
///   makes the broker wait for its acks (the e2e benchmark drained at 0.73 of its rate with
///   free at 10 and premium at 5 throughout).
///
/// Back to 0 needs the privilege to lower a nice (root, as in the compose services, or
/// `RLIMIT_NICE`); without it the threads stay niced, and it says so once.
///
/// Metric: `warren_consumer_nice` (the nice wanted now).
package final class PriorityKeeper: Sendable {
    /// The nice while yielding (adaptive) or always (fixed).
    package let nice: Int32
    package let adaptive: Bool
    private let wanted: Atomic<Int32>
    private let gauge = Gauge(label: "warren_consumer_nice")

    package init(fixed nice: Int32) {
        self.nice = nice
        adaptive = false
        wanted = Atomic(nice)
        gauge.record(Int(nice))
    }

    package init(adaptive nice: Int32) {
        self.nice = nice
        adaptive = nice != 0
        wanted = Atomic(0)
        gauge.record(0)
    }

    /// Whether the pool gives way now (ignored when fixed).
    package func yield(_ yielding: Bool) {
        guard adaptive else { return }
        let value: Int32 = yielding ? nice : 0
        if wanted.exchange(value, ordering: .relaxed) != value { gauge.record(Int(value)) }
    }

    /// The nice wanted now.
    package var current: Int32 { wanted.load(ordering: .relaxed) }

    /// Starts the keeping thread (nothing to keep when the nice is never other than 0): a
    /// change is applied within a quarter of a second, and every thread is reniced once a
    /// second while the nice is not 0.
    package func start(logger: Logger) {
        guard nice != 0 else { return }
        let first = ProcessPriority.renice(to: current)
        logger.info("scheduling priority", metadata: ["nice": "\(nice)", "adaptive": "\(adaptive)", "threads": "\(first.changed)"])
        let thread = Thread { [self] in
            var applied = current
            var ticks = 0
            var warned = false
            while true {
                Thread.sleep(forTimeInterval: 0.25)
                ticks += 1
                let now = current
                guard now != applied || (now != 0 && ticks % 4 == 0) else { continue }
                let result = ProcessPriority.renice(to: now)
                if now < applied, result.refused > 0, !warned {
                    warned = true
                    logger.warning("cannot raise the scheduling priority back (needs CAP_SYS_NICE or RLIMIT_NICE): threads stay niced; WARREN_NICE=0 turns it off",
                                   metadata: ["nice": "\(now)", "refused": "\(result.refused)"])
                }
                applied = now
            }
        }
        thread.name = "renice"
        thread.start()
    }
}
