import ArgumentParser
import Common
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// `scheduler`: applies migrations, then keeps daily partitions ready ahead and drops those
/// past retention, every WARREN_UPKEEP_INTERVAL_SECONDS, under a lock so several schedulers
/// do not fight. (Cron, contact events, delayed jobs and leadership are a later issue.)
@main
struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Run Warren's scheduler: migrations and partition upkeep.")

    @Option(help: "Postgres URL (default: $WARREN_DATABASE_URL).")
    var databaseURL: String?

    @Flag(help: "Run one upkeep round and exit.")
    var once = false

    func run() async throws {
        let logger = Observability.bootstrap(service: "scheduler")
        let settings: Settings
        do { settings = try Settings() } catch { throw ValidationError("\(error)") }
        var database = settings.postgres(applicationName: "warren-scheduler")
        if let databaseURL { database.url = databaseURL }
        database.maxConnections = 2
        let pool = PostgresPool(configuration: database, logger: logger)
        let upkeep = UpkeepService(pool: pool, settings: settings, once: once, logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: upkeep, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
        await pool.close()
    }
}

struct UpkeepService: Service {
    let pool: PostgresPool
    let settings: Settings
    let once: Bool
    let logger: Logger

    func run() async throws {
        let applied = try await Migrator(migrations: Schema.migrations, logger: logger).migrate(pool)
        logger.info("migrations done", metadata: ["applied": "\(applied)"])
        let partitions = PartitionManager(logger: logger)
        let backoff = Backoff(base: .seconds(1), cap: .seconds(60), floor: .milliseconds(500))
        var failures = 0
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let wait: Duration
            do {
                try await partitions.upkeep(daysAhead: settings.partitionDaysAhead, retentionDays: settings.retentionDays, pool: pool)
                failures = 0
                wait = .seconds(settings.upkeepIntervalSeconds)
            } catch {
                wait = backoff.delay(attempt: failures)
                failures += 1
                logger.error("partition upkeep failed; retrying", metadata: ["error": "\(error)", "retry_in_ms": "\(wait.milliseconds)"])
                if once { throw error }
            }
            if once { return }
            // Until the next round; SIGTERM ends the sleep (and the service).
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: wait) }
            } catch {
                return
            }
        }
    }
}
