import Foundation
import WarrenPostgres
import WarrenStore

/// A `producer serve` on a vhost and schema of its own whose broker link runs through a
/// ``TCPProxy`` (2 s heartbeats), so a test can stall or cut it. The ``APIServer``'s
/// `environment` reaches the broker directly, for the other products a test starts.
enum RelayedServer {
    static func with(extra: [String: String] = [:],
                     _ body: (_ server: APIServer, _ relay: TCPProxy, _ serve: RunningProduct, _ pool: PostgresPool,
                              _ vhostURL: String) async throws -> Void) async throws {
        let brokerPort = URLComponents(string: TestServices.amqpURL)?.port ?? 5682
        let relay = try TCPProxy(upstreamPort: brokerPort)
        defer { relay.cut() }
        try await TestServices.withVhost { vhostURL in
            var relayed = URLComponents(string: vhostURL)!
            relayed.port = relay.port
            relayed.query = "heartbeat=2"
            try await TestServices.withSchema { pool in
                _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
                let database = ["WARREN_DATABASE_URL": TestServices.databaseURL,
                                "WARREN_DATABASE_SCHEMA": pool.configuration.searchPath ?? "public"]
                let serve = try RunningProduct("producer", ["serve"], environment: [
                    "WARREN_AMQP_URL": relayed.string!, "WARREN_HTTP_PORT": "0", "WARREN_HTTP_HOST": "127.0.0.1",
                ].merging(database) { $1 }.merging(extra) { $1 })
                defer { serve.signal(SIGKILL) }
                let port = try await serve.listeningPort("http_port")
                let server = APIServer(base: "http://127.0.0.1:\(port)", environment: ["WARREN_AMQP_URL": vhostURL].merging(database) { $1 },
                                       vhost: String(vhostURL[vhostURL.index(after: vhostURL.lastIndex(of: "/")!)...]))
                try await TestServices.waitUntil("the API answers /healthz") { (try? await server.request("GET", "/healthz").0) == 200 }
                try await body(server, relay, serve, pool, vhostURL)
            }
        }
    }
}
