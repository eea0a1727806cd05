import Logging

/// One schema change: ordered by `version`, applied once, in its own transaction.
package struct Migration: Sendable {
    package var version: Int
    package var name: String
    package var sql: String

    package init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
    }
}

/// Applies migrations under a session advisory lock and records them in `schema_migrations`,
/// so running it twice, or from several replicas at once, applies each migration exactly once.
///
/// The lock is the schema's own (``PostgresConfiguration/lockKey(_:)``): deployments in other
/// schemas migrate beside it. Waiting for it, and the migrations themselves, run without the
/// service `statement_timeout`: a replica that starts while another applies a long migration
/// waits for it rather than failing its start (with fifty starting at once, waits of more than
/// 30 s ended them with SQLSTATE 57014).
package struct Migrator: Sendable {
    /// Advisory lock key every Warren process of one schema shares ("warren.migrations").
    package static let lockKey: Int64 = 0x5741_5252_454E_0001

    package var migrations: [Migration]
    package var logger: Logger

    package init(migrations: [Migration], logger: Logger) {
        self.migrations = migrations.sorted { $0.version < $1.version }
        self.logger = logger
    }

    /// Applies what is missing; returns the versions applied by this call.
    @discardableResult
    package func migrate(_ pool: PostgresPool) async throws -> [Int] {
        let key = pool.configuration.lockKey(Self.lockKey)
        return try await pool.withConnection { connection in
            try await connection.execute("SET statement_timeout = 0")
            let applied: [Int]
            do {
                try await connection.query("SELECT pg_advisory_lock($1)", [key])
                do {
                    applied = try await migrate(connection)
                } catch {
                    _ = try? await connection.query("SELECT pg_advisory_unlock($1)", [key])
                    throw error
                }
                try await connection.query("SELECT pg_advisory_unlock($1)", [key])
            } catch {
                try? await connection.execute("RESET statement_timeout")
                throw error
            }
            // Back to the service timeout before the connection returns to the pool.
            try await connection.execute("RESET statement_timeout")
            return applied
        }
    }

    private func migrate(_ connection: PostgresConnection) async throws -> [Int] {
        try await connection.execute("""
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """)
        let done = Set(try await connection.query("SELECT version FROM schema_migrations").rows.map { try $0.int(0) })
        var applied: [Int] = []
        for migration in migrations where !done.contains(migration.version) {
            try await connection.execute("BEGIN")
            do {
                try await connection.execute(migration.sql)
                try await connection.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [migration.version, migration.name])
                try await connection.execute("COMMIT")
            } catch {
                try? await connection.execute("ROLLBACK")
                throw error
            }
            logger.info("applied migration", metadata: ["migration.version": "\(migration.version)", "migration.name": "\(migration.name)"])
            applied.append(migration.version)
        }
        return applied
    }
}
