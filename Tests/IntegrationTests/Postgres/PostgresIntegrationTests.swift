import Foundation
import Testing
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

@Suite(.enabled(if: TestServices.enabled))
struct PostgresIntegrationTests {
    @Test func migrationsApplyOnceEvenFromTwoPoolsAtOnce() async throws {
        try await TestServices.withSchema { pool in
            var second = pool.configuration
            second.applicationName = "warren-tests-2"
            let otherPool = PostgresPool(configuration: second, logger: TestServices.logger)
            let migrator = Migrator(migrations: Schema.migrations, logger: TestServices.logger)
            async let first = migrator.migrate(pool)
            async let other = migrator.migrate(otherPool)
            let (a, b) = try await (first, other)
            await otherPool.close()
            #expect((a + b).sorted() == Schema.migrations.map(\.version), "each migration applied by exactly one of them")
            #expect(try await migrator.migrate(pool).isEmpty, "a second run applies nothing")
            let recorded = try await pool.query("SELECT version FROM schema_migrations ORDER BY version").rows.map { try $0.int(0) }
            #expect(recorded == Schema.migrations.map(\.version))
        }
    }

    /// A replica that starts while another holds the migration lock for longer than the
    /// statement timeout waits for it (the old code failed its start with SQLSTATE 57014), and
    /// its pooled connection is back on the service timeout afterwards.
    @Test func aMigrationWaitsForTheLockLongerThanTheStatementTimeout() async throws {
        try await TestServices.withSchema { pool in
            var short = pool.configuration
            short.statementTimeout = .seconds(1)
            short.applicationName = "warren-tests-short-\(UUID().uuidString.prefix(8))"
            short.maxConnections = 1
            let starting = PostgresPool(configuration: short, logger: TestServices.logger)
            let applied = try await pool.withConnection { holder in
                try await holder.query("SELECT pg_advisory_lock($1)", [pool.configuration.lockKey(Migrator.lockKey)])
                let migration = Task { try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(starting) }
                try await TestServices.waitUntil(timeout: .seconds(30), "the starting replica waits for the lock") {
                    try await pool.query("""
                        SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'
                        """, [short.applicationName]).rows.first?.int(0) == 1
                }
                // The fault itself: the lock stays held past the 1 s statement timeout.
                try await Task.sleep(for: .seconds(2))
                try await holder.query("SELECT pg_advisory_unlock($1)", [pool.configuration.lockKey(Migrator.lockKey)])
                return try await migration.value
            }
            #expect(applied == Schema.migrations.map(\.version))
            let timeout = try await starting.query("SHOW statement_timeout").rows.first?.string(0)
            #expect(timeout == "1s", "the pooled connection is back on the service timeout")
            await starting.close()
        }
    }

    /// Another schema's migrations (another deployment in the same database, or another test)
    /// do not hold this one's up: the old code shared one lock across every schema.
    @Test func schemasMigrateWithoutWaitingForEachOther() async throws {
        try await TestServices.withSchema { pool in
            try await TestServices.withSchema { other in
                try await other.withConnection { holder in
                    try await holder.query("SELECT pg_advisory_lock($1)", [PostgresConfiguration.lockKey(Migrator.lockKey, schema: nil)])
                    try await holder.query("SELECT pg_advisory_lock($1)", [other.configuration.lockKey(Migrator.lockKey)])
                    var short = pool.configuration
                    short.statementTimeout = .seconds(5)
                    let starting = PostgresPool(configuration: short, logger: TestServices.logger)
                    let applied = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(starting)
                    await starting.close()
                    #expect(applied == Schema.migrations.map(\.version))
                    try await holder.query("SELECT pg_advisory_unlock_all()")
                }
            }
        }
    }

