import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Records jobs accepted over HTTP without an idempotency key (`api_jobs` rows) with group
/// commit: requests arriving together share one multi-row INSERT (and one WAL flush), so
/// intake is not bound by one Postgres round trip and commit per request.
///
/// A row is written before its job is published, already `published` (the state matters only
/// for idempotency keys), and removed with ``APIJobStore/forget(_:)`` if the broker refuses it.
package final class APIJobRecorder: Sendable {
    private struct Row: Sendable {
        var job: JobEnvelope
        var tenant: String
        var requestID: String
    }

    private let rows: Coalescer<Row, Void>

    /// `maxInFlight` INSERTs at once (each holds a pooled connection).
    package init(pool: PostgresPool, maxInFlight: Int = 2) {
        rows = Coalescer(maxInFlight: maxInFlight, maxBatch: 1_000) { batch in
            do {
                try await pool.query("""
                    INSERT INTO api_jobs (job_id, tenant, type, tier, enqueued_at, request_id, state)
                    SELECT u.*, 'published'
                    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
                         AS u(job_id, tenant, type, tier, enqueued_at, request_id)
                    """, [PostgresArray(batch.map(\.job.id)), PostgresArray(batch.map(\.tenant)),
                          PostgresArray(batch.map(\.job.type)), PostgresArray(batch.map(\.job.tier.rawValue)),
                          PostgresArray(batch.map(\.job.enqueuedAt)), PostgresArray(batch.map(\.requestID))])
                return Array(repeating: .success(()), count: batch.count)
            } catch {
                return Array(repeating: .failure(error), count: batch.count)
            }
        }
    }

    /// Returns once the row is committed.
    package func record(_ job: JobEnvelope, tenant: String, requestID: String) async throws {
        try await rows.submit(Row(job: job, tenant: tenant, requestID: requestID))
    }
}
