import Foundation

/// Jobs held in Postgres until their `run_at` (`delayed_jobs`): accepted by
/// `POST /v1/jobs` with `run_at` / `delay_seconds` or by `producer publish --at/--in`, and
/// published by the scheduler's leader when due.
package struct DelayedJobStore: Sendable {
    package let pool: PostgresPool

    /// The furthest ahead a job may be delayed.
    package static let maxDelaySeconds: Int64 = 366 * 86_400

    package init(pool: PostgresPool) { self.pool = pool }

    /// Holds `job` until `job.enqueuedAt` (its run time). Runs inside the caller's transaction
    /// when given one, so the API can record its own row in the same commit.
    package static func hold(_ job: JobEnvelope, on connection: PostgresConnection) async throws {
        try await connection.query("""
            INSERT INTO delayed_jobs (job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """, [job.id, job.tenant, job.type, job.tier.rawValue, String(decoding: job.payload, as: UTF8.self),
                  job.idempotencyKey, job.correlationID, job.enqueuedAt])
    }

    package func hold(_ job: JobEnvelope) async throws {
        try await pool.withConnection { try await Self.hold(job, on: $0) }
    }

    /// Stops a job that is still held; true when it was (so it will never be published).
    package static func cancel(_ id: UUID, on connection: PostgresConnection) async throws -> Bool {
        !(try await connection.query(
            "UPDATE delayed_jobs SET state = 'cancelled' WHERE job_id = $1 AND state = 'pending' RETURNING job_id", [id]).rows.isEmpty)
    }

    /// One round of the leader's dispatcher: claims up to `limit` jobs due at `now`, oldest
    /// first (`FOR UPDATE SKIP LOCKED`, so a second dispatcher skips them), hands them to
    /// `publish`, and marks published, in the same transaction, those whose index `publish`
    /// returns (the confirmed ones). The rest stay pending for the next round, under the
    /// same job id. Returns the jobs claimed and the published ones' lateness in seconds.
    package func dispatchDue(now: Timestamp, limit: Int = 1_000,
                             publish: ([JobEnvelope]) async -> [Int]) async throws -> (claimed: Int, lateness: [Double]) {
        try await pool.withTransaction { connection in
            let rows = try await connection.query("""
                SELECT job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at
                FROM delayed_jobs WHERE state = 'pending' AND run_at <= $1
                ORDER BY run_at LIMIT $2
                FOR UPDATE SKIP LOCKED
                """, [now, limit]).rows
            let jobs = try rows.map { row -> JobEnvelope in
                guard let tier = Tier(rawValue: try row.string(3)) else {
                    throw PostgresError(.decoding, function: "delayed_jobs.tier", message: "unknown tier")
                }
                return JobEnvelope(type: try row.string(2), tier: tier, payload: Array(try row.string(4).utf8), tenant: row[1],
                                   idempotencyKey: row[5], correlationID: row[6], enqueuedAt: try row.timestamp(7),
                                   id: try row.uuid(0))
            }
            guard !jobs.isEmpty else { return (0, []) }
            let confirmed = await publish(jobs).map { jobs[$0] }
            guard !confirmed.isEmpty else { return (jobs.count, []) }
            let published = try await connection.query("""
                UPDATE delayed_jobs SET state = 'published', published_at = clock_timestamp()
                WHERE job_id = ANY($1::uuid[])
                RETURNING extract(epoch FROM published_at - run_at)::float8
                """, [PostgresArray(confirmed.map(\.id))]).rows
            return (jobs.count, try published.map { try $0.double(0) })
        }
    }

    /// Deletes published and cancelled rows older than `days` (the partition retention).
    @discardableResult
    package func prune(olderThanDays days: Int) async throws -> Int {
        try await pool.query("""
            DELETE FROM delayed_jobs WHERE state <> 'pending' AND coalesce(published_at, created_at) < now() - make_interval(days => $1)
            """, [days]).affectedRows
    }

    /// Jobs held and not yet due, for `/status`.
    package func pendingCount() async throws -> Int {
        try await pool.query("SELECT count(*) FROM delayed_jobs WHERE state = 'pending'").rows.first?.int(0) ?? 0
    }
}
