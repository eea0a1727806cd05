#if canImport(CMalloc)
import CMalloc
#endif
import Foundation

/// Caps how many malloc arenas glibc keeps for the process.
///
/// glibc gives threads arenas of their own, up to eight per core. A long-running service's
/// threads (the cooperative pool, the AMQP driver, the Postgres workers) free on one thread
/// what another allocated, and the free space scattered over many arenas is not given back:
/// one consumer draining 3,000,000 `noop` jobs grew its anonymous memory from 18 to 22 MB
/// while its live heap (heaptrack) stayed at 9 MB. With as many arenas as cores it stayed flat
/// (BENCHMARKS.md, the soak). `MALLOC_ARENA_MAX`, if set, is glibc's own and wins.
package enum MallocArenas {
    /// Call first thing in a service's `run()`, before it starts threads of its own.
    package static func limit(environment: [String: String] = ProcessInfo.processInfo.environment) {
        #if canImport(CMalloc)
        guard environment["MALLOC_ARENA_MAX"] == nil else { return }
        _ = mallopt(M_ARENA_MAX, Int32(clamping: max(2, ProcessInfo.processInfo.activeProcessorCount)))
        #endif
    }
}
