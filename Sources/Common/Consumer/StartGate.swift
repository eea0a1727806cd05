import Logging
import Synchronization
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// Claims deliveries' starts in Postgres before they run (``JobRunStore/claimStarts(_:)``),
/// as a group commit: the deliveries that arrive together share one statement.
///
/// The consumer sends through here every delivery whose start must be decided against
/// others: one the broker redelivered or a consumer republished (its job may have moved
/// on: one lineage per job), and one that can be cancelled over the API (it has a tenant:
/// cancellation and start meet on its row). Others start without the round trip.
package final class StartGate: Sendable {
    private let coalescer: Coalescer<JobRunStore.Start, JobRunStore.StartClaim>

    /// `stopping` ends the retries of a claim Postgres cannot take now (it is then handed back).
    package init(store: JobRunStore, logger: Logger, stopping: @escaping @Sendable () -> Bool) {
        let backoff = Backoff(base: .milliseconds(100), cap: .seconds(5), floor: .milliseconds(50))
        coalescer = Coalescer(maxInFlight: 2, maxBatch: 500) { starts in
            var decided: [Int: Result<JobRunStore.StartClaim, any Error>] = [:]
            let indexed = Array(starts.enumerated())
            var attempt = 0
            while true {
                do {
                    // A start Postgres refuses for its data must not hold the others back.
                    let refused = try await BatchIsolation.isolate(indexed[...], write: { slice in
                        let claims = try await store.claimStarts(slice.map(\.element))
                        for (entry, claim) in zip(slice, claims) { decided[entry.offset] = .success(claim) }
                    }, isDataError: { ($0 as? PostgresError)?.isDataError == true })
                    for (entry, error) in refused { decided[entry.offset] = .failure(error) }
                    break
                } catch {
                    if stopping() {
                        return starts.map { _ in .failure(error) }
                    }
                    let delay = backoff.delay(attempt: attempt)
                    attempt += 1
                    logger.warning("cannot claim job starts; retrying", metadata: [
                        "jobs": "\(starts.count)", "retry_in_ms": "\(delay.milliseconds)", "error": "\(error)",
                    ])
                    try? await Task.sleep(for: delay)
                }
            }
            return starts.indices.map { decided[$0] ?? .failure(CoalescerError.noResult) }
        }
    }

    /// Whether `start` may run. Throws when Postgres could not decide (the caller hands the
    /// delivery back rather than risk a second run).
    package func claim(_ start: JobRunStore.Start) async throws -> JobRunStore.StartClaim {
        try await coalescer.submit(start)
    }

    /// Whether a delivery must be claimed before it runs.
    package static func mustClaim(_ job: JobEnvelope, redelivered: Bool) -> Bool {
        redelivered || job.seq > 0 || job.tenant != nil
    }
}

/// A flag set once (shutdown began), read from any thread.
package final class StopFlag: Sendable {
    private let atomic = Atomic<Bool>(false)
    package init() {}
    package func set() { atomic.store(true, ordering: .relaxed) }
    package var isSet: Bool { atomic.load(ordering: .relaxed) }
}
