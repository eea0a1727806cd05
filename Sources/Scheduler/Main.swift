import ArgumentParser
import Common
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

/// `scheduler`: applies migrations, keeps daily partitions ready ahead and drops those past
/// retention (every WARREN_UPKEEP_INTERVAL_SECONDS, under a lock), and, while it is the leader
/// (a Postgres advisory lock), fires the cron schedules exactly once each. (Contact events and
/// delayed jobs come next.)
@main
struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Run Warren's scheduler: cron schedules, migrations and partition upkeep.",
        subcommands: [RunCommand.self, SchedulesCommand.self, CronCommand.self],
        defaultSubcommand: RunCommand.self)
}

/// `scheduler` (or `scheduler run`): the service.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run the scheduler (the default).")

    @Option(help: "Postgres URL (default: $WARREN_DATABASE_URL).")
    var databaseURL: String?

    @Flag(help: "Run one upkeep round and exit.")
    var once = false

    @Option(help: "Port for /healthz, /readyz, /metrics and /status (default: $WARREN_ADMIN_PORT or 9090; 0 picks a free one).")
    var adminPort: Int?

    @Option(help: ArgumentHelp("Read the time from this file (an ISO 8601 instant, re-read every tick) instead of the system clock: for tests and rehearsals.", visibility: .hidden))
    var clockFile: String?

    func run() async throws {
        let logger = Observability.bootstrap(service: "scheduler")
        let settings: Settings
        let admin: (host: String, port: Int)
        do {
            settings = try Settings()
            admin = try AdminServer.address(flag: adminPort, environment: ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError("\(error)")
        }
        var database = settings.postgres(applicationName: "warren-scheduler")
        if let databaseURL { database.url = databaseURL }
        database.maxConnections = 2
        let pool = PostgresPool(configuration: database, logger: logger)
        let upkeep = UpkeepService(pool: pool, settings: settings, once: once, logger: logger)
        var statusExtra: @Sendable () -> String = { #""leader":false"# }
        var firingConnection: AMQPConnection?
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: upkeep, successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        if !once {
            let amqp: AMQPConfiguration
            do { amqp = try AMQPConfiguration(url: settings.amqpURL, connectionName: "scheduler") } catch {
                throw ValidationError("\(error)")
            }
            let publisher = JobPublisher(configuration: amqp, logger: logger)
            firingConnection = publisher.connection
            let firing = FiringService(store: ScheduleStore(pool: pool), publisher: publisher,
                                       lock: LeaderLock(configuration: database, logger: logger),
                                       clock: clockFile.map(SchedulerClock.file) ?? .system, interval: .seconds(1), logger: logger)
            services.append(.init(service: firing))
            statusExtra = { firing.statusJSON() }
        }
        if !once {
            services.append(.init(service: AdminServer.service(
                host: admin.host, port: admin.port,
                ready: { [firingConnection] in await AdminServer.unreachable(broker: firingConnection, database: pool) },
                status: { [statusExtra] in
                    let upkeepStatus = await upkeep.statusJSON()
                    return String(upkeepStatus.dropLast()) + "," + statusExtra() + "}"
                }, logger: logger)))
        }
        let group = ServiceGroup(configuration: .init(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
        await pool.close()
    }
}

final class UpkeepService: Service {
    let pool: PostgresPool
    let settings: Settings
    let once: Bool
    let logger: Logger
    /// When the last upkeep round succeeded, and the last error since.
    private let progress = Mutex<(succeeded: Timestamp?, error: String?)>((nil, nil))

    init(pool: PostgresPool, settings: Settings, once: Bool, logger: Logger) {
        self.pool = pool
        self.settings = settings
        self.once = once
        self.logger = logger
    }

    func statusJSON() async -> String {
        let (succeeded, error) = progress.withLock { ($0.succeeded, $0.error) }
        return #"{"service":"scheduler","last_upkeep":\#(succeeded.map { "\"\($0.iso8601)\"" } ?? "null"),"last_error":\#(error.map(JSONText.quoted) ?? "null"),"upkeep_interval_seconds":\#(settings.upkeepIntervalSeconds)}"#
    }

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
                progress.withLock { $0 = (Timestamp.now(), nil) }
                wait = .seconds(settings.upkeepIntervalSeconds)
            } catch {
                wait = backoff.delay(attempt: failures)
                failures += 1
                progress.withLock { $0.error = "\(error)" }
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
