import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals
import WarrenAMQP
import WarrenCommands
import WarrenConfig
import WarrenJobs
import WarrenNotify
import WarrenObservability
import WarrenPostgres
import WarrenResilience
import WarrenStore
import WarrenSupport
import WarrenWorker

/// `consumer --tier free`: works one tier's queue until SIGTERM or SIGINT (graceful: no new
/// deliveries, in-flight jobs finish within the grace period, results flushed and acked).
@main
struct ConsumerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "consumer",
        abstract: "Run one tier's jobs: prefetch admission, durable results, then ack.",
        discussion: """
            Defaults per tier (concurrency / prefetch): enterprise 64 / 2000, premium 32 / 1500, free 16 / 1000. \
            Every option also reads a WARREN_* variable (see README.md); flags win.
            """)

    @Option(help: "Tier whose queue to work: enterprise, premium or free (default: $WARREN_TIER).")
    var tier: String?

    @Option(help: """
        An overflow pool over these tiers' queues, comma-separated (e.g. enterprise,premium,free; default: $WARREN_TIERS):         it takes a queue's work only while that tier's own consumers are full, highest tier first.
        """)
    var tiers: String?

    @Flag(help: "An overflow pool over all three tiers (the same as --tiers enterprise,premium,free).")
    var overflow = false

    @Option(help: "Jobs run at once (default: $WARREN_CONCURRENCY or the tier's).")
    var concurrency: Int?

    @Option(help: "Unacknowledged deliveries held at once, per consumer (default: $WARREN_PREFETCH or the tier's).")
    var prefetch: Int?

    @Option(help: "Drain mode: exit 0 once the queue stayed empty this long, e.g. 2s or 500ms.")
    var exitWhenIdle: String?

    @Option(help: "Seconds in-flight jobs get to finish on SIGTERM (default: $WARREN_SHUTDOWN_GRACE_SECONDS or 25).")
    var shutdownGrace: Double?

    @Option(help: "Port for /healthz, /readyz, /metrics and /status (default: $WARREN_ADMIN_PORT or 9090; 0 picks a free one).")
    var adminPort: Int?

    @Option(help: "AMQP URL or comma-separated list (default: $WARREN_AMQP_URL).")
    var amqpURL: String?

    @Option(help: "Postgres URL (default: $WARREN_DATABASE_URL).")
    var databaseURL: String?

    func run() async throws {
        MallocArenas.limit()
        let logger = Observability.bootstrap(service: "consumer", durationBuckets: ConsumerMetrics.durationBuckets)
        let environment = ProcessInfo.processInfo.environment
        let traces: (any Service)?
        do { traces = try Traces.bootstrap(service: "consumer", logger: logger) } catch { throw ValidationError("\(error)") }
        let consumerConfiguration: ConsumerConfiguration
        let settings: Settings
        let amqp: AMQPConfiguration
        let admin: (host: String, port: Int)
        let notify: NotifyConfiguration
        let commands: [CommandHandler]
        let http: (entries: [(type: String, url: URL)], settings: HTTPJobHandler.Settings)
        do {
            settings = try Settings(environment: environment)
            var configuration: ConsumerConfiguration
            let tierList = overflow ? Tier.allCases.map(\.rawValue).joined(separator: ",") : tiers ?? environment["WARREN_TIERS"]
            if let tierList, tier == nil {
                var parsed: [Tier] = []
                for name in tierList.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                    do { parsed.append(try Tier.parse(name)) } catch { throw ValidationError("--tiers: \(error.message)") }
                }
                guard !parsed.isEmpty, Set(parsed).count == parsed.count else {
                    throw ValidationError("--tiers: expected distinct tiers, comma-separated (enterprise,premium,free), got '\(tierList)'")
                }
                configuration = try ConsumerConfiguration.overflow(tiers: parsed, environment: environment)
            } else {
                guard !overflow, tiers == nil else { throw ValidationError("give --tier, or --tiers / --overflow, not both") }
                guard let tierName = tier ?? environment["WARREN_TIER"] else {
                    throw ValidationError("--tier is required (enterprise, premium or free), or --tiers / --overflow for an overflow pool")
                }
                let parsedTier: Tier
                do { parsedTier = try Tier.parse(tierName) } catch { throw ValidationError("--tier: \(error.message)") }
                configuration = try ConsumerConfiguration(tier: parsedTier, environment: environment)
            }
            if let concurrency {
                guard (1...10_000).contains(concurrency) else { throw ValidationError("--concurrency must be 1...10000") }
                configuration.concurrency = concurrency
            }
            if let prefetch {
                guard (1...65_535).contains(prefetch) else { throw ValidationError("--prefetch must be 1...65535") }
                configuration.prefetch = UInt16(prefetch)
            }
            if let shutdownGrace {
                guard (0...3_600).contains(shutdownGrace) else { throw ValidationError("--shutdown-grace must be 0...3600 seconds") }
                configuration.shutdownGrace = .milliseconds(Int64(shutdownGrace * 1_000))
            }
            if let exitWhenIdle {
                guard let idle = parseDuration(exitWhenIdle) else {
                    throw ValidationError("--exit-when-idle: expected a duration like 2s or 500ms, got '\(exitWhenIdle)'")
                }
                configuration.exitWhenIdle = idle
            }
            notify = try NotifyConfiguration(environment: environment)
            commands = try CommandHandler.configured(environment)
            http = try HTTPJobHandler.configured(environment)
            // A limit on the notification service, unless WARREN_RATE_LIMITED_TYPES names one for message.send.
            if let limit = notify.destinationLimit, configuration.outboundLimits.byType[MessageSendHandler.jobType] == nil {
                configuration.outboundLimits.byType[MessageSendHandler.jobType] = limit
            }
            consumerConfiguration = configuration
            admin = try AdminServer.address(flag: adminPort, environment: environment)
            amqp = try AMQPConfiguration(url: amqpURL ?? settings.amqpURL, connectionName: "consumer \(configuration.consumerID)")
        } catch let error as ValidationError {
            throw error
        } catch {
            throw ValidationError("\(error)")
        }
        var database = settings.postgres(applicationName: "warren-consumer-\(consumerConfiguration.tiers.count == 1 ? consumerConfiguration.tier.rawValue : "overflow")")
        if let databaseURL { database.url = databaseURL }
        database.maxConnections = 4

        // One HTTP client for every message.send job of this process; the group starts it first
        // so it shuts down last, after the consumer's in-flight jobs.
        let notifier = Notifier(configuration: notify, concurrency: consumerConfiguration.concurrency,
                                needsClient: !http.entries.isEmpty, logger: logger)
        if notify.url == nil {
            logger.warning("\(NotifyConfiguration.Key.url) is not set: message.send jobs will fail permanently")
        }
        let priority = consumerConfiguration.nice.map { PriorityKeeper(fixed: $0) }
            ?? PriorityKeeper(adaptive: ProcessPriority.defaultNice(for: consumerConfiguration))
        priority.start(logger: logger)
        var handlers = HandlerRegistry.standard(notifier: notifier)
        for command in commands {
            do { try handlers.register(command) } catch { throw ValidationError("\(CommandHandler.Key.handlers): \(error)") }
        }
        for entry in http.entries {
            let handler = HTTPJobHandler(type: entry.type, url: entry.url, settings: http.settings, notifier: notifier)
            do { try handlers.register(handler) } catch { throw ValidationError("\(HTTPJobHandler.Key.handlers): \(error)") }
        }
        let consumer = JobConsumer(configuration: consumerConfiguration, amqp: amqp, database: database,
                                   handlers: handlers, priority: priority, logger: logger)
        let adminBound = OneShot<Int>()
        let adminServer = AdminServer.service(host: admin.host, port: admin.port, ready: { await consumer.unreachable() },
                                              status: { await consumer.statusJSON(extra: [("notify", notifier.statusJSON())]) },
                                              posts: [AdminServer.PostRoute(name: "progress") { consumer.progress.answer(token: $0, body: $1) }], bound: adminBound, logger: logger)
        // Past the grace period jobs are handed back and the last batch abandoned; this bounds
        // everything else (a handler ignoring cancellation, a hung close).
        // The trace exporter first: services stop in reverse order, so it flushes last.
        let group = ServiceGroup.warren(
            (traces.map { [.init(service: $0)] } ?? []) + [.init(service: NotifierService(notifier: notifier)),
             .init(service: adminServer),
             .init(service: ConsumerService(consumer: consumer, adminBound: adminBound, admin: admin,
                                            progressBaseURL: environment["WARREN_PROGRESS_BASE_URL"]),
                   successTerminationBehavior: .gracefullyShutdownGroup)],
            shutdownWithin: consumerConfiguration.shutdownGrace + consumerConfiguration.abandonAfter + .seconds(5), logger: logger)
        try await group.run()
    }
}

/// The consumer as a swift-service-lifecycle service: graceful shutdown calls `stop()`.
struct ConsumerService: Service {
    let consumer: JobConsumer
    /// The admin port, once it listens: no job is taken before (a taken port ends the group first).
    let adminBound: OneShot<Int>
    let admin: (host: String, port: Int)
    /// Where handlers outside the process reach the admin port (`WARREN_PROGRESS_BASE_URL`);
    /// nil: the admin address, or this host's name when it listens on every interface.
    let progressBaseURL: String?

    func run() async throws {
        _ = try await withGracefulShutdownHandler {
            guard let port = await adminBound.wait() else { return }
            consumer.progress.serve(at: progressBaseURL ?? ProgressTracker.baseURL(host: admin.host, port: port))
            try await consumer.run()
        } onGracefulShutdown: {
            consumer.stop()
        }
    }
}

/// Keeps the notifier's HTTP client for the life of the group and closes it on shutdown (the
/// group stops services in reverse order, so the consumer has finished with it by then).
struct NotifierService: Service, CustomStringConvertible {
    let notifier: Notifier
    var description: String { "Notifier" }

    func run() async throws {
        try? await gracefulShutdown()
        await notifier.shutdown()
    }
}
