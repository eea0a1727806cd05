import Foundation
import Logging
import WarrenConfig
import WarrenPostgres

extension Settings {
    /// The Postgres configuration for `service` (its `application_name`).
    package func postgres(applicationName: String) -> PostgresConfiguration {
        var configuration = PostgresConfiguration(url: databaseURL, applicationName: applicationName)
        if let databaseSchema { configuration.searchPath = databaseSchema }
        return configuration
    }
}

extension PostgresPool {
    /// For one-shot commands (`producer tokens`, `scheduler schedules`): a pool on the
    /// configured database with Warren's migrations applied, closed after `body`.
    package static func withMigrated<T: Sendable>(applicationName: String, _ body: (PostgresPool) async throws -> T) async throws -> T {
        var logger = Logger(label: "warren.\(applicationName)")
        logger.logLevel = .warning
        let pool = PostgresPool(configuration: try Settings().postgres(applicationName: applicationName), logger: logger)
        return try await pool.closing { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: logger).migrate(pool)
            return try await body(pool)
        }
    }
}
