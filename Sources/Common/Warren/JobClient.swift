import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import WarrenAMQP
import WarrenConfig
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// Publishes jobs from Swift: what `producer publish` and `POST /v1/jobs` do, for producers
/// written in Swift.
///
/// ```swift
/// let client = try JobClient(configuration: .init(), logger: logger)
/// let id = try await client.enqueue("email.welcome", payload: WelcomeEmail(email: "a@example.com", name: "Ada"),
///                                   options: .init(tier: .premium, idempotencyKey: "welcome-42"))
/// await client.close()
/// ```
///
/// ``enqueue(_:payload:options:)`` returns only once the broker confirmed the job (or, for a
/// delayed job, once Postgres holds it; the scheduler publishes it when due), so a job it
/// returned an id for is not lost. It connects on first use; run it as a `Service` in your
/// `ServiceGroup` to have it closed on shutdown, or call ``close()``.
///
/// Part of Warren's public API.
public final class JobClient: Service, Sendable, CustomStringConvertible {
    /// Where a client publishes.
    public struct Configuration: Sendable {
        /// The broker: an `amqp://` URL, or a comma-separated list for a cluster (`WARREN_AMQP_URL`).
        public var amqpURL: String
        /// The database delayed jobs are held in (`WARREN_DATABASE_URL`); used only by delayed jobs.
        public var databaseURL: String
        package var databaseSchema: String?

        /// From `environment` (`WARREN_AMQP_URL`, `WARREN_DATABASE_URL`, `WARREN_DATABASE_SCHEMA`),
        /// with the defaults of `./infra/local/run`.
        public init(environment: [String: String] = ProcessInfo.processInfo.environment) throws {
            let settings = try Settings(environment: environment)
            amqpURL = settings.amqpURL
            databaseURL = settings.databaseURL
            databaseSchema = settings.databaseSchema
        }
    }

    /// How one job is published.
    public struct Options: Sendable {
        /// The tier whose queue it goes to.
        public var tier: Tier
        /// The tenant it belongs to: its lane for fair dispatch, and what `GET /v1/jobs` filters on.
        public var tenant: String?
        /// Handed to the handler (``JobContext/idempotencyKey``) to pass downstream.
        public var idempotencyKey: String?
        /// At most ``concurrencyLimit`` jobs of this key run at once, across every worker.
        public var concurrencyKey: String?
        /// With ``concurrencyKey``: how many of its jobs may run at once (1 when nil).
        public var concurrencyLimit: Int?
        /// Run it this long from now instead of at once (at most 366 days): held in Postgres
        /// until due, then published by the scheduler's leader.
        public var delay: Duration?
        /// Carried as the message's `correlation_id`, for your own tracing.
        public var correlationID: String?

        public init(tier: Tier = .free, tenant: String? = nil, idempotencyKey: String? = nil, concurrencyKey: String? = nil,
                    concurrencyLimit: Int? = nil, delay: Duration? = nil, correlationID: String? = nil) {
            self.tier = tier
            self.tenant = tenant
            self.idempotencyKey = idempotencyKey
            self.concurrencyKey = concurrencyKey
            self.concurrencyLimit = concurrencyLimit
            self.delay = delay
            self.correlationID = correlationID
        }
    }

    private let publisher: JobPublisher
    private let pool: PostgresPool
    private let migrated = Mutex(false)
    private let logger: Logger

    /// A client for `configuration`. Throws if the broker URL is malformed; connects on first use.
    public init(configuration: Configuration, logger: Logger) throws {
        let amqp = try AMQPConfiguration(url: configuration.amqpURL, connectionName: "job client")
        publisher = JobPublisher(configuration: amqp, logger: logger)
        var database = PostgresConfiguration(url: configuration.databaseURL, applicationName: "warren-job-client")
        if let schema = configuration.databaseSchema { database.searchPath = schema }
        database.maxConnections = 2
        pool = PostgresPool(configuration: database, logger: logger)
        self.logger = logger
    }

    public var description: String { "JobClient" }

    /// Publishes a job of `type` whose payload is `payload` encoded as JSON, and returns its id
    /// once the broker confirmed it. Throws ``JobError`` for a job it refuses (a malformed type,
    /// tenant or key; nothing is published), or the broker's or database's error.
    @discardableResult
    public func enqueue(_ type: String, payload: some Encodable, options: Options = Options()) async throws -> String {
        try await enqueue(type, json: Array(JSONEncoder().encode(payload)), options: options)
    }

    /// Publishes a job whose payload is `json` (a JSON object), and returns its id once the broker
    /// confirmed it. Throws as ``enqueue(_:payload:options:)``.
    @discardableResult
    public func enqueue(_ type: String, json: [UInt8], options: Options = Options()) async throws -> String {
        let request = try JobRequest(type: type, tier: options.tier, payload: json, idempotencyKey: options.idempotencyKey,
                                     tenant: options.tenant, concurrencyKey: options.concurrencyKey,
                                     concurrencyLimit: options.concurrencyLimit)
        var job = request.envelope(correlationID: options.correlationID)
        if let delay = options.delay, delay > .zero {
            guard delay <= .seconds(Outbox.maxDelaySeconds) else {
                throw JobError(field: "delay", message: "a delay is at most \(Outbox.maxDelaySeconds / 86_400) days")
            }
            job.enqueuedAt = Timestamp(microseconds: job.enqueuedAt.microseconds + delay.nanoseconds / 1_000)
            try await migrateOnce()
            try await Outbox(pool: pool).hold(job)
        } else {
            try await publisher.start()
            try await publisher.publish(job)
        }
        return job.id.lowercasedString
    }

    /// Closes the broker connection and the database pool. Later enqueues fail.
    public func close() async {
        await publisher.close()
        await pool.close()
    }

    /// Connects, then waits for graceful shutdown (or cancellation) and closes.
    public func run() async throws {
        try await publisher.start()
        try? await gracefulShutdown()
        await close()
    }

    /// Delayed jobs need the `delayed_jobs` table: apply Warren's migrations once (safe beside
    /// every other service doing the same).
    private func migrateOnce() async throws {
        guard !migrated.withLock({ $0 }) else { return }
        _ = try await Migrator(migrations: Schema.migrations, logger: logger).migrate(pool)
        migrated.withLock { $0 = true }
    }
}
