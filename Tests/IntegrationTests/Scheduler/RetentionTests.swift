import Foundation
import Testing
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// Jobs and batches past `WARREN_RETENTION_DAYS`, against a real `producer serve`, `scheduler
/// --once` and Postgres, with rows written as old: the upkeep prunes them with the `job_runs`
/// partitions, and past the retention horizon a job reads 404 (never `queued`) and an old
/// cancellation request is not open again.
@Suite(.enabled(if: TestServices.enabled))
struct RetentionTests {
    static let dayMicros: Int64 = 86_400_000_000

    /// Writes jobs of tenant acme (premium) as the API and a consumer would have.
    struct Writer {
        var pool: PostgresPool
        var now: Timestamp

        func at(daysAgo: Int) -> Timestamp { Timestamp(microseconds: now.microseconds - Int64(daysAgo) * RetentionTests.dayMicros) }

        /// An `api_jobs` row enqueued and created `daysAgo`; with `run`, its `job_runs` row (in
        /// that day's partition, created if missing).
        @discardableResult
        func job(daysAgo: Int, run: String? = nil, cancelRequested: Bool = false, batch: UUID? = nil,
                 enqueuedAt: Timestamp? = nil) async throws -> UUID {
            let id = JobID.make()
            let created = at(daysAgo: daysAgo)
            let enqueued = enqueuedAt ?? created
            try await pool.query("""
                INSERT INTO api_jobs (job_id, tenant, type, tier, enqueued_at, state, created_at, batch_id)
                VALUES ($1, 'acme', 'noop', 'premium', $2, 'published', $3, $4)
                """, [id, enqueued, created, batch])
            if cancelRequested {
                try await pool.query("""
                    INSERT INTO job_cancellations (job_id, enqueued_at, tier, tenant, requested_at)
                    VALUES ($1, $2, 'premium', 'acme', $3)
                    """, [id, enqueued, created])
            }
            if let run {
                try await PartitionManager(logger: TestServices.logger).ensure(table: .jobRuns, day: .init(enqueued), pool: pool)
                try await pool.query("""
                    INSERT INTO job_runs (job_id, enqueued_at, type, tier, tenant, status, attempts, finished_at)
                    VALUES ($1, $2, 'noop', 'premium', 'acme', $3, 1, $2)
                    """, [id, enqueued, run])
            }
            return id
        }

        func batch(daysAgo: Int) async throws -> UUID {
            let id = JobID.make()
            try await pool.query("""
                INSERT INTO api_batches (batch_id, tenant, tier, total, created_at) VALUES ($1, 'acme', 'premium', 2, $2)
                """, [id, at(daysAgo: daysAgo)])
            return id
        }

        func ids(_ table: String, _ column: String) async throws -> Set<UUID> {
            Set(try await pool.query("SELECT \(column) FROM \(table)").rows.map { try $0.uuid(0) })
        }
    }

    func get(_ server: APIServer, _ path: String, token: String) async throws -> (Int, String?) {
        let (status, _, body) = try await server.request("GET", path, token: token, contentType: nil)
        return (status, HTTP.field("status", in: body))
    }

    @Test func theUpkeepPrunesJobsAndBatchesPastRetentionWithTheirPartitionsAndTheyReadNotFound() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:read")
            try await server.withDatabase { pool in
                let writer = Writer(pool: pool, now: .now())
                // 40 days old: finished; its row already gone with an earlier partition (it read
                // `queued`); cancelled (open again once its partition goes); a batch that never
                // completed. And one recorded 40 days ago to run tomorrow.
                let oldFinished = try await writer.job(daysAgo: 40, run: "succeeded")
                let oldQueued = try await writer.job(daysAgo: 40)
                let oldCancelled = try await writer.job(daysAgo: 40, run: "cancelled", cancelRequested: true)
                let oldBatch = try await writer.batch(daysAgo: 40)
                try await writer.job(daysAgo: 40, batch: oldBatch)
                try await writer.job(daysAgo: 40, batch: oldBatch)
                let tomorrow = Timestamp(microseconds: writer.now.microseconds + Self.dayMicros)
                let scheduledAhead = try await writer.job(daysAgo: 40, enqueuedAt: tomorrow)
                try await pool.query("""
                    INSERT INTO delayed_jobs (job_id, tenant, type, tier, payload, run_at, created_at)
                    VALUES ($1, 'acme', 'noop', 'premium', '{}', $2, $3)
                    """, [scheduledAhead, tomorrow, writer.at(daysAgo: 40)])
                // 5 days old: kept.
                let recentFinished = try await writer.job(daysAgo: 5, run: "succeeded")
                let recentCancelOpen = try await writer.job(daysAgo: 5, cancelRequested: true)
                let recentBatch = try await writer.batch(daysAgo: 5)
                let recentBatchJob = try await writer.job(daysAgo: 5, run: "succeeded", batch: recentBatch)

                #expect(try await get(server, "/v1/jobs/\(oldFinished.lowercasedString)", token: token) == (200, "succeeded"))
                #expect(Set(try await APIJobStore(pool: pool).openCancellations(tier: .premium)) == [recentCancelOpen])

                var environment = server.environment
                environment["WARREN_RETENTION_DAYS"] = "30"
                let upkeep = try await Products.run("scheduler", ["--once"], environment: environment)
                #expect(upkeep.status == 0, "\(upkeep.stderr)")

                #expect(try await writer.ids("api_jobs", "job_id") == [scheduledAhead, recentFinished, recentCancelOpen, recentBatchJob])
                #expect(try await writer.ids("api_batches", "batch_id") == [recentBatch])
                #expect(try await writer.ids("job_cancellations", "job_id") == [recentCancelOpen],
                        "the old cancellation went with its job's history")
                // The partition upkeep skips a round while any other process holds its lock (one
                // key for the whole database: other tests' schedulers take it too), the pruning
                // above does not; run rounds until one got the lock.
                let partitions = PartitionManager(logger: TestServices.logger)
                try await TestServices.waitUntil(timeout: .seconds(60), "the 40-day-old job_runs partition is dropped") {
                    if !(try await partitions.partitions(of: .jobRuns, pool: pool).contains(.init(writer.at(daysAgo: 40)))) { return true }
                    let round = try await Products.run("scheduler", ["--once"], environment: environment)
                    #expect(round.status == 0, "\(round.stderr)")
                    return false
                }
                #expect(try await partitions.partitions(of: .jobRuns, pool: pool).contains(.init(writer.at(daysAgo: 5))))
                let horizon = try await Retention.current(pool: pool)
                #expect(horizon == PartitionManager.Day(writer.now).adding(days: -30).start)

