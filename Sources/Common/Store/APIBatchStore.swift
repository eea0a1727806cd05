import Foundation
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Batches of jobs accepted over HTTP (`api_batches`, with their jobs in `api_jobs`): creating
/// them, what `GET /v1/batches/{id}` reports, and publishing a batch's `on_complete` job once
/// every job in it is terminal.
package struct APIBatchStore: Sendable {
    package let pool: PostgresPool

    package init(pool: PostgresPool) { self.pool = pool }

    /// The job to publish when a batch completes.
    package struct OnComplete: Sendable, Equatable {
        package var type: String
        package var payload: [UInt8]

        package init(type: String, payload: [UInt8]) {
            self.type = type
            self.payload = payload
        }
    }

    /// Records a batch, its jobs (state `pending` until confirmed) and their outbox entries
    /// (leased to the request, which publishes them at once), in one transaction: a job of a
    /// recorded batch reaches the broker even if the request dies right after.
    package func create(id: UUID, tenant: String, tier: Tier, requestID: String, jobs: [JobEnvelope],
                        onComplete: OnComplete?) async throws {
        try await pool.withTransaction { connection in
            try await connection.query("""
                INSERT INTO api_batches (batch_id, tenant, tier, total, request_id, on_complete_type, on_complete_payload)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                """, [id, tenant, tier.rawValue, jobs.count, requestID, onComplete?.type,
                      onComplete.map { String(decoding: $0.payload, as: UTF8.self) }])
            try await connection.query("""
                INSERT INTO api_jobs (job_id, tenant, type, tier, enqueued_at, request_id, batch_id)
                SELECT u.job_id, $2, u.type, $3, u.enqueued_at, $4, $5
                FROM unnest($1::uuid[], $6::text[], $7::timestamptz[]) AS u(job_id, type, enqueued_at)
                """, [PostgresArray(jobs.map(\.id)), tenant, tier.rawValue, requestID, id,
                      PostgresArray(jobs.map(\.type)), PostgresArray(jobs.map(\.enqueuedAt))])
            try await Outbox.add(jobs, on: connection)
        }
    }

    /// Takes back the jobs the broker surely did not take (their outbox entries and rows): the
    /// batch's total shrinks to what was accepted, and a batch with none accepted is deleted.
    /// If this fails, the outbox publishes them after their lease: they count as accepted.
    package func release(batch id: UUID, refused: [UUID], accepted: Int) async throws {
        guard !refused.isEmpty else { return }
        try await pool.withTransaction { connection in
            try await Outbox.release(refused, on: connection)
            if accepted == 0 {
                try await connection.query("DELETE FROM api_batches WHERE batch_id = $1", [id])
            } else {
                try await connection.query("UPDATE api_batches SET total = $2 WHERE batch_id = $1", [id, accepted])
            }
        }
    }

    // MARK: - Progress

    package struct Summary: Sendable, Equatable {
        package struct ErrorGroup: Sendable, Equatable {
            package var message: String
            package var count: Int
            /// The first few jobs (by finish time) that failed with this message.
            package var jobIDs: [UUID]
        }

        package var id: UUID
        package var total: Int
        package var counts: [String: Int]
        package var errors: [ErrorGroup]
        package var onCompleteType: String?
        package var onCompleteJobID: UUID?
        package var onCompletePublished: Bool
        package var createdAt: Timestamp
        package var completedAt: Timestamp?
        /// The progress its jobs reported, summed (`done` and `total` over the jobs that
        /// reported; `total` nil when none gave one), and how many reported.
        package var reported = Reported()

        package struct Reported: Sendable, Equatable {
            package var done: Int64 = 0
            package var total: Int64?
            package var jobs = 0
        }

        /// Jobs in a terminal status.
        package var finished: Int {
            counts.filter { JobStatus(rawValue: $0.key)?.isTerminal ?? false }.values.reduce(0, +)
        }
    }

    /// Counts by status, the errors of failed and dead jobs grouped by message, and the
    /// on_complete job; nil unless the batch is `tenant`'s, and nil past the retention horizon
    /// (its jobs' rows are gone: it would read all `queued`).
    package func summary(of id: UUID, tenant: String, errorGroups: Int = 20, sampleJobs: Int = 5) async throws -> Summary? {
        try await pool.withConnection { connection in
            let batches = try await connection.query("""
                SELECT total, on_complete_type, on_complete_job_id,
                       on_complete_published_at IS NOT NULL
                         OR EXISTS (SELECT 1 FROM delayed_jobs d WHERE d.job_id = b.on_complete_job_id AND d.state = 'published'),
                       created_at, completed_at
                FROM api_batches b WHERE batch_id = $1 AND tenant = $2 AND NOT \(Self.expired)
                """, [id, tenant]).rows
            guard let batch = batches.first else { return nil }
            var counts: [String: Int] = [:]
            for status in JobStatus.allCases { counts[status.rawValue] = 0 }
            for row in try await connection.query("""
                SELECT \(APIJobStore.reportedStatus), count(*)
                FROM api_jobs a LEFT JOIN job_runs r ON r.job_id = a.job_id AND r.enqueued_at = a.enqueued_at
                WHERE a.batch_id = $1 GROUP BY 1
                """, [id]).rows {
                counts[try row.string(0)] = try row.int(1)
            }
            var errors: [Summary.ErrorGroup] = []
            for row in try await connection.query("""
                SELECT coalesce(r.error, ''), count(*),
                       array_to_string((array_agg(a.job_id ORDER BY r.finished_at, a.job_id))[1:$2], ',')
                FROM api_jobs a JOIN job_runs r ON r.job_id = a.job_id AND r.enqueued_at = a.enqueued_at
                WHERE a.batch_id = $1 AND r.status IN ('failed', 'dead')
                GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT $3
                """, [id, sampleJobs, errorGroups]).rows {
                let ids = try row.string(2).split(separator: ",").compactMap { UUID(uuidString: String($0)) }
                errors.append(.init(message: try row.string(0), count: try row.int(1), jobIDs: ids))
            }
            let sums = try await connection.query("""
                SELECT coalesce(sum(p.done), 0), sum(p.total), count(*)
                FROM api_jobs a JOIN job_progress p ON p.job_id = a.job_id
                WHERE a.batch_id = $1 AND p.done IS NOT NULL
                """, [id]).rows.first
            var summary = Summary(id: id, total: try batch.int(0), counts: counts, errors: errors, onCompleteType: batch[1],
                                  onCompleteJobID: batch[2].flatMap(UUID.init(uuidString:)), onCompletePublished: try batch.bool(3),
                                  createdAt: try batch.timestamp(4), completedAt: batch[5].flatMap(Timestamp.init(iso8601:)))
            if let sums {
                summary.reported = Summary.Reported(done: Int64(sums[0] ?? "0") ?? 0, total: sums[1].flatMap { Int64($0) },
                                                    jobs: try sums.int(2))
            }
            return summary
        }
    }

    // MARK: - Retention

    /// A batch `b` past the retention horizon (``Retention``): created before it, and every job
    /// of it past the horizon too (``APIJobStore/expired``). A batch that never completed goes
    /// as well: its jobs' `job_runs` rows are gone, so it never would.
    static let expired = """
        (b.created_at < \(Retention.horizonSQL)
         AND NOT EXISTS (SELECT 1 FROM api_jobs a WHERE a.batch_id = b.batch_id AND NOT \(APIJobStore.expired)))
        """

    /// Deletes the batches past the retention horizon, `batchSize` at a time (their jobs are
    /// then pruned by ``APIJobStore/prune(batchSize:)``). Returns how many went.
    @discardableResult
    package func prune(batchSize: Int = 10_000) async throws -> Int {
        try await Retention.deleteInPages("""
            DELETE FROM api_batches WHERE batch_id IN (SELECT b.batch_id FROM api_batches b WHERE \(Self.expired) LIMIT $1)
            """, pageSize: batchSize, pool: pool)
    }

    // MARK: - Completion

    /// A batch's on_complete job, claimed and ready to publish.
    package struct Completion: Sendable {
        package var batchID: UUID
        package var job: JobEnvelope
    }

    /// Marks complete the batches whose jobs are all terminal (up to `limit`), and claims each
    /// one's on_complete job: given an id, an `api_jobs` row and an outbox entry (leased to the
    /// caller) in the same transaction, so however many producers sweep, each batch completes
    /// once, and its job is published even if the caller never sees a confirm. Returns the
    /// jobs to publish (``Outbox/publish(_:with:)``).
    package func claimCompleted(limit: Int = 100) async throws -> [Completion] {
        try await pool.withTransaction { connection in
            let rows = try await connection.query("""
                SELECT b.batch_id, b.tenant, b.tier, b.on_complete_type, b.on_complete_payload, b.request_id
                FROM api_batches b
                WHERE b.completed_at IS NULL
                  AND NOT EXISTS (
                      SELECT 1 FROM api_jobs a LEFT JOIN job_runs r ON r.job_id = a.job_id AND r.enqueued_at = a.enqueued_at
                      WHERE a.batch_id = b.batch_id
                        AND \(APIJobStore.reportedStatus) NOT IN \(JobStatus.terminalSQL))
                ORDER BY b.created_at
                LIMIT $1
                FOR UPDATE OF b SKIP LOCKED
                """, [limit]).rows
            var completions: [Completion] = []
            for row in rows {
                let batchID = try row.uuid(0)
                guard let type = row[3], let tier = Tier(rawValue: try row.string(2)) else {
                    try await connection.query("UPDATE api_batches SET completed_at = now() WHERE batch_id = $1", [batchID])
                    continue
                }
                let job = Self.onCompleteJob(batch: batchID, id: JobID.make(), type: type, tier: tier, tenant: try row.string(1),
                                             payload: row[4] ?? "{}", requestID: row[5], enqueuedAt: .now())
                try await connection.query("""
                    UPDATE api_batches SET completed_at = now(), on_complete_job_id = $2 WHERE batch_id = $1
                    """, [batchID, job.id])
                try await connection.query("""
                    INSERT INTO api_jobs (job_id, tenant, type, tier, enqueued_at, idempotency_key, request_id)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                    """, [job.id, job.tenant, job.type, tier.rawValue, job.enqueuedAt, job.idempotencyKey, row[5]])
                try await Outbox.add([job], on: connection)
                completions.append(Completion(batchID: batchID, job: job))
            }
            return completions
        }
    }

    /// The on_complete job: the payload given with the batch, in the batch's tier, with the
    /// idempotency key `batch:<batch id>:on_complete` (which names its batch).
    static func onCompleteJob(batch: UUID, id: UUID, type: String, tier: Tier, tenant: String, payload: String,
                              requestID: String?, enqueuedAt: Timestamp) -> JobEnvelope {
        JobEnvelope(type: type, tier: tier, payload: Array(payload.utf8), tenant: tenant,
                    idempotencyKey: "batch:\(batch.lowercasedString):on_complete", correlationID: requestID,
                    enqueuedAt: enqueuedAt, id: id)
    }
}
