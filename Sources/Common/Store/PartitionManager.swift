import Foundation
import Logging
import WarrenPostgres
import WarrenSupport

/// Keeps the daily partitions of `job_runs` and `message_logs`: creates them ahead and drops
/// them after the retention period. Both operations are idempotent and safe to run from
/// several processes at once. There is no default partition on purpose: a row for a day
/// without a partition fails loudly (and the writer calls ``ensure(table:day:)`` and retries).
package struct PartitionManager: Sendable {
    /// A partitioned table Warren manages, with the column it is partitioned on.
    package enum Table: String, Sendable, CaseIterable {
        case jobRuns = "job_runs"
        case messageLogs = "message_logs"
    }

    /// A UTC calendar day, the unit of partitioning.
    package struct Day: Sendable, Hashable, Comparable, CustomStringConvertible {
        /// Days since 1970-01-01.
        package var index: Int

        package init(index: Int) { self.index = index }

        package init(_ timestamp: Timestamp) {
            let micros = timestamp.microseconds
            let perDay: Int64 = 86_400_000_000
            index = Int(micros >= 0 ? micros / perDay : (micros - perDay + 1) / perDay)
        }

        package init?(year: Int, month: Int, day: Int) {
            guard let date = CivilDate(validating: year, month, day) else { return nil }
            index = date.daysSinceEpoch
        }

        /// Year, month, day (proleptic Gregorian).
        package var civil: (year: Int, month: Int, day: Int) {
            let date = CivilDate(daysSinceEpoch: index)
            return (date.year, date.month, date.day)
        }

        package var start: Timestamp { Timestamp(microseconds: Int64(index) * 86_400_000_000) }
        package func adding(days: Int) -> Day { Day(index: index + days) }

        /// `20261122`.
        package var compact: String {
            let (year, month, day) = civil
            return String(format: "%04d%02d%02d", year, month, day)
        }

        package var description: String {
            let (year, month, day) = civil
            return String(format: "%04d-%02d-%02d", year, month, day)
        }

        package static func < (lhs: Day, rhs: Day) -> Bool { lhs.index < rhs.index }
    }

    /// Advisory lock key for partition DDL ("warren.partitions").
    package static let lockKey: Int64 = 0x5741_5252_454E_0002

    package var logger: Logger

    package init(logger: Logger) { self.logger = logger }

    /// `job_runs_p20261122`.
    package static func partitionName(_ table: Table, _ day: Day) -> String {
        "\(table.rawValue)_p\(day.compact)"
    }

    /// The day a partition name stands for, or nil if it is not one of ours.
    package static func day(ofPartition name: String, table: Table) -> Day? {
        let prefix = "\(table.rawValue)_p"
        guard name.hasPrefix(prefix) else { return nil }
        let digits = name.dropFirst(prefix.count)
        guard digits.count == 8, digits.allSatisfy(\.isASCII), let number = Int(digits) else { return nil }
        return Day(year: number / 10_000, month: number / 100 % 100, day: number % 100)
    }

    /// Creates the partition of `table` for `day` if it is missing.
    package func ensure(table: Table, day: Day, pool: PostgresPool) async throws {
        let name = Self.partitionName(table, day)
        // DDL takes no parameters; every piece here is ours (an enum and digits), never input.
        let sql = """
            CREATE TABLE IF NOT EXISTS \(name) PARTITION OF \(table.rawValue)
            FOR VALUES FROM ('\(day.start.iso8601)') TO ('\(day.adding(days: 1).start.iso8601)')
            """
        do {
            try await pool.withTransaction { connection in
                // Concurrent CREATE ... IF NOT EXISTS can still collide (42P07): serialize.
                try await connection.query("SELECT pg_advisory_xact_lock($1)", [Self.lockKey])
                try await connection.execute(sql)
            }
        } catch let error as PostgresError where error.sqlState == PostgresError.duplicateTable {
            return
        }
    }

    /// Creates partitions for `today` and the `daysAhead` days after it, for every table.
    package func ensureAhead(from today: Day, daysAhead: Int, pool: PostgresPool) async throws {
        for table in Table.allCases {
            for offset in 0...max(0, daysAhead) {
                try await ensure(table: table, day: today.adding(days: offset), pool: pool)
            }
        }
    }

    /// The days that have a partition of `table`, sorted.
    package func partitions(of table: Table, pool: PostgresPool) async throws -> [Day] {
        let rows = try await pool.query("""
            SELECT child.relname
            FROM pg_inherits
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            JOIN pg_namespace ns ON ns.oid = parent.relnamespace
            WHERE parent.relname = $1 AND ns.nspname = current_schema()
            """, [table.rawValue]).rows
        return try rows.compactMap { Self.day(ofPartition: try $0.string(0), table: table) }.sorted()
    }

    /// Drops partitions whose whole day is before `cutoff` (retention). Detaches concurrently
    /// first so writers to other days are not blocked. Returns the dropped partition names.
    @discardableResult
    package func dropOlder(than cutoff: Day, pool: PostgresPool) async throws -> [String] {
        var dropped: [String] = []
        for table in Table.allCases {
            for day in try await partitions(of: table, pool: pool) where day < cutoff {
                let name = Self.partitionName(table, day)
                try await pool.withConnection { connection in
                    // DETACH CONCURRENTLY cannot run in a transaction block; a detach interrupted
                    // half-way leaves the partition "pending": FINALIZE completes it.
                    do {
                        try await connection.execute("ALTER TABLE \(table.rawValue) DETACH PARTITION \(name) CONCURRENTLY")
                    } catch let error as PostgresError where error.sqlState == "55000" {
                        try await connection.execute("ALTER TABLE \(table.rawValue) DETACH PARTITION \(name) FINALIZE")
                    } catch let error as PostgresError where error.sqlState == PostgresError.undefinedTable || error.sqlState == "42P16" {
                        // Already detached or dropped by another process.
                    }
                    try await connection.execute("DROP TABLE IF EXISTS \(name)")
                }
                logger.info("dropped partition", metadata: ["partition": "\(name)"])
                dropped.append(name)
            }
        }
        return dropped
    }
}

