import ArgumentParser
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import ServiceLifecycle
import UnixSignals
import WarrenAMQP
import WarrenAPI
import WarrenConfig
import WarrenJobs
import WarrenObservability
import WarrenPostgres
import WarrenResilience
import WarrenStore
import WarrenSupport

/// `producer serve`: the HTTP API (see docs/architecture.md). Configuration from the
/// environment: `WARREN_HTTP_PORT` (8080; 0 picks a free one, logged at start as `http_port`), `WARREN_HTTP_HOST` (0.0.0.0), `WARREN_HTTP_MAX_BODY_BYTES`
/// (1 MiB), `WARREN_JOB_TYPES` (extra accepted job types, comma-separated), `WARREN_BATCH_SWEEP_MS`
/// (how often completed batches are looked for, 1000), `WARREN_TOKEN_CACHE_SECONDS` (how long a
/// valid token is remembered, 2; a revoked one stops working within that),
/// `WARREN_HTTP_IDLE_TIMEOUT_SECONDS` (30: a connection that sends nothing, or has not finished
/// a request's headers, for that long is closed, so slow clients cannot hold descriptors),
/// `WARREN_CONSOLE_SESSION_HOURS` (how long a web console sign-in lasts, 8; 0 turns the console
/// off), `WARREN_RABBITMQ_MANAGEMENT_URL` (where the console reads queue figures; default
/// `http://<AMQP host>:15672`, with the AMQP URL's user and password).
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Serve the HTTP API.")

    @Option(help: "Port (default: $WARREN_HTTP_PORT or 8080; 0 picks a free one, logged at start).")
    var port: Int?

    @Option(help: "Address to listen on (default: $WARREN_HTTP_HOST or 0.0.0.0).")
    var host: String?

    func run() async throws {
        MallocArenas.limit()
        let logger = Observability.bootstrap(service: "producer")
        let environment = ProcessInfo.processInfo.environment
        let traces: (any Service)?
        do { traces = try Traces.bootstrap(service: "producer", logger: logger) } catch { throw ValidationError("\(error)") }
        let settings: Settings
        do { settings = try Settings() } catch { throw ValidationError("\(error)") }
        let reader = EnvironmentReader(environment)
        let listenPort: Int
        let maxBody: Int
        let batchSweep: Int
        let tokenCacheSeconds: Int
        let idleTimeout: Int
        do {
            listenPort = try port ?? reader.integer("WARREN_HTTP_PORT", 0...65_535) ?? 8080
            maxBody = try reader.integer("WARREN_HTTP_MAX_BODY_BYTES", 1...1_073_741_824) ?? 1_048_576
            batchSweep = try reader.integer("WARREN_BATCH_SWEEP_MS", 10...3_600_000) ?? 1_000
            tokenCacheSeconds = try reader.integer("WARREN_TOKEN_CACHE_SECONDS", 0...3_600) ?? 2
            idleTimeout = try reader.integer("WARREN_HTTP_IDLE_TIMEOUT_SECONDS", 1...3_600) ?? 30
        } catch {
            throw ValidationError("\(error)")
        }
        guard (0...65_535).contains(listenPort) else { throw ValidationError("--port must be 0...65535") }
        let extraTypes = (reader.string("WARREN_JOB_TYPES") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let amqp: AMQPConfiguration
        do { amqp = try AMQPConfiguration(url: settings.amqpURL, connectionName: "producer serve") } catch {
            throw ValidationError("\(error)")
        }
        let publisher = JobPublisher(configuration: amqp, logger: logger)
        let pool = PostgresPool(configuration: settings.postgres(applicationName: "warren-producer"), logger: logger)
        try await publisher.start()
        _ = try await Migrator(migrations: Schema.migrations, logger: logger).migrate(pool)

        let rateLimits: [Tier: RateLimiter.Limit]
        let shedPolicy: ShedPolicy
        let shedPoll: Int
        let shedTargets: TierTargets?
        let leaseTimeout: Int
        let slowRequest: Int
        let consoleHours: Int
        do {
            rateLimits = try RateLimiter.limits(environment: environment)
            shedPolicy = try ShedPolicy(environment: environment)
            shedPoll = try reader.integer("WARREN_SHED_POLL_MS", 50...60_000) ?? 500
            shedTargets = try reader.integer("WARREN_SHED_ON_LATENCY", 0...1) == 0 ? nil : try TierTargets(environment: environment)
            leaseTimeout = try reader.integer("WARREN_RATE_LIMIT_LEASE_TIMEOUT_MS", 10...60_000) ?? 500
            slowRequest = try reader.integer("WARREN_SLOW_REQUEST_MS", 0...3_600_000) ?? 1_000
            consoleHours = try reader.integer("WARREN_CONSOLE_SESSION_HOURS", 0...720) ?? 8
        } catch {
            throw ValidationError("\(error)")
        }
        let pressure = TierPressure(policy: shedPolicy, amqp: amqp, interval: .milliseconds(shedPoll),
                                    latencyTargets: shedTargets, logger: logger)
        let api = HTTPAPI(publisher: publisher, pool: pool, tokenCacheTTL: .seconds(tokenCacheSeconds),
                          rateLimiter: SharedRateLimiter(limits: rateLimits, store: RateBucketStore(pool: pool),
                                                         leaseTimeout: .milliseconds(leaseTimeout), logger: logger),
                          pressure: pressure,
                          knownTypes: Set(HandlerRegistry.standardTypes + extraTypes.filter { !$0.isEmpty }),
                          maxBodyBytes: maxBody, stallSeconds: settings.stallSeconds,
                          slowRequest: slowRequest == 0 ? nil : .milliseconds(slowRequest),
                          console: consoleHours == 0 ? nil : ConsoleSettings(broker: BrokerStats(managementURL: reader.string("WARREN_RABBITMQ_MANAGEMENT_URL"), amqp: amqp),
                                                                             sessionTTL: .seconds(consoleHours * 3_600)),
                          logger: logger)
        // Hummingbird's idle timeout counts from the last request part read (or response
        // written): a request whose head never completes (half a request line, headers sent a
        // byte at a time) is closed after it too, which makes it the header timeout as well. A
        // request being served is never cut by it. Unparsable requests get the JSON error body.
        let server = HTTPServerBuilder.http1(configuration: .init(additionalChannelHandlers: [ProtocolErrorResponder()],
                                                                  idleTimeout: .seconds(Int64(idleTimeout))))
        let app = Application(router: api.router(), server: server,
                              configuration: .init(address: .hostname(host ?? reader.string("WARREN_HTTP_HOST") ?? "0.0.0.0", port: listenPort),
                                                   serverName: "warren"),
                              onServerRunning: { channel in
                                  logger.info("HTTP API listening", metadata: ["http_port": "\(channel.localAddress?.port ?? listenPort)"])
                              },
                              logger: logger)
        let completer = BatchCompleter(store: APIBatchStore(pool: pool), publisher: publisher, interval: .milliseconds(batchSweep),
                                       logger: logger)
        // The trace exporter first: services stop in reverse order, so it flushes last.
        let group = ServiceGroup.warren((traces.map { [.init(service: $0)] } ?? []) + [.init(service: app), .init(service: completer), .init(service: pressure)],
                                        shutdownWithin: .seconds(30), logger: logger)
        try await group.run()
        await publisher.close()
        await pool.close()
    }
}
