#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A lower OS scheduling priority (nice) for a lower tier's consumer on a shared host, so the
/// kernel gives the cores to enterprise's consumer first when both want them.
///
/// On Linux nice is per thread: every thread the process has is reniced (`/proc/self/task`).
/// A new thread inherits its creator's, except libdispatch's pool threads, which it gives the
/// priority of their QoS: the consumer renices again every second.
package enum ProcessPriority {
    /// The default by tier (BENCHMARKS.md, tiers): free 10, premium 5, enterprise and an
    /// overflow pool 0.
    package static func defaultNice(for configuration: ConsumerConfiguration) -> Int32 {
        guard configuration.tiers.count == 1, configuration.subscriptionPriority == nil else { return 0 }
        switch configuration.tier {
        case .enterprise: return 0
        case .premium: return 5
        case .free: return 10
        }
    }

    /// Renices every thread now, and again every second on a thread of its own (the syscalls
    /// stay off Swift's cooperative pool) for the pool threads libdispatch starts later.
    /// Returns how many threads the first pass reniced.
    @discardableResult
    package static func keep(at nice: Int32) -> Int {
        guard nice != 0 else { return 0 }
        let thread = Thread {
            while true {
                Thread.sleep(forTimeInterval: 1)
                renice(to: nice)
            }
        }
        thread.name = "renice"
        let first = renice(to: nice)
        thread.start()
        return first
    }

    /// Sets every thread's nice to `nice` (0 changes nothing). Returns how many threads were
    /// reniced; one that cannot be (gone, or not allowed) is skipped.
    @discardableResult
    package static func renice(to nice: Int32) -> Int {
        guard nice != 0 else { return 0 }
        #if canImport(Glibc)
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        var changed = 0
        for task in tasks {
            guard let tid = UInt32(task) else { continue }
            if setpriority(__priority_which_t(PRIO_PROCESS.rawValue), tid, nice) == 0 { changed += 1 }
        }
        return changed
        #else
        return 0
        #endif
    }
}
