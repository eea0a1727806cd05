import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Testing
import WarrenAMQP
import WarrenPostgres

/// A `producer serve` started as a user starts it, in a vhost and a database schema of its
/// own, with helpers to call it over real HTTP.
struct APIServer: Sendable {
    var base: String
    var environment: [String: String]
    /// The server's own virtual host (for policies, or to take the broker away).
    var vhost: String

    func request(_ method: String, _ path: String, token: String? = nil, contentType: String? = "application/json",
                 body: String? = nil, headers: [String: String] = [:], timeout: Duration? = nil) async throws -> (Int, [String: String], String) {
        try await HTTP.request(method, base + path, token: token, contentType: contentType, body: body, headers: headers, timeout: timeout)
    }

    /// A new token for `tenant` (acme by default), as `producer tokens create` prints it.
    func token(tier: String, scopes: String, tenant: String = "acme") async throws -> String {
        let result = try await Products.run("producer", ["tokens", "create", "--tenant", tenant, "--tier", tier, "--scopes", scopes],
                                            environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Submits a job (`POST /v1/jobs`), expecting a 202; returns its id.
    func submit(_ token: String, _ body: String) async throws -> String {
        let (status, _, text) = try await request("POST", "/v1/jobs", token: token, body: body)
        #expect(status == 202, "\(text)")
        return try #require(HTTP.field("id", in: text))
    }

    /// `GET /v1/jobs/{id}` as a JSON object (empty when the answer is not one).
    func job(_ token: String, _ id: String) async throws -> [String: Any] {
        HTTP.object(try await request("GET", "/v1/jobs/\(id)", token: token, contentType: nil).2)
    }

    /// A pool on the server's database and schema, for checking what it stored.
    func withDatabase<T: Sendable>(_ body: (PostgresPool) async throws -> T) async throws -> T {
        var configuration = PostgresConfiguration(url: environment["WARREN_DATABASE_URL"] ?? TestServices.databaseURL,
                                                  applicationName: "warren-tests")
        configuration.searchPath = environment["WARREN_DATABASE_SCHEMA"]
        return try await PostgresPool(configuration: configuration, logger: TestServices.logger).closing(after: body)
    }

    /// Runs `body` with a started server (stopped with SIGTERM afterwards, which must exit 0)
    /// and a connection into its vhost. `databaseURL` replaces the shared test database (with
    /// no schema of its own then).
    static func with<T: Sendable>(extra: [String: String] = [:], databaseURL: String? = nil,
                                  _ body: (APIServer, AMQPConnection, RunningProduct) async throws -> T) async throws -> T {
        try await TestServices.withVhost { url in
            if let databaseURL {
                return try await run(url: url, database: ["WARREN_DATABASE_URL": databaseURL], extra: extra, body)
            }
            return try await TestServices.withSchema { pool in
                try await run(url: url, database: ["WARREN_DATABASE_URL": TestServices.databaseURL,
                                                   "WARREN_DATABASE_SCHEMA": pool.configuration.searchPath ?? "public"],
                              extra: extra, body)
            }
        }
    }

    private static func run<T: Sendable>(url: String, database: [String: String], extra: [String: String],
                                         _ body: (APIServer, AMQPConnection, RunningProduct) async throws -> T) async throws -> T {
        let environment = ["WARREN_AMQP_URL": url, "WARREN_HTTP_PORT": "0", "WARREN_HTTP_HOST": "127.0.0.1",
                           "WARREN_HTTP_MAX_BODY_BYTES": "2000"].merging(database) { $1 }.merging(extra) { $1 }
        let process = try RunningProduct("producer", ["serve"], environment: environment)
        defer { process.signal(SIGKILL) }
        // It migrates its schema first, under the migrator's lock, with every other server the
        // suite starts at the same moment: on a loaded machine that can take a while.
        let port = try await process.listeningPort("http_port", timeout: .seconds(90))
        let server = APIServer(base: "http://127.0.0.1:\(port)", environment: environment,
                               vhost: String(url[url.index(after: url.lastIndex(of: "/")!)...]))
        try await TestServices.waitUntil(timeout: .seconds(20), "the API answers /healthz") {
            (try? await server.request("GET", "/healthz").0) == 200
        }
        return try await TestServices.withConnection("test http", url: url) { connection in
            let value = try await body(server, connection, process)
            process.signal(SIGTERM)
            #expect(try await process.wait(timeout: .seconds(20)) == 0, "graceful stop")
            return value
        }
    }
}

/// Plain HTTP calls through AsyncHTTPClient's shared client. (Not URLSession: on Linux its
/// libcurl socket teardown can crash the whole test process in libdispatch when a server
/// closes a pooled connection, as servers here do at shutdown and on their idle timeout.)
enum HTTP {
    /// One client for the whole test run (never shut down: it lives as long as the process).
    /// No decompression (so no `Accept-Encoding`): the shared client's ratio limit refused the
    /// management API's gzipped JSON, which compresses better than that.
    /// Every test creates its vhost through the management API as the run starts: with the
    /// default 8 connections per host and 10 s to get one, fifty tests queued behind slow vhost
    /// creations on a loaded machine failed with `getConnectionFromPoolTimeout`. So: more
    /// connections per host, and as long to wait for one as a request may take.
    private static let client = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: HTTPClient.Configuration(
            timeout: .init(connect: .seconds(60)),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64),
            decompression: .disabled))

    static func request(_ method: String, _ url: String, token: String? = nil, contentType: String? = "application/json",
                        body: String? = nil, headers: [String: String] = [:], timeout: Duration? = nil) async throws -> (Int, [String: String], String) {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        if let token { request.headers.replaceOrAdd(name: "Authorization", value: "Bearer \(token)") }
        if let contentType { request.headers.replaceOrAdd(name: "Content-Type", value: contentType) }
        for (name, value) in headers { request.headers.replaceOrAdd(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let (status, fields, bytes) = try await send(request, timeout: timeout ?? .seconds(30))
        return (status, fields, String(decoding: bytes, as: UTF8.self))
    }

    /// Sends `request` and reads the whole answer within `timeout`: status, header fields with
    /// lowercased names (repeated ones joined with ", "), body.
    static func send(_ request: HTTPClientRequest, timeout: Duration = .seconds(30)) async throws -> (Int, [String: String], [UInt8]) {
        let response = try await client.execute(request, timeout: .seconds(timeout.components.seconds))
        var fields: [String: String] = [:]
        for (name, value) in response.headers {
            let key = name.lowercased()
            fields[key] = fields[key].map { $0 + ", " + value } ?? value
        }
        let buffer = try await response.body.collect(upTo: 64 << 20)
        return (Int(response.status.code), fields, Array(buffer.readableBytesView))
    }

    /// A top-level string field of a JSON object body (`id`, `status`...).
    static func field(_ name: String, in body: String) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else { return nil }
        return object[name] as? String
    }

    static func object(_ body: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:]
    }
}
