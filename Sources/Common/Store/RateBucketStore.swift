import WarrenPostgres
import WarrenSupport

/// Token buckets in Postgres (`rate_buckets`), shared by every process that takes from them.
///
/// One statement per take: the row is refilled for the time since it was last touched (at
/// `rate` per second, up to `burst`), up to `want` whole tokens are taken, and what is granted
/// and what is left come back. The row lock serialises concurrent takers; time is the
/// statement's, and `updated_at` never moves back, so no interval is credited twice.
package struct RateBucketStore: Sendable {
    package struct Grant: Sendable, Equatable {
        package var granted: Double
        package var remaining: Double

        package init(granted: Double, remaining: Double) {
            self.granted = granted
            self.remaining = remaining
        }
    }

    private let pool: PostgresPool

    /// The row's tokens refilled to this statement's time ($2 the rate, $3 the burst).
    private static let refilled =
        "LEAST($3::float8, b.tokens + $2::float8 * GREATEST(0, EXTRACT(EPOCH FROM statement_timestamp() - b.updated_at))::float8)"

    package init(pool: PostgresPool) { self.pool = pool }

    package func take(key: String, rate: Double, burst: Double, want: Double) async throws -> Grant {
        let refilled = Self.refilled
        let result = try await pool.query("""
            INSERT INTO rate_buckets AS b (key, tokens, granted, updated_at)
            VALUES ($1, $3::float8 - LEAST($4::float8, floor($3::float8)), LEAST($4::float8, floor($3::float8)), statement_timestamp())
            ON CONFLICT (key) DO UPDATE SET
                granted = LEAST($4::float8, floor(\(refilled))),
                tokens = \(refilled) - LEAST($4::float8, floor(\(refilled))),
                updated_at = GREATEST(b.updated_at, statement_timestamp())
            RETURNING granted, tokens
            """, [key, rate, burst, want])
        guard let row = result.rows.first else { throw PostgresError(.decoding, function: "RateBucketStore.take", message: "rate_buckets: no row returned") }
        return Grant(granted: try row.double(0), remaining: try row.double(1))
    }

    /// Reserves the next token of `key`'s bucket, borrowing from the future when it is empty:
    /// the bucket may go below zero, and the answer is how long until the reserved token
    /// exists (0 when there was one now). Reservations are handed out in order, one token
    /// each, so the tokens spent never outrun `rate` (plus the `burst` of a full bucket).
    package func reserve(key: String, rate: Double, burst: Double) async throws -> Duration {
        let refilled = Self.refilled
        let result = try await pool.query("""
            INSERT INTO rate_buckets AS b (key, tokens, granted, updated_at)
            VALUES ($1, $3::float8 - 1, 1, statement_timestamp())
            ON CONFLICT (key) DO UPDATE SET
                granted = 1,
                tokens = \(refilled) - 1,
                updated_at = GREATEST(b.updated_at, statement_timestamp())
            RETURNING tokens
            """, [key, rate, burst])
        guard let row = result.rows.first else { throw PostgresError(.decoding, function: "RateBucketStore.reserve", message: "rate_buckets: no row returned") }
        let tokens = try row.double(0)
        return tokens >= 0 ? .zero : .milliseconds(Int64((-tokens / rate * 1_000).rounded(.up)))
    }

    /// Deletes buckets untouched for a day that owe nothing: they are full again (unless a
    /// bucket refills slower than its burst a day, which then starts full again). A bucket
    /// below zero holds reservations of future tokens and stays. Returns how many went.
    @discardableResult
    package func prune(batchSize: Int = 10_000) async throws -> Int {
        // The conditions again on the row itself: a take may touch it between the two.
        try await Retention.deleteInPages("""
            DELETE FROM rate_buckets WHERE key IN (
                SELECT key FROM rate_buckets WHERE updated_at < now() - interval '1 day' AND tokens >= 0 LIMIT $1)
              AND updated_at < now() - interval '1 day' AND tokens >= 0
            """, pageSize: batchSize, pool: pool)
    }
}
