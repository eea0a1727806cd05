import WarrenPostgres
import WarrenSupport

/// The retention horizon: the instant before which job history is gone. The leader's upkeep
/// (`scheduler`, `UpkeepDuty`) moves it to the start of the UTC day `WARREN_RETENTION_DAYS`
/// ago before it prunes `api_jobs` and `api_batches` and drops the `job_runs` partitions
/// older than that day (the same cutoff), and it never moves back.
///
/// Readers compare with it in SQL (``horizonSQL``, no parameter): a job enqueued before it
/// has lost its `job_runs` row (or is about to), so it must read 404 and not `queued`, and a
/// cancellation request for it must not look open; that holds even while a prune is halfway
/// or failed, and for any process whatever its own settings.
package enum Retention {
    /// The horizon as an SQL expression: `-infinity` until the first upkeep.
    package static let horizonSQL = "coalesce((SELECT horizon FROM retention_horizon), '-infinity'::timestamptz)"

    /// The start of the UTC day `retentionDays` before `now`'s: the partition cutoff.
    package static func horizon(retentionDays: Int, now: Timestamp) -> Timestamp {
        PartitionManager.Day(now).adding(days: -retentionDays).start
    }

    /// Moves the horizon forward to `horizon` (never back: data already dropped stays gone
    /// if the retention is lengthened). Returns the horizon now in force.
    @discardableResult
    package static func advance(to horizon: Timestamp, pool: PostgresPool) async throws -> Timestamp {
        try await pool.query("""
            INSERT INTO retention_horizon (singleton, horizon) VALUES (true, $1)
            ON CONFLICT (singleton) DO UPDATE SET horizon = greatest(retention_horizon.horizon, EXCLUDED.horizon), updated_at = now()
            RETURNING horizon
            """, [horizon]).rows.first.unwrap().timestamp(0)
    }

    /// Runs `deleteSQL` (a DELETE taking its page size as `$1`) until a page comes back short;
    /// returns how many rows went in all. Pages keep each transaction and its locks short.
    package static func deleteInPages(_ deleteSQL: String, pageSize: Int, pool: PostgresPool) async throws -> Int {
        var total = 0
        while true {
            let deleted = try await pool.query(deleteSQL, [pageSize]).affectedRows
            total += deleted
            if deleted < pageSize { return total }
        }
    }

    /// The horizon in force, nil before the first upkeep.
    package static func current(pool: PostgresPool) async throws -> Timestamp? {
        try await pool.query("SELECT horizon FROM retention_horizon").rows.first?.timestamp(0)
    }
}