    /// Migration 14 moves the fires and on_complete jobs still waiting for a confirm into the
    /// outbox, under their job ids and idempotency keys, so an upgrade mid-publish loses none.
    @Test func theOutboxMigrationTakesOverUnconfirmedFiresAndOnCompleteJobs() async throws {
        try await TestServices.withSchema { pool in
            let before = Migrator(migrations: Schema.migrations.filter { $0.version < 14 }, logger: TestServices.logger)
            try await before.migrate(pool)
            let schedule = JobID.make(), cronJob = JobID.make(), contact = JobID.make(), contactJob = JobID.make()
            let batch = JobID.make(), onComplete = JobID.make(), publishedFireJob = JobID.make()
            try await pool.query("""
                INSERT INTO schedules (id, tenant, name, cron, time_zone, job_type, tier, payload, next_fire_at)
                VALUES ($1, 'acme', 'nightly', '0 3 * * *', 'Europe/Paris', 'report.build', 'premium', '{"n":1}', now())
                """, [schedule])
            try await pool.query("""
                INSERT INTO schedule_fires (schedule_id, fire_at, local_time, job_id, state) VALUES
                    ($1, '2026-12-01T02:00:00Z', '2026-12-01T03:00:00+01:00', $2, 'pending'),
                    ($1, '2026-11-30T02:00:00Z', '2026-11-30T03:00:00+01:00', $3, 'published')
                """, [schedule, cronJob, publishedFireJob])
            try await pool.query("""
                INSERT INTO contacts (id, tenant, tier, first_name, last_name, email, birthday, time_zone)
                VALUES ($1, 'acme', 'free', 'Ada', 'L', 'ada@example.com', '1990-12-01', 'Europe/London')
                """, [contact])
            try await pool.query("""
                INSERT INTO contact_fires (contact_id, kind, local_date, job_id, tenant, tier, payload, state)
                VALUES ($1, 'birthday', '2026-12-01', $2, 'acme', 'free', '{"to":"ada@example.com"}', 'pending')
                """, [contact, contactJob])
            try await pool.query("""
                INSERT INTO api_batches (batch_id, tenant, tier, total, on_complete_type, on_complete_payload, on_complete_job_id, completed_at)
                VALUES ($1, 'acme', 'premium', 1, 'noop', '{"done":true}', $2, now())
                """, [batch, onComplete])
            try await pool.query("""
                INSERT INTO api_jobs (job_id, tenant, type, tier, enqueued_at, idempotency_key, request_id)
                VALUES ($1, 'acme', 'noop', 'premium', now(), $2, 'req-1')
                """, [onComplete, "batch:\(batch.lowercasedString):on_complete"])

            #expect(try await Migrator(migrations: Schema.migrations.filter { $0.version <= 14 }, logger: TestServices.logger).migrate(pool) == [14])
            let entries = try await pool.query("""
                SELECT job_id, type, tier, tenant, payload, idempotency_key, state FROM delayed_jobs ORDER BY type
                """).rows.map { row in
                [try row.uuid(0).lowercasedString, try row.string(1), try row.string(2), try row.string(3), try row.string(4),
                 try row.string(5), try row.string(6)]
            }
            #expect(entries == [
                [contactJob.lowercasedString, "message.send", "free", "acme", #"{"to":"ada@example.com"}"#,
                 "contact:\(contact.lowercasedString):birthday:2026-12-01", "pending"],
                [onComplete.lowercasedString, "noop", "premium", "acme", #"{"done":true}"#,
                 "batch:\(batch.lowercasedString):on_complete", "pending"],
                [cronJob.lowercasedString, "report.build", "premium", "acme", #"{"n":1}"#,
                 "schedule:\(schedule.lowercasedString):2026-12-01T03:00:00+01:00", "pending"],
            ], "the confirmed fire stays out; the others are due at once")
            let states = try await pool.query("SELECT state FROM schedule_fires ORDER BY fire_at").rows.map { try $0.string(0) }
            #expect(states == ["published", "fired"])
            #expect(try await pool.query("SELECT state FROM contact_fires").rows.map { try $0.string(0) } == ["fired"])
        }
    }

    @Test func partitionsAreCreatedAheadAndDroppedAfterRetention() async throws {
        try await TestServices.withSchema { pool in
            try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let manager = PartitionManager(logger: TestServices.logger)
            let today = PartitionManager.Day(Timestamp.now())
            // Twice, concurrently: idempotent and safe.
            async let one: Void = manager.ensureAhead(from: today.adding(days: -10), daysAhead: 12, pool: pool)
            async let two: Void = manager.ensureAhead(from: today.adding(days: -10), daysAhead: 12, pool: pool)
            _ = try await (one, two)
            for table in PartitionManager.Table.allCases {
                let days = try await manager.partitions(of: table, pool: pool)
                #expect(days == (0...12).map { today.adding(days: $0 - 10) }, "\(table)")
            }
            let dropped = try await manager.dropOlder(than: today.adding(days: -7), pool: pool)
            #expect(dropped.count == 6)
            #expect(dropped.contains(PartitionManager.partitionName(.jobRuns, today.adding(days: -10))))
            for table in PartitionManager.Table.allCases {
                #expect(try await manager.partitions(of: table, pool: pool).first == today.adding(days: -7))
            }
            #expect(try await manager.dropOlder(than: today.adding(days: -7), pool: pool).isEmpty)
        }
    }

    @Test func aRowForADayWithoutAPartitionFailsLoudly() async throws {
        try await TestServices.withSchema { pool in
            try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let error = await #expect(throws: PostgresError.self) {
                try await pool.query("""
                    INSERT INTO job_runs (job_id, enqueued_at, type, tier, status) VALUES ($1::uuid, $2::timestamptz, 'noop', 'free', 'queued')
                    """, [JobID.make(), Timestamp.now()])
            }
            #expect(error?.isNoPartition == true)
            #expect(error?.isDataError == false, "a missing partition is created by the writer, not treated as bad data")

            // Any other CHECK violation has the same SQLSTATE but is no missing partition.
            let now = Timestamp.now()
            try await PartitionManager(logger: TestServices.logger).ensure(table: .jobRuns, day: PartitionManager.Day(now), pool: pool)
            let check = await #expect(throws: PostgresError.self) {
                try await pool.query("""
                    INSERT INTO job_runs (job_id, enqueued_at, type, tier, status) VALUES ($1::uuid, $2::timestamptz, 'noop', 'gold', 'queued')
                    """, [JobID.make(), now])
            }
            #expect(check?.sqlState == PostgresError.checkViolation)
            #expect(check?.isNoPartition == false)
            #expect(check?.isDataError == true)
        }
    }

    @Test func aParameterHoldingNULIsRefusedBeforeItIsCutShort() async throws {
        try await TestServices.withSchema { pool in
            try await pool.query("CREATE TABLE notes (body text)")
            for value in ["Ada\u{0}Evil", "\u{0}"] {
                let error = await #expect(throws: PostgresError.self) {
                    try await pool.query("INSERT INTO notes (body) VALUES ($1)", [value])
                }
                #expect(error?.code == .invalidParameter)
                #expect(error?.isDataError == true)
                #expect(error?.description.contains("$1") == true)
            }
            // An array element with NUL would end the literal mid-element (22P02 before).
            let array = await #expect(throws: PostgresError.self) {
                try await pool.query("INSERT INTO notes (body) SELECT unnest($1::text[])", [PostgresArray(["fine", "bad\u{0}input"])])
            }
            #expect(array?.code == .invalidParameter)
            #expect(try await pool.query("SELECT count(*) FROM notes").rows.first?.int(0) == 0, "nothing was stored, not even cut short")
        }
    }

    @Test func hostileValuesLandVerbatim() async throws {
        try await TestServices.withSchema { pool in
            try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let now = Timestamp.now()
            try await PartitionManager(logger: TestServices.logger).ensure(table: .jobRuns, day: PartitionManager.Day(now), pool: pool)
            let id = JobID.make()
            let hostile = #"'); DROP TABLE job_runs; -- "quoted" \ back\slash"#
            let payload = try JSONSerialization.data(withJSONObject: ["note": hostile], options: [.sortedKeys])
            try await pool.query("""
                INSERT INTO job_runs (job_id, enqueued_at, type, tier, status, result, error)
                VALUES ($1::uuid, $2::timestamptz, $3, $4, 'succeeded', $5::jsonb, $6)
                ON CONFLICT (job_id, enqueued_at) DO NOTHING
                """, [id, now, "noop", "free", PostgresJSON(bytes: [UInt8](payload)), hostile])
            let row = try #require(try await pool.query(
                "SELECT result->>'note', error, enqueued_at FROM job_runs WHERE job_id = $1::uuid", [id]).rows.first)
            #expect(row[0] == hostile)
            #expect(row[1] == hostile)
            #expect(try row.timestamp(2) == now, "enqueued_at survives with microseconds")
            #expect(try await pool.query("SELECT count(*) FROM job_runs").rows.first?.int(0) == 1)
        }
    }

    @Test func sqlErrorsCarryTheirSQLStateAndTheConnectionStaysUsable() async throws {
        try await TestServices.withSchema { pool in
            try await pool.withConnection { connection in
                let syntax = await #expect(throws: PostgresError.self) { try await connection.query("SELEC 1") }
                #expect(syntax?.sqlState == "42601")
                #expect(syntax?.code == .server)
                let missing = await #expect(throws: PostgresError.self) { try await connection.query("SELECT * FROM no_such_table") }
                #expect(missing?.sqlState == PostgresError.undefinedTable)
                let answer = try await connection.query("SELECT $1::int + 1", [41]).rows.first?.int(0)
                #expect(answer == 42)
            }
        }
    }

    @Test func transactionsRollBackOnError() async throws {
        try await TestServices.withSchema { pool in
            try await pool.query("CREATE TABLE t (v text PRIMARY KEY)")
            await #expect(throws: PostgresError.self) {
                try await pool.withTransaction { connection in
                    try await connection.query("INSERT INTO t VALUES ($1)", ["a"])
                    try await connection.query("INSERT INTO t VALUES ($1)", ["a"])
                }
            }
            #expect(try await pool.query("SELECT count(*) FROM t").rows.first?.int(0) == 0)
            try await pool.withTransaction { connection in try await connection.query("INSERT INTO t VALUES ($1)", ["b"]) }
            #expect(try await pool.query("SELECT v FROM t").rows.map { $0[0] } == ["b"])
        }
    }

    @Test func poolNeverExceedsItsLimit() async throws {
        try await TestServices.withSchema { pool in
            let results = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        try await pool.query("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", [pool.configuration.applicationName])
                            .rows.first!.int(0)
                    }
                }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(results.allSatisfy { $0 >= 1 && $0 <= pool.configuration.maxConnections }, "\(results)")
            #expect(results.contains { $0 > 1 }, "queries ran on several connections at once: \(results)")
        }
    }

    @Test func unreachableDatabaseFailsClearly() async throws {
        let pool = PostgresPool(configuration: PostgresConfiguration(url: "postgresql://warren:warren@127.0.0.1:1/warren", applicationName: "x"),
                                logger: TestServices.logger)
        let error = await #expect(throws: PostgresError.self) { try await pool.query("SELECT 1") }
        #expect(error?.code == .connectionFailed)
        await pool.close()
    }
}
