import Foundation

/// Configuration from the environment (twelve-factor). Every key is documented in the
/// README's configuration table, and every default works with `./infra/local/run`.
package struct Settings: Sendable {
    package enum Key {
        package static let amqpURL = "WARREN_AMQP_URL"
        package static let databaseURL = "WARREN_DATABASE_URL"
        package static let databaseSchema = "WARREN_DATABASE_SCHEMA"
        package static let partitionDaysAhead = "WARREN_PARTITION_DAYS_AHEAD"
        package static let retentionDays = "WARREN_RETENTION_DAYS"
        package static let upkeepInterval = "WARREN_UPKEEP_INTERVAL_SECONDS"
        package static let stallSeconds = "WARREN_STALL_SECONDS"
    }

    package static let defaultAMQPURL = "amqp://guest:guest@127.0.0.1:5672/%2f"
    package static let defaultDatabaseURL = "postgresql://warren:warren@127.0.0.1:55432/warren"

    package var amqpURL: String
    package var databaseURL: String
    /// The schema Warren's tables live in (`search_path`); nil for the role's default.
    package var databaseSchema: String?
    /// Daily partitions kept ready ahead of today.
    package var partitionDaysAhead: Int
    /// Days of job_runs and message_logs kept; older partitions are dropped.
    package var retentionDays: Int
    /// How often the scheduler runs partition upkeep.
    package var upkeepIntervalSeconds: Int
    /// A running job that neither reported progress nor heartbeat for this long reads
    /// `stalled` (`GET /v1/jobs/{id}`, the consumers' `warren_consumer_jobs_stalled`).
    package var stallSeconds: Int

    package static let defaultStallSeconds = 120

    package init(environment: [String: String] = ProcessInfo.processInfo.environment) throws(SettingsError) {
        let reader = EnvironmentReader(environment)
        amqpURL = reader.string(Key.amqpURL) ?? Self.defaultAMQPURL
        databaseURL = reader.string(Key.databaseURL) ?? Self.defaultDatabaseURL
        databaseSchema = reader.string(Key.databaseSchema)
        if let schema = databaseSchema, !schema.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) {
            throw SettingsError(key: Key.databaseSchema, message: "must be a plain identifier (letters, digits, _), got '\(schema)'")
        }
        partitionDaysAhead = try reader.integer(Key.partitionDaysAhead, 1...366) ?? 7
        retentionDays = try reader.integer(Key.retentionDays, 1...3660) ?? 30
        upkeepIntervalSeconds = try reader.integer(Key.upkeepInterval, 1...86_400) ?? 300
        stallSeconds = try reader.integer(Key.stallSeconds, 1...604_800) ?? Self.defaultStallSeconds
    }
}

/// A configuration value that cannot be used, naming its environment variable.
package struct SettingsError: Error, Sendable, CustomStringConvertible {
    package var key: String
    package var message: String
    package var description: String { "\(key) \(message)" }

    package init(key: String, message: String) {
        self.key = key
        self.message = message
    }
}
