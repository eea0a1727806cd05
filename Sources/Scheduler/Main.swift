import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals
import WarrenAMQP
import WarrenConfig
import WarrenJobs
import WarrenObservability
import WarrenPostgres
import WarrenScheduling
import WarrenStore
import WarrenSupport

/// `scheduler`: applies migrations, then, while it is the leader (a Postgres advisory lock
/// on its own connection), fires the cron schedules and contact events exactly once each,
/// publishes delayed jobs when due, and keeps daily partitions ready ahead (dropping those
/// past retention).
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
        MallocArenas.limit()
        let logger = Observability.bootstrap(service: "scheduler")
        let settings: Settings
        let admin: (host: String, port: Int)
        let amqp: AMQPConfiguration
        do {
            settings = try Settings()
            admin = try AdminServer.address(flag: adminPort, environment: ProcessInfo.processInfo.environment)
            amqp = try AMQPConfiguration(url: settings.amqpURL, connectionName: "scheduler")
        } catch {
            throw ValidationError("\(error)")
        }
        let catchUpText = ProcessInfo.processInfo.environment["WARREN_CONTACT_CATCH_UP_SECONDS"] ?? "86400"
        guard let contactCatchUp = Int64(catchUpText), contactCatchUp >= 0 else {
            throw ValidationError("WARREN_CONTACT_CATCH_UP_SECONDS must be a whole number of seconds, 0 or more (got '\(catchUpText)')")
        }
        var database = settings.postgres(applicationName: "warren-scheduler")
        if let databaseURL { database.url = databaseURL }
        database.maxConnections = 3
        let pool = PostgresPool(configuration: database, logger: logger)
        try await pool.closing { pool in
            let applied = try await Migrator(migrations: Schema.migrations, logger: logger).migrate(pool)
            logger.info("migrations done", metadata: ["applied": "\(applied)"])
            if once {
                try await UpkeepDuty.once(pool: pool, settings: settings, logger: logger)
                return
            }
            let publisher = JobPublisher(configuration: amqp, logger: logger)
            let duties: [any LeaderDuty] = [
                CronDuty(store: ScheduleStore(pool: pool), publisher: publisher, logger: logger),
                DelayedJobDuty(store: Outbox(pool: pool), publisher: publisher, logger: logger),
                ContactEventDuty(store: ContactStore(pool: pool), publisher: publisher, catchUpSeconds: contactCatchUp, logger: logger),
                UpkeepDuty(pool: pool, settings: settings, logger: logger),
            ]
            let leader = LeaderService(duties: duties, publisher: publisher, lock: LeaderLock(configuration: database, logger: logger),
                                       clock: clockFile.map(SchedulerClock.file) ?? .system, interval: .milliseconds(250),
                                       logger: logger)
            let adminServer = AdminServer.service(
                host: admin.host, port: admin.port,
                ready: { await Readiness.unreachable(broker: publisher.connection, database: pool) },
                status: { #"{"service":"scheduler",\#(leader.statusJSON())}"# }, logger: logger)
            let keeper = DeadLetterKeeper(amqp: amqp, store: DeadLetterStore(pool: pool), logger: logger)
            let group = ServiceGroup.warren([.init(service: leader), .init(service: keeper), .init(service: adminServer)],
                                            shutdownWithin: .seconds(30), logger: logger)
            try await group.run()
        }
    }
}
