import Foundation
import Logging
import ServiceLifecycle
import WarrenAMQP
import WarrenConfig
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenWorker

/// Runs your handlers on Warren's queues: the engine of the `consumer` command, as a
/// swift-service-lifecycle `Service` you run in your own `ServiceGroup`.
///
/// ```swift
/// let worker = try Worker(configuration: .init(tiers: [.premium]), handlers: [SendWelcomeEmail()], logger: logger)
/// let group = ServiceGroup(services: [worker], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
/// try await group.run()
/// ```
///
/// It keeps every promise of the `consumer` command: a job's outcome is recorded in Postgres
/// (`job_runs`, `message_logs`) before its delivery is acked; retries, dead letters, concurrency
/// keys, outbound limits, cancellation and tenant lanes work the same way. On graceful shutdown
/// it takes no new job, lets running ones finish within ``Configuration/shutdownGrace``, writes
/// their results and returns. It runs only the handlers you give it: a job of another type fails
/// permanently, naming its type, so publish each type to the tiers its workers take.
///
/// Part of Warren's public API.
public struct Worker: Service, CustomStringConvertible {
    /// Where a worker connects and how much it takes on. Start from ``init(tiers:environment:)``,
    /// which reads the same environment variables as the `consumer` command (README,
    /// "Configuration"), then set what your program decides itself.
    public struct Configuration: Sendable {
        package var consumer: ConsumerConfiguration
        package var settings: Settings

        /// The broker: an `amqp://` URL, or a comma-separated list of them for a cluster
        /// (`WARREN_AMQP_URL`).
        public var amqpURL: String {
            get { settings.amqpURL }
            set { settings.amqpURL = newValue }
        }

        /// The database results are written to (`WARREN_DATABASE_URL`).
        public var databaseURL: String {
            get { settings.databaseURL }
            set { settings.databaseURL = newValue }
        }

        /// The tiers taken from: one tier's pool, or several (an overflow pool, highest tier first).
        public var tiers: [Tier] { consumer.tiers }

        /// Jobs run at once (`WARREN_CONCURRENCY`, or the tier's default).
        public var concurrency: Int {
            get { consumer.concurrency }
            set { consumer.concurrency = max(1, newValue) }
        }

        /// Deliveries held per queue before they start (`WARREN_PREFETCH`, or the tier's default).
        public var prefetch: Int {
            get { Int(consumer.prefetch) }
            set { consumer.prefetch = UInt16(clamping: max(1, newValue)) }
        }

        /// How long running jobs may take to finish after shutdown begins (`WARREN_SHUTDOWN_GRACE_SECONDS`).
        public var shutdownGrace: Duration {
            get { consumer.shutdownGrace }
            set { consumer.shutdownGrace = newValue }
        }

        /// This worker's name in logs, `job_runs` and the broker's consumer list.
        public var workerID: String {
            get { consumer.consumerID }
            set { consumer.consumerID = newValue }
        }

        /// A worker of `tiers` (one tier, or several for an overflow pool, highest first), with
        /// everything else from `environment`. Throws an error naming the variable that is wrong.
        public init(tiers: [Tier], environment: [String: String] = ProcessInfo.processInfo.environment) throws {
            guard !tiers.isEmpty, Set(tiers).count == tiers.count else {
                throw JobError(field: "tiers", message: "a worker takes one or more distinct tiers, got \(tiers)")
            }
            settings = try Settings(environment: environment)
            consumer = tiers.count == 1
                ? try ConsumerConfiguration(tier: tiers[0], environment: environment)
                : try ConsumerConfiguration.overflow(tiers: tiers, environment: environment)
        }
    }

    private let configuration: Configuration
    private let amqp: AMQPConfiguration
    private let handlers: HandlerRegistry
    private let logger: Logger

    /// A worker running `handlers`. Throws if the broker URL is malformed or two handlers claim
    /// one job type; connects only when run.
    public init(configuration: Configuration, handlers: [any JobHandler], logger: Logger) throws {
        var registry = HandlerRegistry()
        for handler in handlers { try registry.register(handler) }
        try self.init(configuration: configuration, registry: registry, logger: logger)
    }

    /// A worker running the handlers of `registry`.
    public init(configuration: Configuration, registry: HandlerRegistry, logger: Logger) throws {
        self.configuration = configuration
        self.handlers = registry
        self.logger = logger
        amqp = try AMQPConfiguration(url: configuration.amqpURL, connectionName: "worker \(configuration.workerID)")
    }

    public var description: String { "Worker(\(configuration.tiers.map(\.rawValue).joined(separator: ",")))" }

    /// Connects, applies Warren's migrations, and works the queues until graceful shutdown (or
    /// task cancellation). Throws if the broker or the database cannot be reached at start.
    public func run() async throws {
        var database = configuration.settings.postgres(applicationName: "warren-worker")
        database.maxConnections = 4
        let consumer = JobConsumer(configuration: configuration.consumer, amqp: amqp, database: database,
                                   handlers: handlers, logger: logger)
        _ = try await withTaskCancellationOrGracefulShutdownHandler {
            try await consumer.run()
        } onCancelOrGracefulShutdown: {
            consumer.stop()
        }
    }
}
