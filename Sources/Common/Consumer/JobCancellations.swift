import Foundation
import WarrenSupport

/// The cancellation requests one consumer knows of (from `DELETE /v1/jobs/{id}`), and the
/// running jobs waiting to hear of one.
///
/// Requests arrive three ways: loaded from `api_jobs` when the consumer starts, polled from
/// it every few seconds, and pushed through the `warren.control` fanout exchange the moment
/// they are made. A job is checked before it starts (a requested one is recorded `cancelled`
/// and never run); a running job's ``wait(for:)`` returns true, and the consumer cancels
/// its handler.
package final class JobCancellations: Sendable {
    /// The requested job ids; running jobs park under their id.
    private let lot = ParkingLot<Set<UUID>, UUID, Bool>([])

    package init() {}

    /// Records requests and wakes the running jobs among them. Returns how many were running.
    @discardableResult
    package func request(_ ids: some Sequence<UUID>) -> Int {
        var added = Set<UUID>()
        return lot.resume(updating: { requested in
            for id in ids where requested.insert(id).inserted { added.insert(id) }
        }) { job, _ in added.contains(job) ? true : nil }
    }

    package func isRequested(_ id: UUID) -> Bool { lot.withState { $0.contains(id) } }

    /// Drops a request once the job is recorded `cancelled` (a redelivery of it is then
    /// recognised by its terminal status).
    package func forget(_ id: UUID) { _ = lot.withState { $0.remove(id) } }

    package var count: Int { lot.withState { $0.count } }

    /// Returns true as soon as `job` is asked to cancel (at once if it already was), or false
    /// when the calling task is cancelled first.
    package func wait(for job: UUID) async -> Bool {
        await lot.park(job, cancelled: false) { requested in requested.contains(job) ? true : nil }
    }
}