extension PartitionManager {
    /// Session advisory lock key that makes one upkeep round run at a time across schedulers.
    package static let upkeepLockKey: Int64 = 0x5741_5252_454E_0003

    /// One upkeep round: partitions for today and `daysAhead` more, and those older than
    /// `retentionDays` dropped. Runs only if no other process is in a round (a try-lock on a
    /// session advisory lock); returns false when it skipped for that reason.
    @discardableResult
    package func upkeep(daysAhead: Int, retentionDays: Int, pool: PostgresPool, now: Timestamp = .now()) async throws -> Bool {
        // One round at a time per schema (another schema's tables have their own upkeep).
        let lockKey = pool.configuration.lockKey(Self.upkeepLockKey)
        return try await pool.withConnection { connection in
            let locked = try await connection.query("SELECT pg_try_advisory_lock($1)", [lockKey]).rows.first?.bool(0) ?? false
            guard locked else {
                logger.debug("partition upkeep skipped: another process holds the upkeep lock")
                return false
            }
            do {
                let today = Day(now)
                try await ensureAhead(from: today, daysAhead: daysAhead, pool: pool)
                let dropped = try await dropOlder(than: today.adding(days: -retentionDays), pool: pool)
                logger.info("partition upkeep done", metadata: [
                    "days_ahead": "\(daysAhead)", "retention_days": "\(retentionDays)", "dropped": "\(dropped.count)",
                ])
                _ = try await connection.query("SELECT pg_advisory_unlock($1)", [lockKey])
                return true
            } catch {
                _ = try? await connection.query("SELECT pg_advisory_unlock($1)", [lockKey])
                throw error
            }
        }
    }
}
