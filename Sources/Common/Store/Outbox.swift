import Foundation
import Logging
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// The one outbox (`delayed_jobs`): every job Warren publishes on someone's behalf is first
/// written here, in the same transaction as the record that decided it, then published with
/// confirms, then marked `published`. Its users:
///
/// - delayed jobs (`run_at`, `delay_seconds`, `producer publish --at/--in`): held until due;
/// - keyed API jobs (an idempotency key), batch jobs, batch `on_complete` jobs, cron fires and
///   contact fires: entered with a lease (``add(_:leaseSeconds:on:)``) and published at once by
///   their writer (``publish(_:with:)``).
///
/// The leader's dispatcher (``dispatchDue(now:limit:publish:)``) publishes what is due and not
/// leased: held jobs at their time, and any entry whose writer never saw a confirm (the
/// connection dropped, the process died) once its lease runs out, always under the job id
/// stored here. So an entry is never declared published without a confirm and never dropped
/// on an ambiguous failure; at worst a job reaches the broker twice under one id, and
/// consumers' start claims run it once. Only a failure that surely did not publish
/// (``AMQPError/definitelyNotPublished``) lets a writer take its entry back (``release(_:)``).
package struct Outbox: Sendable {
    package let pool: PostgresPool

    /// The longest delay (`delay_seconds`, `--in`, `JobClient`'s `delay`): a bound against a
    /// timestamp or milliseconds given as seconds. An instant (`run_at`, `--at`) has none.
    package static let maxDelaySeconds: Int64 = 366 * 86_400

    /// How long a writer that publishes its entry itself has before the dispatcher does.
    package static let publishLeaseSeconds = 30

    package init(pool: PostgresPool) { self.pool = pool }

    /// Holds `job` until `job.enqueuedAt` (its run time). Runs inside the caller's transaction
    /// when given one, so the API can record its own row in the same commit.
    ///
    /// With `leaseSeconds` the row is also the outbox entry of a job the caller publishes
    /// itself right away: the lease keeps the leader's dispatcher off it meanwhile; once the
    /// caller saw the confirm it calls ``markPublished(_:)``. If it never does (the confirm was
    /// lost with the connection, the caller died), the lease runs out and the leader publishes
    /// the job again under the same id, so a job accepted is never lost and never declared
    /// published without a confirm.
    package static func hold(_ job: JobEnvelope, leaseSeconds: Int? = nil, on connection: PostgresConnection) async throws {
        try await connection.query("""
            INSERT INTO delayed_jobs (job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at, claimed_until,
                                      concurrency_key, concurrency_limit)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9::int), $10, $11)
            """, [job.id, job.tenant, job.type, job.tier.rawValue, String(decoding: job.payload, as: UTF8.self),
                  job.idempotencyKey, job.correlationID, job.enqueuedAt, leaseSeconds, job.concurrencyKey,
                  job.concurrencyKey.map { _ in job.concurrencyLimit }])
    }

    /// An outbox entry whose publish the broker confirmed: published, with its `api_jobs` row.
    package func markPublished(_ ids: [UUID]) async throws {
        guard !ids.isEmpty else { return }
        try await pool.withTransaction { connection in
            try await connection.query("""
                UPDATE delayed_jobs SET state = CASE WHEN state = 'cancelled' THEN state ELSE 'published' END,
                                        published_at = clock_timestamp()
                WHERE job_id = ANY($1::uuid[]) AND state = 'pending'
                """, [PostgresArray(ids)])
            try await connection.query("UPDATE api_jobs SET state = 'published' WHERE job_id = ANY($1::uuid[]) AND state = 'pending'",
                                       [PostgresArray(ids)])
        }
    }

    /// Drops an outbox entry the broker definitely did not take (it refused it, or it was
    /// never sent), with its `api_jobs` claim, so the client's retry can succeed.
    package func release(_ id: UUID) async throws {
        try await pool.withTransaction { try await Self.release([id], on: $0) }
    }

    package func hold(_ job: JobEnvelope) async throws {
        try await pool.withConnection { try await Self.hold(job, on: $0) }
    }

    /// Enters `jobs`, due now, leased to their writer for `leaseSeconds`, in the caller's
    /// transaction (one statement for any number).
    package static func add(_ jobs: [JobEnvelope], leaseSeconds: Int = publishLeaseSeconds,
                            on connection: PostgresConnection) async throws {
        guard !jobs.isEmpty else { return }
        try await connection.query("""
            INSERT INTO delayed_jobs (job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at, claimed_until,
                                      concurrency_key, concurrency_limit)
            SELECT u.job_id, u.tenant, u.type, u.tier, u.payload, u.idempotency_key, u.correlation_id, u.run_at,
                   now() + make_interval(secs => $9::int), u.concurrency_key, u.concurrency_limit
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[],
                        $10::text[], $11::int[])
                 AS u(job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at, concurrency_key, concurrency_limit)
            """, [PostgresArray(jobs.map(\.id)), PostgresArray(jobs.map(\.tenant)), PostgresArray(jobs.map(\.type)),
                  PostgresArray(jobs.map(\.tier.rawValue)), PostgresArray(jobs.map { String(decoding: $0.payload, as: UTF8.self) }),
                  PostgresArray(jobs.map(\.idempotencyKey)), PostgresArray(jobs.map(\.correlationID)),
                  PostgresArray(jobs.map(\.enqueuedAt)), leaseSeconds, PostgresArray(jobs.map(\.concurrencyKey)),
                  PostgresArray(jobs.map { job in job.concurrencyKey.map { _ in job.concurrencyLimit } })])
    }

    /// Enters `jobs` as the next message of their lineage (their `seq` and `attempt` as set),
    /// due now and leased to their writer, in the caller's transaction: a dead job replayed
    /// (``DeadLetterStore/replay(_:resetAttempts:by:limit:)``), a job sent on before its retry
    /// delay ran out (``JobRunStore/retryNow(_:tenant:by:)``). A job's earlier entry (a keyed
    /// or delayed job's, long published) is taken over.
    package static func addNext(_ jobs: [JobEnvelope], on connection: PostgresConnection) async throws {
        guard !jobs.isEmpty else { return }
        try await connection.query("""
            INSERT INTO delayed_jobs (job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at, claimed_until,
                                      concurrency_key, concurrency_limit, seq, attempt)
            SELECT u.job_id, u.tenant, u.type, u.tier, u.payload, u.idempotency_key, u.correlation_id, u.run_at,
                   now() + make_interval(secs => $9::int), u.concurrency_key, u.concurrency_limit, u.seq, u.attempt
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[],
                        $10::text[], $11::int[], $12::int[], $13::int[])
                 AS u(job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at, concurrency_key,
                      concurrency_limit, seq, attempt)
            ON CONFLICT (job_id) DO UPDATE SET
                tenant = EXCLUDED.tenant, type = EXCLUDED.type, tier = EXCLUDED.tier, payload = EXCLUDED.payload,
                idempotency_key = EXCLUDED.idempotency_key, correlation_id = EXCLUDED.correlation_id, run_at = EXCLUDED.run_at,
                claimed_until = EXCLUDED.claimed_until, concurrency_key = EXCLUDED.concurrency_key,
                concurrency_limit = EXCLUDED.concurrency_limit, seq = EXCLUDED.seq, attempt = EXCLUDED.attempt,
                state = 'pending', published_at = NULL
            """, [PostgresArray(jobs.map(\.id)), PostgresArray(jobs.map(\.tenant)), PostgresArray(jobs.map(\.type)),
                  PostgresArray(jobs.map(\.tier.rawValue)), PostgresArray(jobs.map { String(decoding: $0.payload, as: UTF8.self) }),
                  PostgresArray(jobs.map(\.idempotencyKey)), PostgresArray(jobs.map(\.correlationID)),
                  PostgresArray(jobs.map(\.enqueuedAt)), publishLeaseSeconds, PostgresArray(jobs.map(\.concurrencyKey)),
                  PostgresArray(jobs.map { job in job.concurrencyKey.map { _ in job.concurrencyLimit } }),
                  PostgresArray(jobs.map(\.seq)), PostgresArray(jobs.map(\.attempt))])
    }

    /// A writer's own publish of entries it added: publishes `jobs` with confirms and marks the
    /// confirmed ones. One result per job; an entry not confirmed stays for the dispatcher
    /// (after its lease), and a mark that fails only means the dispatcher publishes that job
    /// again under its id.
    package func publish(_ jobs: [JobEnvelope], with publisher: JobPublisher) async -> [Result<Void, AMQPError>] {
        guard !jobs.isEmpty else { return [] }
        let results = await publisher.publish(jobs)
        let confirmed = zip(jobs, results).compactMap { job, result in (try? result.get()).map { job.id } }
        do {
            try await markPublished(confirmed)
        } catch {
            pool.logger.warning("confirmed jobs not marked published in the outbox; the dispatcher publishes them again under their ids",
                                metadata: ["count": "\(confirmed.count)", "error": "\(error)"])
        }
        return results
    }

    /// Takes back entries the broker surely did not take (with their `api_jobs` rows), in the
    /// caller's transaction.
    package static func release(_ ids: [UUID], on connection: PostgresConnection) async throws {
        guard !ids.isEmpty else { return }
        try await connection.query("DELETE FROM delayed_jobs WHERE job_id = ANY($1::uuid[]) AND state = 'pending'", [PostgresArray(ids)])
        try await connection.query("DELETE FROM api_jobs WHERE job_id = ANY($1::uuid[]) AND state = 'pending'", [PostgresArray(ids)])
    }

    /// Stops a job that is still held; true when it was (so it will never be published).
    package static func cancel(_ id: UUID, on connection: PostgresConnection) async throws -> Bool {
        !(try await connection.query(
            "UPDATE delayed_jobs SET state = 'cancelled' WHERE job_id = $1 AND state = 'pending' RETURNING job_id", [id]).rows.isEmpty)
    }

    /// How long a claim keeps other dispatchers off a job while it is being published.
    package static let claimSeconds = 30
    /// How long a job the broker refused waits before it is tried again.
    package static let refusedPauseSeconds = 5

    /// One batch of the leader's dispatcher: claims up to `limit` jobs due at `now`, oldest
    /// first (`FOR UPDATE SKIP LOCKED` and a short lease, committed before anything is
    /// published), hands them to `publish`, then marks published the ones whose index
    /// `publish` returns (confirmed by the broker). The others are left for a retry after a
    /// pause, under the same job id; so is a claim whose dispatcher died. Returns the jobs
    /// claimed and the published ones' lateness in seconds.
    package func dispatchDue(now: Timestamp, limit: Int = 1_000,
                             publish: ([JobEnvelope]) async -> [Int]) async throws -> (claimed: Int, lateness: [Double]) {
        let rows = try await pool.withTransaction { connection in
            try await connection.query("""
                UPDATE delayed_jobs SET claimed_until = now() + make_interval(secs => $3)
                WHERE job_id IN (SELECT job_id FROM delayed_jobs
                                 WHERE state = 'pending' AND run_at <= $1 AND (claimed_until IS NULL OR claimed_until <= now())
                                 ORDER BY run_at LIMIT $2
                                 FOR UPDATE SKIP LOCKED)
                RETURNING job_id, tenant, type, tier, payload, idempotency_key, correlation_id, run_at, concurrency_key, concurrency_limit,
                          seq, attempt
                """, [now, limit, Self.claimSeconds]).rows
        }
        let jobs = try rows.map { row -> JobEnvelope in
            guard let tier = Tier(rawValue: try row.string(3)) else {
                throw PostgresError(.decoding, function: "delayed_jobs.tier", message: "unknown tier")
            }
            var job = JobEnvelope(type: try row.string(2), tier: tier, payload: Array(try row.string(4).utf8), tenant: row[1],
                                  idempotencyKey: row[5], correlationID: row[6], enqueuedAt: try row.timestamp(7), id: try row.uuid(0),
                                  concurrencyKey: row[8], concurrencyLimit: row[9] == nil ? 1 : try row.int(9))
            // A replayed dead job goes out as the next message of its lineage (DeadLetterStore).
            job.seq = try row.int(10)
            job.attempt = try row.int(11)
            return job
        }.sorted { $0.enqueuedAt < $1.enqueuedAt }
        guard !jobs.isEmpty else { return (0, []) }
        let confirmedIndexes = Set(await publish(jobs))
        let confirmed = jobs.indices.filter { confirmedIndexes.contains($0) }.map { jobs[$0].id }
        let refused = jobs.indices.filter { !confirmedIndexes.contains($0) }.map { jobs[$0].id }
        if !refused.isEmpty {
            try await pool.query("""
                UPDATE delayed_jobs SET claimed_until = now() + make_interval(secs => $2) WHERE job_id = ANY($1::uuid[])
                """, [PostgresArray(refused), Self.refusedPauseSeconds])
        }
        guard !confirmed.isEmpty else { return (jobs.count, []) }
        // A job cancelled while it was being published stays cancelled (consumers skip it). An
        // outbox entry's api_jobs claim (a keyed job) is published with it.
        let published = try await pool.withTransaction { connection in
            let rows = try await connection.query("""
                UPDATE delayed_jobs SET state = CASE WHEN state = 'cancelled' THEN state ELSE 'published' END,
                                        published_at = clock_timestamp()
                WHERE job_id = ANY($1::uuid[])
                RETURNING extract(epoch FROM published_at - run_at)::float8
                """, [PostgresArray(confirmed)]).rows
            try await connection.query("UPDATE api_jobs SET state = 'published' WHERE job_id = ANY($1::uuid[]) AND state = 'pending'",
                                       [PostgresArray(confirmed)])
            return rows
        }
        return (jobs.count, try published.map { try $0.double(0) })
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
