import Foundation
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// The `job_progress` table: what running jobs last reported, and when they last gave a sign
/// of life (see ``JobProgress``).
package struct ProgressStore: Sendable {
    /// One job's latest news since the last write.
    package struct Row: Sendable, Equatable {
        package var job: UUID
        package var enqueuedAt: Timestamp
        package var attempt: Int
        /// Nil: only a heartbeat since the last write (the stored progress stays).
        package var progress: JobProgress?
        /// When the progress was reported (nil with no progress).
        package var reportedAt: Timestamp?
        package var heartbeatAt: Timestamp

        package init(job: UUID, enqueuedAt: Timestamp, attempt: Int, progress: JobProgress?, reportedAt: Timestamp?, heartbeatAt: Timestamp) {
            self.job = job
            self.enqueuedAt = enqueuedAt
            self.attempt = attempt
            self.progress = progress
            self.reportedAt = reportedAt
            self.heartbeatAt = heartbeatAt
        }
    }

    private let pool: PostgresPool

    package init(pool: PostgresPool) { self.pool = pool }

    /// Writes `rows` in one statement. A heartbeat alone keeps the progress stored; a report of
    /// a later attempt replaces an earlier attempt's; neither moves a heartbeat back.
    package func write(_ rows: [Row]) async throws {
        guard !rows.isEmpty else { return }
        try await pool.query("""
            INSERT INTO job_progress (job_id, enqueued_at, attempt, done, total, message, reported_at, heartbeat_at)
            SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::integer[], $4::bigint[], $5::bigint[], $6::text[],
                                 $7::timestamptz[], $8::timestamptz[])
            ON CONFLICT (job_id) DO UPDATE SET
                attempt = greatest(job_progress.attempt, EXCLUDED.attempt),
                done = CASE WHEN EXCLUDED.reported_at IS NULL THEN job_progress.done ELSE EXCLUDED.done END,
                total = CASE WHEN EXCLUDED.reported_at IS NULL THEN job_progress.total ELSE EXCLUDED.total END,
                message = CASE WHEN EXCLUDED.reported_at IS NULL THEN job_progress.message ELSE EXCLUDED.message END,
                reported_at = coalesce(EXCLUDED.reported_at, job_progress.reported_at),
                heartbeat_at = greatest(job_progress.heartbeat_at, EXCLUDED.heartbeat_at)
            """, [PostgresArray(rows.map(\.job)), PostgresArray(rows.map(\.enqueuedAt)), PostgresArray(rows.map(\.attempt)),
                  PostgresArray(rows.map { $0.progress?.done }), PostgresArray(rows.map { $0.progress?.total }),
                  PostgresArray(rows.map { $0.progress?.message }), PostgresArray(rows.map(\.reportedAt)),
                  PostgresArray(rows.map(\.heartbeatAt))])
    }

    /// Deletes the rows of jobs enqueued before the retention horizon. Returns how many went.
    @discardableResult
    package func prune(batchSize: Int = 10_000) async throws -> Int {
        try await Retention.deleteInPages("""
            DELETE FROM job_progress WHERE job_id IN (
                SELECT job_id FROM job_progress WHERE enqueued_at < \(Retention.horizonSQL) LIMIT $1)
            """, pageSize: batchSize, pool: pool)
    }
}
