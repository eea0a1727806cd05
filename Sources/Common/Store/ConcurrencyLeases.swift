import Foundation
import WarrenPostgres
import WarrenSupport

/// Per-key concurrency across every consumer: a job with a `concurrency_key` runs only while
/// it holds one of its key's `limit` slots, a row of `concurrency_leases`.
///
/// - ``acquire(key:limit:job:holder:ttl:)`` takes the first free slot in one statement: an
///   absent row is inserted, an expired one (its holder crashed and stopped refreshing it) is
///   taken over; a slot another transaction took first conflicts and yields nothing (the
///   caller waits and asks again), so a key never has more than `limit` live rows.
/// - The holder refreshes its rows while their jobs run (``refresh(holder:jobs:ttl:)``), and
///   deletes each once its job's outcome is stamped (``release(_:)``).
package struct ConcurrencyLeases: Sendable {
    /// A slot held: what to refresh and to give back.
    package struct Lease: Sendable, Hashable {
        package var key: String
        package var slot: Int
        package var job: UUID
    }

    private let pool: PostgresPool

    package init(pool: PostgresPool) { self.pool = pool }

    /// A slot of `key` for `job`, or nil while all `limit` are held by live leases. A job that
    /// still holds a live slot of the key (its delivery came back after its consumer died) gets
    /// that one again.
    package func acquire(key: String, limit: Int, job: UUID, holder: String, ttl: Duration) async throws -> Lease? {
        let milliseconds = ttl.milliseconds
        let mine = try await pool.query("""
            UPDATE concurrency_leases SET holder = $3, expires_at = clock_timestamp() + make_interval(secs => $4::float8 / 1000)
            WHERE key = $1 AND job_id = $2 AND slot < $5 RETURNING slot
            """, [key, job, holder, milliseconds, limit])
        if let row = mine.rows.first { return Lease(key: key, slot: try row.int(0), job: job) }
        let taken = try await pool.query("""
            INSERT INTO concurrency_leases AS l (key, slot, job_id, holder, expires_at)
            SELECT $1, s, $2, $3, clock_timestamp() + make_interval(secs => $4::float8 / 1000)
            FROM generate_series(0, $5::int - 1) AS s
            WHERE NOT EXISTS (SELECT 1 FROM concurrency_leases c WHERE c.key = $1 AND c.slot = s AND c.expires_at > clock_timestamp())
            ORDER BY s LIMIT 1
            ON CONFLICT (key, slot) DO UPDATE SET job_id = EXCLUDED.job_id, holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
                WHERE l.expires_at <= clock_timestamp()
            RETURNING slot
            """, [key, job, holder, milliseconds, limit])
        return try taken.rows.first.map { Lease(key: key, slot: try $0.int(0), job: job) }
    }

    /// Pushes back the expiry of `holder`'s leases of `jobs` (the ones running); one statement.
    /// A lease taken over after it expired has another holder and is not touched.
    package func refresh(holder: String, jobs: [UUID], ttl: Duration) async throws {
        guard !jobs.isEmpty else { return }
        try await pool.query("""
            UPDATE concurrency_leases SET expires_at = clock_timestamp() + make_interval(secs => $3::float8 / 1000)
            WHERE holder = $1 AND job_id = ANY($2::uuid[])
            """, [holder, PostgresArray(jobs), ttl.milliseconds])
    }

    /// Gives the slot back (only while `lease.job` still holds it).
    package func release(_ lease: Lease) async throws {
        try await pool.query("DELETE FROM concurrency_leases WHERE key = $1 AND slot = $2 AND job_id = $3",
                             [lease.key, lease.slot, lease.job])
    }
}
