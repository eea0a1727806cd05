import Foundation
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Jobs accepted over HTTP (`api_jobs`): idempotency-key claims and what `GET /v1/jobs/{id}`
/// reports, joined with the consumer's `job_runs`.
package struct APIJobStore: Sendable {
    package let pool: PostgresPool

    /// How long a tenant's idempotency key maps to its first job.
    package static let idempotencyWindowHours = 24

    package init(pool: PostgresPool) { self.pool = pool }

    package enum Claim: Sendable, Equatable {
        /// This request owns the job: publish it, then `markPublished` (or `release` on failure).
        case claimed
        /// The key was used within the window: the first job.
        case existing(id: UUID, pending: Bool)
        /// Asked to be unique while running, and a job of its concurrency key is unfinished:
        /// nothing recorded. `holder` is that job when it is the same tenant's (another
        /// tenant's job is not named).
        case keyBusy(holder: UUID?)
    }

    /// Thrown inside a claim's transaction to roll it back when the key is busy.
    private struct KeyBusy: Error { var holder: UUID?; var tenant: String }

    /// Records `job` for `tenant`; with an idempotency key used in the last 24 h, returns the
    /// first job instead (one statement, so concurrent requests agree). A claimed job is also
    /// an outbox entry (``Outbox/hold(_:leaseSeconds:on:)`` with a lease, same commit):
    /// the caller publishes it, then ``Outbox/markPublished(_:)``; if the confirm never
    /// comes, the scheduler's leader publishes it again under the same id once the lease ends.
    ///
    /// With `unique` (the job's `concurrency_key` is set), the key is taken in the same commit
    /// (``takeUniqueKey(_:job:on:)``), or the claim is ``Claim/keyBusy(holder:)`` and nothing is
    /// recorded. An idempotency key is looked at first: a retried request gets its own job back.
    package func claim(_ job: JobEnvelope, tenant: String, requestID: String, unique: Bool = false) async throws -> Claim {
        try await record(job, tenant: tenant, requestID: requestID, state: "pending", unique: unique) { connection in
            try await Outbox.hold(job, leaseSeconds: Outbox.publishLeaseSeconds, on: connection)
        }
    }

    /// A delayed job (run_at / delay_seconds): its row, recorded `published` (accepted for
    /// good), and its `delayed_jobs` row, in one transaction; or the first job of its key.
    /// `unique` as in ``claim(_:tenant:requestID:unique:)``: a scheduled job holds its key.
    package func hold(_ job: JobEnvelope, tenant: String, requestID: String, unique: Bool = false) async throws -> Claim {
        try await record(job, tenant: tenant, requestID: requestID, state: "published", unique: unique) { connection in
            try await Outbox.hold(job, on: connection)
        }
    }

    /// One transaction: the `api_jobs` row, the unique key if asked, then `entry` (the outbox
    /// row); a busy key rolls it all back and is answered as ``Claim/keyBusy(holder:)``.
    private func record(_ job: JobEnvelope, tenant: String, requestID: String, state: String, unique: Bool,
                        entry: @escaping @Sendable (PostgresConnection) async throws -> Void) async throws -> Claim {
        do {
            return try await pool.withTransaction { connection in
                let claim = try await Self.claim(job, tenant: tenant, requestID: requestID, state: state, on: connection)
                guard claim == .claimed else { return claim }
                if unique {
                    guard let key = job.concurrencyKey else { throw JobError(field: "unique", message: "unique needs a concurrency_key") }
                    try await Self.takeUniqueKey(key, job: job.id, on: connection)
                }
                try await entry(connection)
                return claim
            }
        } catch let busy as KeyBusy {
            return .keyBusy(holder: busy.tenant == tenant ? busy.holder : nil)
        }
    }

    /// Makes `job` the holder of `key` in `unique_keys`, or throws ``KeyBusy`` while the holder
    /// is unfinished. A key nobody holds is inserted (two requests at once: the second waits
    /// for the first's commit, then sees its job); a finished holder's row (succeeded, failed,
    /// dead, cancelled, or gone past retention) is taken over under a row lock.
    private static func takeUniqueKey(_ key: String, job: UUID, on connection: PostgresConnection) async throws {
        while true {
            let inserted = try await connection.query("""
                INSERT INTO unique_keys (key, job_id) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING 1
                """, [key, job]).rows
            if !inserted.isEmpty { return }
            let holder = try await connection.query("""
                SELECT u.job_id, a.tenant,
                       \(reportedStatus) IN \(JobStatus.terminalSQL) OR \(expired)
                FROM unique_keys u
                JOIN api_jobs a ON a.job_id = u.job_id
                LEFT JOIN job_runs r ON r.job_id = a.job_id AND r.enqueued_at = a.enqueued_at
                WHERE u.key = $1
                FOR UPDATE OF u
                """, [key]).rows
            guard let row = holder.first else { continue }  // its job went (and the row with it) meanwhile: insert again
            guard try row.bool(2) else { throw KeyBusy(holder: try row.uuid(0), tenant: row[1] ?? "") }
            try await connection.query("UPDATE unique_keys SET job_id = $2, created_at = now() WHERE key = $1", [key, job])
            return
        }
    }

    private static func claim(_ job: JobEnvelope, tenant: String, requestID: String, state: String,
                              on connection: PostgresConnection) async throws -> Claim {
        let rows = try await connection.query("""
            INSERT INTO api_jobs (job_id, tenant, type, tier, enqueued_at, idempotency_key, request_id, state)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $9)
            ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL
            DO UPDATE SET job_id = EXCLUDED.job_id, type = EXCLUDED.type, tier = EXCLUDED.tier,
                          enqueued_at = EXCLUDED.enqueued_at, request_id = EXCLUDED.request_id,
                          state = EXCLUDED.state, created_at = now(), batch_id = NULL
                WHERE api_jobs.created_at < now() - make_interval(hours => $8::int)
                  -- a delayed job still held keeps its key until it is published
                  AND NOT EXISTS (SELECT 1 FROM delayed_jobs d WHERE d.job_id = api_jobs.job_id AND d.state = 'pending')
            RETURNING job_id
            """, [job.id, tenant, job.type, job.tier.rawValue, job.enqueuedAt, job.idempotencyKey, requestID,
                  idempotencyWindowHours, state]).rows
        if !rows.isEmpty { return .claimed }
        // Pending until a confirm was seen (by the request or by the leader's republish); never
        // taken as published on a timer.
        let existing = try await connection.query("""
            SELECT job_id, state = 'pending' FROM api_jobs WHERE tenant = $1 AND idempotency_key = $2
            """, [tenant, job.idempotencyKey]).rows
        guard let row = existing.first else {
            return try await claim(job, tenant: tenant, requestID: requestID, state: state, on: connection)
        }
        return .existing(id: try row.uuid(0), pending: try row.bool(1))
    }

    package func markPublished(_ id: UUID) async throws {
        try await pool.query("UPDATE api_jobs SET state = 'published' WHERE job_id = $1", [id])
    }

    /// A keyed job's outbox entry, once its confirm came: see ``claim(_:tenant:requestID:)``.
    package func markKeyedPublished(_ id: UUID) async throws {
        try await Outbox(pool: pool).markPublished([id])
    }

    /// A keyed job the broker definitely did not take: its claim and outbox entry dropped.
    package func releaseKeyed(_ id: UUID) async throws {
        try await Outbox(pool: pool).release(id)
    }

    /// Drops the row of a job the broker refused (recorded by ``APIJobRecorder``).
    package func forget(_ id: UUID) async throws {
        try await pool.query("DELETE FROM api_jobs WHERE job_id = $1", [id])
    }

    /// Drops a claim whose publish failed, so the client's retry can succeed.
    package func release(_ id: UUID) async throws {
        try await pool.query("DELETE FROM api_jobs WHERE job_id = $1 AND state = 'pending'", [id])
    }

    // MARK: - Retention

    /// An `api_jobs` row `a` past the retention horizon: enqueued and recorded before it (its
    /// `job_runs` row is in a dropped partition) and not a delayed job still held (that one is
    /// published later, whatever its age).
    static let expired = """
        (a.enqueued_at < \(Retention.horizonSQL) AND a.created_at < \(Retention.horizonSQL)
         AND NOT EXISTS (SELECT 1 FROM delayed_jobs held WHERE held.job_id = a.job_id AND held.state = 'pending'))
        """

    /// Deletes the rows past the retention horizon (``Retention``), `batchSize` at a time; a
    /// batch's jobs stay while their batch does (``APIBatchStore/prune(batchSize:)`` goes
    /// first), so a batch never looks complete for lack of jobs. Returns how many went.
    @discardableResult
    package func prune(batchSize: Int = 10_000) async throws -> Int {
        try await Retention.deleteInPages("""
            DELETE FROM api_jobs WHERE job_id IN (
                SELECT a.job_id FROM api_jobs a
                WHERE \(Self.expired)
                  AND (a.batch_id IS NULL OR NOT EXISTS (SELECT 1 FROM api_batches b WHERE b.batch_id = a.batch_id))
                LIMIT $1)
            """, pageSize: batchSize, pool: pool)
    }

    /// Deletes the cancellation requests of jobs enqueued before the retention horizon (they
    /// go with their job's history, whatever published the job). Returns how many went.
    @discardableResult
    package func pruneCancellations(batchSize: Int = 10_000) async throws -> Int {
        try await Retention.deleteInPages("""
            DELETE FROM job_cancellations WHERE job_id IN (
                SELECT job_id FROM job_cancellations WHERE enqueued_at < \(Retention.horizonSQL) LIMIT $1)
            """, pageSize: batchSize, pool: pool)
    }

    // MARK: - Cancellation

    package enum CancelRequest: Sendable, Equatable {
        /// Not the tenant's job (or no such job).
        case notFound
        /// Already in a terminal status: nothing to cancel.
        case finished(status: String)
        /// Recorded; `status` is what the job was doing (`scheduled`, `queued`, `retrying` or `running`).
        case requested(status: String, tier: Tier)
    }

    /// Records a cancellation request for `tenant`'s job unless it already finished. Asking
    /// again is harmless (the first request's time stays).
    ///
    /// The answer is exact: a waiting job (no row, `queued` or `retrying`) gets a `cancelled`
    /// row in the same statement that decides it, on the row every consumer claims before
    /// starting a job that can be cancelled (``JobRunStore/claimStarts(_:)``). The primary key
    /// serialises the two writes, so either the cancellation wins (`requested` with the
    /// waiting status: no consumer can start it any more) or the start did (`running`: the
    /// caller signals the running job).
    package func requestCancellation(of id: UUID, tenant: String) async throws -> CancelRequest {
        do {
            return try await requestCancellationOnce(of: id, tenant: tenant)
        } catch let error as PostgresError where error.isNoPartition {
            // The job's day (a job delayed far ahead) or today's log partition is not made yet.
            guard let row = try await pool.query("SELECT enqueued_at FROM api_jobs WHERE job_id = $1", [id]).rows.first else {
                throw error
            }
            let partitions = PartitionManager(logger: pool.logger)
            for day in Set([PartitionManager.Day(try row.timestamp(0)), PartitionManager.Day(.now())]).sorted() {
                for table in PartitionManager.Table.allCases { try await partitions.ensure(table: table, day: day, pool: pool) }
            }
            return try await requestCancellationOnce(of: id, tenant: tenant)
        }
    }

    private func requestCancellationOnce(of id: UUID, tenant: String) async throws -> CancelRequest {
        try await pool.withTransaction { connection in
            let rows = try await connection.query("""
                SELECT a.tier, a.type, a.enqueued_at, a.idempotency_key, coalesce(r.status, 'queued')
                FROM api_jobs a LEFT JOIN job_runs r ON r.job_id = a.job_id AND r.enqueued_at = a.enqueued_at
                WHERE a.job_id = $1 AND a.tenant = $2 AND NOT \(Self.expired)
                FOR UPDATE OF a
                """, [id, tenant]).rows
            // A job past the retention horizon is gone, as for GET (404).
            guard let row = rows.first, let tier = Tier(rawValue: try row.string(0)) else { return .notFound }
            let before = try row.string(4)
            // Cancelling a cancelled job answers as the first time did (DELETE is idempotent).
            if before == JobStatus.cancelled.rawValue { return .requested(status: "queued", tier: tier) }
            if JobStatus(rawValue: before)?.isTerminal ?? false { return .finished(status: before) }
            try await connection.query("""
                INSERT INTO job_cancellations (job_id, enqueued_at, tier, tenant) VALUES ($1, $2, $3, $4)
                ON CONFLICT (job_id) DO NOTHING
                """, [id, row[2], tier.rawValue, tenant])
            // A delayed job still held is simply never published.
            let held = try await Outbox.cancel(id, on: connection)
            let cancelled = try await connection.query(Self.cancelWaiting, [id, row[2], row[1], tier.rawValue, tenant, row[3]]).rows
            if !cancelled.isEmpty {
                return .requested(status: held ? "scheduled" : before == JobStatus.running.rawValue ? "queued" : before, tier: tier)
            }
            // The row moved on since it was read: a consumer started it, or it finished.
            let now = try await connection.query("SELECT status FROM job_runs WHERE job_id = $1 AND enqueued_at = $2", [id, row[2]])
                .rows.first?.string(0) ?? "queued"
            if JobStatus(rawValue: now)?.isTerminal ?? false { return .finished(status: now) }
            return .requested(status: now, tier: tier)
        }
    }

    /// A `cancelled` row for a job that has not started (no row, `queued`, `retrying`); no row
    /// returned when it runs or finished. Its `message_logs` event is written with it.
    static let cancelWaiting = """
        WITH cancelled AS (
            INSERT INTO job_runs (job_id, enqueued_at, type, tier, tenant, idempotency_key, status, attempts, error,
                                  finished_at, updated_at)
            VALUES ($1::uuid, $2::timestamptz, $3, $4, $5, $6, 'cancelled', 0, 'cancelled before it started', now(), now())
            ON CONFLICT (job_id, enqueued_at) DO UPDATE SET
                status = 'cancelled', error = 'cancelled before it started', finished_at = now(), updated_at = now()
            WHERE job_runs.status IN ('queued', 'retrying')
            RETURNING job_id, enqueued_at, attempts, tier
        ), logged AS (
            INSERT INTO message_logs (job_id, enqueued_at, event, attempt, tier, detail)
            SELECT job_id, enqueued_at, 'cancelled', attempts, tier, '{"when": "before start"}'::jsonb FROM cancelled
        )
        SELECT job_id FROM cancelled
        """

    /// Jobs of `tier` asked to cancel that have not finished: what a consumer loads at start.
    package func openCancellations(tier: Tier) async throws -> [UUID] {
        try await cancellations(tier: tier, withinSeconds: nil)
    }

    /// Requests made in the last `seconds` for jobs of `tier` not yet finished.
    package func recentCancellations(tier: Tier, seconds: Int) async throws -> [UUID] {
        try await cancellations(tier: tier, withinSeconds: seconds)
    }

    /// `withinSeconds` nil: every open request. A value, never SQL text: it is a parameter.
    private func cancellations(tier: Tier, withinSeconds: Int?) async throws -> [UUID] {
        try await pool.query("""
            SELECT c.job_id FROM job_cancellations c
            WHERE c.tier = $1
              AND ($2::int IS NULL OR c.requested_at > now() - make_interval(secs => $2::int))
              -- past retention its job_runs row is gone: the request is not open, however it looks
              AND c.enqueued_at >= \(Retention.horizonSQL)
              AND NOT EXISTS (SELECT 1 FROM job_runs r WHERE r.job_id = c.job_id AND r.enqueued_at = c.enqueued_at
                                AND r.status IN \(JobStatus.terminalSQL))
            """, [tier.rawValue, withinSeconds]).rows.map { try $0.uuid(0) }
    }

    /// What `GET /v1/jobs/{id}`: the job's status (`queued` until a consumer records
    /// it), attempts, result or error, timings. Nil unless the job is `tenant`'s.
    /// The status a client sees: `queued` until a consumer records the job, and `cancelled`
    /// at once for a job asked to cancel while waiting (queued or between retries), since it
    /// will never run again.
    static let reportedStatus = """
        CASE WHEN coalesce(r.status, 'queued') IN ('queued', 'retrying')
                  AND EXISTS (SELECT 1 FROM job_cancellations c WHERE c.job_id = a.job_id)
             THEN 'cancelled' ELSE coalesce(r.status, 'queued') END
        """

    /// A delayed job not yet published is `scheduled`, and its `run_at` is set. A job enqueued
    /// before the retention horizon is not found (nil), pruned or not yet: its `job_runs` row is
    /// gone, and it would otherwise read `queued`.
    ///
    /// `progress` is what the job last reported (``JobProgress``), and `stalled` ("t") says a
    /// `running` job neither reported nor heartbeat for `stallSeconds` since its start.
    package func status(of id: UUID, tenant: String, stallSeconds: Int) async throws -> [String: String?]? {
        let rows = try await pool.query("""
            SELECT a.job_id, a.type, a.tier,
                   CASE WHEN d.state = 'pending' AND d.run_at > a.created_at AND r.status IS NULL THEN 'scheduled' ELSE \(Self.reportedStatus) END,
                   coalesce(r.attempts, 0), r.result::text, r.error,
                   a.enqueued_at, r.started_at, r.finished_at, a.idempotency_key,
                   -- an outbox entry due at once (a keyed job, a replay, a retry now) is no delay
                   CASE WHEN d.run_at > a.created_at THEN d.run_at END,
                   p.done, p.total, p.message, p.reported_at,
                   r.status = 'running' AND greatest(r.started_at, p.heartbeat_at) < now() - make_interval(secs => $3)
            FROM api_jobs a
            LEFT JOIN job_runs r ON r.job_id = a.job_id AND r.enqueued_at = a.enqueued_at
            LEFT JOIN delayed_jobs d ON d.job_id = a.job_id
            LEFT JOIN job_progress p ON p.job_id = a.job_id
            WHERE a.job_id = $1 AND a.tenant = $2 AND NOT \(Self.expired)
            """, [id, tenant, stallSeconds]).rows
        guard let row = rows.first else { return nil }
        return ["id": row[0], "type": row[1], "tier": row[2], "status": row[3], "attempts": row[4], "result": row[5],
                "error": row[6], "enqueued_at": row[7].flatMap(Timestamp.init(iso8601:))?.iso8601,
                "started_at": row[8].flatMap(Timestamp.init(iso8601:))?.iso8601,
                "finished_at": row[9].flatMap(Timestamp.init(iso8601:))?.iso8601, "idempotency_key": row[10],
                "run_at": row[11].flatMap(Timestamp.init(iso8601:))?.iso8601,
                "progress_done": row[12], "progress_total": row[13], "progress_message": row[14],
                "progress_updated_at": row[15].flatMap(Timestamp.init(iso8601:))?.iso8601, "stalled": row[16] ?? "f"]
    }
}