                for old in [oldFinished, oldQueued, oldCancelled] {
                    #expect(try await get(server, "/v1/jobs/\(old.lowercasedString)", token: token).0 == 404)
                }
                #expect(try await get(server, "/v1/jobs/\(recentFinished.lowercasedString)", token: token) == (200, "succeeded"))
                #expect(try await get(server, "/v1/jobs/\(scheduledAhead.lowercasedString)", token: token) == (200, "scheduled"))
                #expect(try await get(server, "/v1/batches/\(oldBatch.lowercasedString)", token: token).0 == 404)
                #expect(try await get(server, "/v1/batches/\(recentBatch.lowercasedString)", token: token).0 == 200)
                // The cancellation whose job_runs row went with its partition is not open again.
                #expect(try await APIJobStore(pool: pool).openCancellations(tier: .premium) == [recentCancelOpen])

                // A second round finds nothing more to do.
                let again = try await Products.run("scheduler", ["--once"], environment: environment)
                #expect(again.status == 0, "\(again.stderr)")
                #expect(try await writer.ids("api_jobs", "job_id").count == 4)
                #expect(try await writer.ids("api_batches", "batch_id") == [recentBatch])
                #expect(try await writer.ids("job_cancellations", "job_id") == [recentCancelOpen],
                        "the old cancellation went with its job's history")
            }
        }
    }

    /// The horizon alone (a prune that failed or is halfway): rows past it are still there, but
    /// a job reads 404 instead of `queued`, its batch 404, and its cancellation is not open.
    @Test func pastTheHorizonAJobReadsNotFoundAndItsCancellationIsNotOpenBeforeItIsPruned() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:read")
            try await server.withDatabase { pool in
                let writer = Writer(pool: pool, now: .now())
                let oldQueued = try await writer.job(daysAgo: 40)
                let oldCancelOpen = try await writer.job(daysAgo: 40, cancelRequested: true)
                let oldBatch = try await writer.batch(daysAgo: 40)
                try await writer.job(daysAgo: 40, batch: oldBatch)
                let recentCancelOpen = try await writer.job(daysAgo: 5, cancelRequested: true)
                let jobs = APIJobStore(pool: pool)

                // What a dropped partition leaves behind without a horizon.
                #expect(try await get(server, "/v1/jobs/\(oldQueued.lowercasedString)", token: token) == (200, "queued"))
                #expect(Set(try await jobs.openCancellations(tier: .premium)) == [oldCancelOpen, recentCancelOpen])

                let horizon = Retention.horizon(retentionDays: 30, now: writer.now)
                #expect(try await Retention.advance(to: horizon, pool: pool) == horizon)
                #expect(try await Retention.advance(to: writer.at(daysAgo: 60), pool: pool) == horizon, "it never moves back")

                #expect(try await get(server, "/v1/jobs/\(oldQueued.lowercasedString)", token: token).0 == 404)
                #expect(try await get(server, "/v1/jobs/\(oldCancelOpen.lowercasedString)", token: token).0 == 404)
                #expect(try await get(server, "/v1/batches/\(oldBatch.lowercasedString)", token: token).0 == 404)
                #expect(try await jobs.openCancellations(tier: .premium) == [recentCancelOpen])
                #expect(try await jobs.recentCancellations(tier: .premium, seconds: 50 * 86_400) == [recentCancelOpen])
                #expect(try await writer.ids("api_jobs", "job_id").count == 4, "nothing was deleted")
            }
        }
    }
}
