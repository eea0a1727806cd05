import Foundation
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// What the web console reads that no API route does: jobs searched by type, tenant, status and
/// time, a job's timeline, the latest batches, dead letters counted by tier. `tenant` nil reads
/// every tenant's (an `admin` token); otherwise only that tenant's rows are seen.
package struct ConsoleStore: Sendable {
    package let pool: PostgresPool

    package init(pool: PostgresPool) { self.pool = pool }

    /// One job as the console lists it. Times are ISO 8601 (UTC).
    package struct Job: Sendable, Equatable {
        package var id: UUID
        package var type: String
        package var tier: String
        package var tenant: String?
        package var status: String
        package var attempts: Int
        package var enqueuedAt: Timestamp
        package var startedAt: Timestamp?
        package var finishedAt: Timestamp?
        package var error: String?
        package var result: String?
        package var batchID: UUID?
    }

    package struct JobFilter: Sendable, Equatable {
        package var id: UUID?
        package var type: String?
        package var tenant: String?
        package var tier: Tier?
        package var status: String?
        /// Enqueued at or after (the search reaches back this far: it bounds the partitions read).
        package var since: Timestamp
        package var until: Timestamp?

        package init(id: UUID? = nil, type: String? = nil, tenant: String? = nil, tier: Tier? = nil, status: String? = nil,
                     since: Timestamp, until: Timestamp? = nil) {
            self.id = id
            self.type = type
            self.tenant = tenant
            self.tier = tier
            self.status = status
            self.since = since
            self.until = until
        }
    }

    /// The statuses a search may ask for: those of `job_runs`, and `scheduled` or `queued` for
    /// jobs accepted by the API that no consumer has recorded yet.
    package static let statuses = ["scheduled", "queued", "running", "retrying", "succeeded", "failed", "dead", "cancelled"]

    /// The newest jobs matching `filter`, newest first. A job accepted by the API and not yet
    /// started (no `job_runs` row) reads `scheduled` or `queued` (``waiting``).
    package func jobs(_ filter: JobFilter, limit: Int = 50) async throws -> [Job] {
        let parameters: [any PostgresEncodable] = [filter.since, filter.until, filter.id, filter.type, filter.tenant,
                                                      filter.tier?.rawValue, filter.status, limit]
        return try await pool.query("""
            SELECT job_id, type, tier, tenant, status, attempts, enqueued_at, started_at, finished_at, error, NULL, batch_id FROM (
                SELECT r.job_id, r.type, r.tier, r.tenant, r.status, r.attempts, r.enqueued_at, r.started_at, r.finished_at,
                       left(r.error, 300) AS error, r.batch_id
                FROM job_runs r
                WHERE r.enqueued_at >= $1 AND ($2::timestamptz IS NULL OR r.enqueued_at < $2)
                  AND ($3::uuid IS NULL OR r.job_id = $3) AND ($4::text IS NULL OR r.type = $4)
                  AND ($5::text IS NULL OR r.tenant = $5) AND ($6::text IS NULL OR r.tier = $6)
                  AND ($7::text IS NULL OR r.status = $7)
                UNION ALL
                SELECT a.job_id, a.type, a.tier, a.tenant, \(Self.waiting), 0, a.enqueued_at, NULL, NULL, NULL, a.batch_id
                FROM api_jobs a
                WHERE a.enqueued_at >= $1 AND ($2::timestamptz IS NULL OR a.enqueued_at < $2)
                  AND ($3::uuid IS NULL OR a.job_id = $3) AND ($4::text IS NULL OR a.type = $4)
                  AND ($5::text IS NULL OR a.tenant = $5) AND ($6::text IS NULL OR a.tier = $6)
                  AND ($7::text IS NULL OR $7 = \(Self.waiting))
                  AND NOT EXISTS (SELECT 1 FROM job_runs r WHERE r.job_id = a.job_id AND r.enqueued_at = a.enqueued_at)
            ) j ORDER BY enqueued_at DESC, job_id LIMIT $8
            """, parameters).rows.map(Self.job)
    }

    /// What a job accepted by the API and not yet recorded by a consumer is: `scheduled` while
    /// the outbox holds it for later, `queued` otherwise (`a` is its `api_jobs` row).
    static let waiting = """
        (CASE WHEN EXISTS (SELECT 1 FROM delayed_jobs d WHERE d.job_id = a.job_id AND d.state = 'pending' AND d.run_at > a.created_at)
              THEN 'scheduled' ELSE 'queued' END)
        """

    /// One job, whenever it was enqueued, with its result and full error.
    package func job(_ id: UUID, tenant: String?) async throws -> Job? {
        try await pool.query("""
            SELECT job_id, type, tier, tenant, status, attempts, enqueued_at, started_at, finished_at, error, result::text, batch_id FROM (
                SELECT r.job_id, r.type, r.tier, r.tenant, r.status, r.attempts, r.enqueued_at, r.started_at, r.finished_at,
                       r.error, r.result, r.batch_id, 0 AS rank
                FROM job_runs r WHERE r.job_id = $1 AND ($2::text IS NULL OR r.tenant = $2)
                UNION ALL
                SELECT a.job_id, a.type, a.tier, a.tenant, \(Self.waiting), 0, a.enqueued_at, NULL, NULL, NULL, NULL, a.batch_id, 1
                FROM api_jobs a WHERE a.job_id = $1 AND ($2::text IS NULL OR a.tenant = $2)
            ) j ORDER BY rank, enqueued_at DESC LIMIT 1
            """, [id, tenant]).rows.first.map(Self.job)
    }

    /// The payload Warren holds for a job: a delayed or outbox entry's, the one its row kept
    /// (a job that did not succeed at its first try, ``KeptMessage``), or its latest dead
    /// letter's. A job that simply succeeded keeps none unless `WARREN_KEEP_PAYLOADS=all`.
    package func payload(of id: UUID) async throws -> String? {
        try await pool.query("""
            SELECT payload FROM (
                SELECT payload, 0 AS rank, created_at AS at FROM delayed_jobs WHERE job_id = $1
                UNION ALL SELECT payload, 1, updated_at FROM job_runs WHERE job_id = $1 AND payload IS NOT NULL
                UNION ALL SELECT payload, 2, dead_at FROM dead_letters WHERE job_id = $1
            ) p ORDER BY rank, at DESC LIMIT 1
            """, [id]).rows.first?[0]
    }

    /// One event of a job's history (`message_logs`).
    package struct Event: Sendable, Equatable {
        package var at: Timestamp
        package var event: String
        package var attempt: Int?
        package var detail: String?
    }

    package func timeline(of id: UUID, limit: Int = 200) async throws -> [Event] {
        try await pool.query("""
            SELECT logged_at, event, attempt, detail::text FROM message_logs WHERE job_id = $1 ORDER BY logged_at, id LIMIT $2
            """, [id, limit]).rows.map { row in
            Event(at: try row.timestamp(0), event: try row.string(1), attempt: row[2].flatMap { Int($0) }, detail: row[3])
        }
    }

    /// The open dead letter of a job, if it has one (what "retry now" replays).
    package func openDeadLetter(of id: UUID) async throws -> Int64? {
        try await pool.query("SELECT id FROM dead_letters WHERE job_id = $1 AND state = 'dead' AND replayable ORDER BY id DESC LIMIT 1",
                             [id]).rows.first.flatMap { $0[0].flatMap { Int64($0) } }
    }

    /// A batch as the console lists it.
    package struct Batch: Sendable, Equatable {
        package var id: UUID
        package var tenant: String
        package var tier: String
        package var total: Int
        package var finished: Int
        package var failed: Int
        package var createdAt: Timestamp
        package var completedAt: Timestamp?
    }

    /// The newest batches, with how many of their jobs finished and failed.
    package func batches(tenant: String?, limit: Int = 50) async throws -> [Batch] {
        try await pool.query("""
            SELECT b.batch_id, b.tenant, b.tier, b.total, b.created_at, b.completed_at,
                   count(r.job_id) FILTER (WHERE r.status IN ('succeeded', 'failed', 'dead', 'cancelled')),
                   count(r.job_id) FILTER (WHERE r.status IN ('failed', 'dead'))
            FROM (SELECT * FROM api_batches WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at DESC LIMIT $2) b
            LEFT JOIN job_runs r ON r.batch_id = b.batch_id
            GROUP BY b.batch_id, b.tenant, b.tier, b.total, b.created_at, b.completed_at
            ORDER BY b.created_at DESC
            """, [tenant, limit]).rows.map { row in
            Batch(id: try row.uuid(0), tenant: try row.string(1), tier: try row.string(2), total: try row.int(3),
                  finished: try row.int(6), failed: try row.int(7), createdAt: try row.timestamp(4),
                  completedAt: row[5].flatMap(Timestamp.init(iso8601:)))
        }
    }

    /// The tenant a batch belongs to (for an admin opening another tenant's batch).
    package func batchTenant(_ id: UUID) async throws -> String? {
        try await pool.query("SELECT tenant FROM api_batches WHERE batch_id = $1", [id]).rows.first?[0]
    }

    /// Open dead letters per tier (`unknown` for messages that had no tier).
    package func deadCounts(tenant: String?) async throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for row in try await pool.query("""
            SELECT coalesce(tier, 'unknown'), count(*) FROM dead_letters WHERE state = 'dead' AND ($1::text IS NULL OR tenant = $1) GROUP BY 1
            """, [tenant]).rows {
            counts[try row.string(0)] = try row.int(1)
        }
        return counts
    }

    /// A schedule by id, for the console's enable and disable buttons.
    package func scheduleName(_ id: UUID) async throws -> (tenant: String, name: String)? {
        try await pool.query("SELECT tenant, name FROM schedules WHERE id = $1", [id]).rows.first.map { (try $0.string(0), try $0.string(1)) }
    }

    private static func job(_ row: PostgresRow) throws -> Job {
        Job(id: try row.uuid(0), type: try row.string(1), tier: try row.string(2), tenant: row[3], status: try row.string(4),
            attempts: try row.int(5), enqueuedAt: try row.timestamp(6), startedAt: row[7].flatMap(Timestamp.init(iso8601:)),
            finishedAt: row[8].flatMap(Timestamp.init(iso8601:)), error: row[9], result: row[10], batchID: row[11].flatMap(UUID.init(uuidString:)))
    }
}
