import ArgumentParser
import Hummingbird
import Logging
import WarrenAMQP
import WarrenAPI
import WarrenJobs
import WarrenPostgres
import WarrenResilience
import WarrenStore

/// `producer routes`: the HTTP API's routes as the server registers them, one `METHOD /path`
/// per line (path parameters as `{name}`), for checking docs/openapi.yaml against. Connects to
/// nothing.
struct RoutesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "routes", abstract: "List the HTTP API's routes.")

    func run() async throws {
        let logger = Logger(label: "warren.routes", factory: { _ in SwiftLogNoOpLogHandler() })
        let amqp = try AMQPConfiguration(url: "amqp://127.0.0.1", connectionName: "routes")
        let pool = PostgresPool(configuration: PostgresConfiguration(url: "postgresql://127.0.0.1/warren", applicationName: "routes"),
                                logger: logger)
        let api = HTTPAPI(publisher: JobPublisher(configuration: amqp, logger: logger), pool: pool, tokenCacheTTL: .zero,
                          rateLimiter: SharedRateLimiter(store: RateBucketStore(pool: pool), logger: logger), knownTypes: [], maxBodyBytes: 1, logger: logger)
        let lines = api.router().routes.map { "\($0.method.rawValue) \($0.path.description)" }
        for line in lines.sorted() { print(line) }
    }
}
