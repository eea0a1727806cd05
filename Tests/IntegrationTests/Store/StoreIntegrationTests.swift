import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

@Suite(.enabled(if: TestServices.enabled))
struct StoreIntegrationTests {
    func record(_ job: JobEnvelope, _ status: JobStatus, attempt: Int, event: JobEvent, at day: Timestamp = .now()) -> JobRunRecord {
        var job = job
        job.attempt = attempt
        let run = JobRunRecord.Run(status: status, attempts: attempt, result: status == .succeeded ? Array(#"{"ok":true}"#.utf8) : nil,
                                   error: status == .succeeded ? nil : "boom", consumerID: "test", startedAt: day, finishedAt: day)
        return JobRunRecord(job: job, run: run, event: event, loggedAt: day)
    }

    @Test func writesAreIdempotentAndNeverGoBackwards() async throws {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let store = JobRunStore(pool: pool, logger: TestServices.logger)
            // A day with no partition yet: the write creates it.
            let longAgo = Timestamp(microseconds: Timestamp.now().microseconds - 400 * 86_400_000_000)
            let job = JobEnvelope(type: "noop", tier: .premium, payload: Array("{}".utf8), enqueuedAt: longAgo)

            try await store.write([record(job, .retrying, attempt: 1, event: .retried, at: longAgo)])
            try await store.write([record(job, .succeeded, attempt: 2, event: .succeeded, at: longAgo)])
            // Replays (a redelivered batch) and a late older attempt change nothing.
            try await store.write([record(job, .succeeded, attempt: 2, event: .succeeded, at: longAgo)])
            try await store.write([record(job, .retrying, attempt: 1, event: .retried, at: longAgo)])
            // Two outcomes of one job in one batch: the later attempt wins.
            let other = JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8), enqueuedAt: longAgo)
            try await store.write([record(other, .dead, attempt: 3, event: .deadLettered, at: longAgo),
                                   record(other, .retrying, attempt: 2, event: .retried, at: longAgo)])

            let rows = try await pool.query("SELECT job_id, status, attempts, result::text FROM job_runs ORDER BY job_id").rows
            #expect(rows.count == 2)
            let byID = Dictionary(uniqueKeysWithValues: try rows.map { (try $0.uuid(0), $0) })
            #expect(byID[job.id]?[1] == "succeeded")
            #expect(byID[job.id]?[2] == "2")
            #expect(byID[job.id]?[3] == #"{"ok": true}"#)
            #expect(byID[other.id]?[1] == "dead")
            #expect(try await store.status(of: job) == .succeeded)
            #expect(try await store.status(of: JobEnvelope(type: "noop", tier: .free, payload: [])) == nil)
            let events = try await pool.query("SELECT count(*) FROM message_logs").rows.first?.int(0)
            #expect(events == 6, "message_logs is history: every write adds its event")
        }
    }

    /// A dead job replayed before its consumer recorded the failure (the scheduler took the dead
    /// copy off the queue first while the consumer's write was slow, or retrying through a
    /// Postgres hiccup): the late `failed` row must not undo the replay, and the replayed message
    /// must start. (With the row set back to the dead copy's seq, the late write made it
    /// terminal again and the replay was skipped: neither dead nor run. Seen once under the full
    /// suite's load in `DeadLetterTests`.)
    @Test func aReplayAheadOfTheFailuresOwnRecordStillRuns() async throws {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let store = JobRunStore(pool: pool, logger: TestServices.logger)
            let dead = DeadLetterStore(pool: pool)
            let job = JobEnvelope(type: "fix.me", tier: .free, payload: Array(#"{"n":1}"#.utf8), tenant: "acme")
            // The consumer claimed the start (running, seq 0), the job failed for good, its dead
            // copy was confirmed and recorded by the scheduler, and an operator replayed it.
            #expect(try await store.claimStarts([.init(job: job, redelivered: false, consumerID: "c", startedAt: .now())]) == [.run])
            let copy = job.deadLetterMessage(reason: "permanent-failure", lastError: "boom")
            try await dead.record([.init(properties: copy.properties, body: copy.body)])
            let replayed = try #require(try await dead.replay(.init(), resetAttempts: true, by: "test").jobs.first)
            // Only now does the consumer's own record of the failure land.
            try await store.write([record(job, .failed, attempt: 1, event: .failed)])
            #expect(try await store.status(of: job) == .queued, "the replay stands")
            #expect(try await store.claimStarts([.init(job: replayed, redelivered: false, consumerID: "c", startedAt: .now())]) == [.run],
                    "the replayed message starts")
        }
    }

    @Test func onlyOneUpkeepRoundRunsAtATime() async throws {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let manager = PartitionManager(logger: TestServices.logger)
            // Another scheduler in its round holds the lock.
            let other = PostgresPool(configuration: pool.configuration, logger: TestServices.logger)
            let key = pool.configuration.lockKey(PartitionManager.upkeepLockKey)
            // The same lock of another schema does not hold this one up.
            let elsewhere = PostgresConfiguration.lockKey(PartitionManager.upkeepLockKey, schema: "another_schema")
            #expect(elsewhere != key)
            let skipped = try await other.withConnection { connection in
                _ = try await connection.query("SELECT pg_advisory_lock($1)", [key])
                let ran = try await manager.upkeep(daysAhead: 2, retentionDays: 30, pool: pool)
                _ = try await connection.query("SELECT pg_advisory_unlock($1)", [key])
                return !ran
            }
            await other.close()
            #expect(skipped)
            #expect(try await manager.partitions(of: .jobRuns, pool: pool).isEmpty, "the skipped round created nothing")
            #expect(try await manager.upkeep(daysAhead: 2, retentionDays: 30, pool: pool))
            #expect(try await manager.partitions(of: .jobRuns, pool: pool).count == 3)
        }
    }
}
