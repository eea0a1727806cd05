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

    /// The main thread's nice (its thread id is the pid): the process's own before anything
    /// here changed it (set by `nice -n`, systemd's `Nice=` or a container runtime). Not the
    /// calling thread's: a pool thread may have come at its QoS's priority.
    package static var current: Int32 {
        #if canImport(Glibc)
        errno = 0
        let value = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(getpid()))
        return errno == 0 ? value : 0
        #else
        return 0
        #endif
    }

    /// Whether this process may lower a thread's nice back to `nice`, found by trying: the
    /// calling thread goes to `nice + 1` and back. The kernel's own answer, whatever grants it
    /// (`CAP_SYS_NICE` in the host's user namespace, not just in `CapEff`; a `RLIMIT_NICE` that
    /// reaches it). When it cannot, the calling thread is left at `nice + 1`: call it on a
    /// thread of its own.
    package static func mayLower(to nice: Int32) -> Bool {
        #if canImport(Glibc)
        guard nice < 19 else { return true }
        let which = __priority_which_t(PRIO_PROCESS.rawValue)
        let me: id_t = 0  // PRIO_PROCESS with 0: the calling thread
        guard setpriority(which, me, nice + 1) == 0 else { return false }
        return setpriority(which, me, nice) == 0
        #else
        return false
        #endif
    }

    /// ``mayLower(to:)`` asked on a throwaway thread, waited for (tests and tools; a service
    /// asks on its keeper's own thread).
    package static func mayLowerFromAnyThread(to nice: Int32) -> Bool {
        let answer = Mutex<Bool?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            answer.withLock { $0 = mayLower(to: nice) }
            done.signal()
        }
        thread.start()
        done.wait()
        return answer.withLock { $0 } ?? false
    }
}

/// Keeps the process's threads at the nice wanted now, on a thread of its own (the syscalls
/// stay off Swift's cooperative pool).
///
/// The process's own nice when it starts is the base (`nice -n 5 consumer` or systemd's
/// `Nice=5`: 5); the keeper adds to it, never overrides it.
///
/// - **Fixed** (`WARREN_NICE=N`): always N, whatever the base.
/// - **Adaptive** (the default for a lower tier's pool): base + the tier's
///   `ProcessPriority.defaultNice(for:)` (WarrenWorker) only while the pool gives way (``yield(_:)``: a tier
///   above it has consumers with room starting jobs, whose latency the cores decide), and the
///   base otherwise. When every tier drains a backlog, each consumer's own capacity is what
///   holds it back, and a niced consumer only makes the broker wait for its acks (the e2e
///   benchmark drained at 0.73 of its rate with free at 10 and premium at 5 throughout).
///   Going back to the base needs the privilege to lower a nice (`CAP_SYS_NICE` in the host's
///   user namespace, or a `RLIMIT_NICE` that reaches it); the keeper's thread tries it on
///   itself first, and without it no thread is ever niced by the keeper and it says so once
///   at startup (`WARREN_NICE=N` still pins).
///
/// Every thread is reniced once a second, whatever the nice: a thread that libdispatch starts
/// comes at its QoS's priority, and one started by a thread still at the old nice during a
/// change inherits the old one.
///
/// ``current`` and the metric `warren_consumer_nice` are the nice applied, not the one wanted.
package final class PriorityKeeper: Sendable {
    /// What is added to the base while yielding (adaptive), or the nice (fixed).
    package let nice: Int32
    /// Whether the nice follows ``yield(_:)`` (false when fixed); it stops following it when
    /// the keeper's thread finds the base could not be restored after yielding.
    package let adaptive: Bool
    /// The process's nice when the keeper was made.
    package let base: Int32
    /// Set by the keeper's thread when it finds it could not lower a nice back to the base:
    /// then it never nices, and ``yield(_:)`` is ignored.
    private let refused = Atomic(false)
    private let wanted: Atomic<Int32>
    private let applied: Atomic<Int32>
    private let gauge = Gauge(label: "warren_consumer_nice")

    package init(fixed nice: Int32) {
        self.nice = nice
        adaptive = false
        base = ProcessPriority.current
        // WARREN_NICE=0 turns the keeper off: the process keeps the nice it was started with.
        wanted = Atomic(nice == 0 ? base : nice)
        applied = Atomic(base)
        gauge.record(Int(base))
    }

    package init(adaptive nice: Int32) {
        let base = ProcessPriority.current
        self.base = base
        self.nice = nice
        adaptive = nice != 0 && base < 19
        wanted = Atomic(base)
        applied = Atomic(base)
        gauge.record(Int(base))
    }

    /// Whether the pool gives way now (ignored unless adaptive).
    package func yield(_ yielding: Bool) {
        guard adaptive, !refused.load(ordering: .relaxed) else { return }
        wanted.store(yielding ? min(19, base + nice) : base, ordering: .relaxed)
    }

    /// The nice wanted now, applied at the next pass.
    package var target: Int32 { wanted.load(ordering: .relaxed) }

    /// The nice applied to every thread at the last pass.
    package var current: Int32 { applied.load(ordering: .relaxed) }

    /// Starts the keeping thread (none when nothing is ever changed): a change is applied
    /// within a quarter of a second, and every thread is reniced once a second.
    package func start(logger: Logger) {
        guard adaptive || (nice != 0 && nice != base) else { return }
        let thread = Thread { [self] in
            if adaptive, !ProcessPriority.mayLower(to: base) {
                // This thread is left at base + 1 and ends: no thread is niced by the keeper.
                refused.store(true, ordering: .relaxed)
                wanted.store(base, ordering: .relaxed)
                logger.warning("adaptive scheduling priority is off: nice \(base) could not be restored after yielding (needs CAP_SYS_NICE or RLIMIT_NICE >= \(20 - base)); WARREN_NICE=N pins a nice")
                return
            }
            var ticks = 0
            var warned = false
            var last = base
            while true {
                let now = wanted.load(ordering: .relaxed)
                if ticks == 0 || now != last || ticks % 4 == 0 {
                    let result = ProcessPriority.renice(to: now)
                    if result.refused == 0 {
                        applied.store(now, ordering: .relaxed)
                        gauge.record(Int(now))
                    } else if !warned {
                        warned = true
                        logger.warning("cannot set the scheduling priority (lowering a nice needs CAP_SYS_NICE or RLIMIT_NICE)",
                                       metadata: ["nice": "\(now)", "refused": "\(result.refused)"])
                    }
                    if ticks == 0 {
                        logger.info("scheduling priority", metadata: [
                            "nice": "\(applied.load(ordering: .relaxed))", "adaptive": "\(adaptive)",
                            "yielding_nice": "\(adaptive ? min(19, base + nice) : nice)", "threads": "\(result.changed)",
                        ])
                    }
                    last = now
                }
                ticks += 1
                Thread.sleep(forTimeInterval: 0.25)
            }
        }
        thread.name = "renice"
        thread.start()
    }
}
