import Foundation
import Logging
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenNotify
import WarrenPostgres
import WarrenSupport

/// Where the real RabbitMQ and Postgres are, from the environment `./infra/local/test` sets.
///
/// When they are not configured, a local run skips these tests with a loud message; under
/// `CI=true` (or `WARREN_TEST_SERVICES=1`, set by `./infra/local/test`) the tests run and a
/// missing service is a failure.
enum TestServices {
    static let environment = ProcessInfo.processInfo.environment
    static let amqpURL = environment["WARREN_AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5682/%2f"
    static let databaseURL = environment["WARREN_DATABASE_URL"] ?? "postgresql://warren:warren@127.0.0.1:55442/warren"
    static let managementURL = environment["WARREN_RABBITMQ_MANAGEMENT_URL"] ?? "http://127.0.0.1:15682"

    static let required = environment["CI"] == "true" || environment["WARREN_TEST_SERVICES"] == "1"
    static let configured = environment["WARREN_AMQP_URL"] != nil && environment["WARREN_DATABASE_URL"] != nil

    /// The trait condition: run when required or configured; otherwise say loudly why not.
    /// It also makes the test process ignore SIGPIPE, as servers do: a helper that writes to a
    /// socket or pipe whose peer is gone gets EPIPE, instead of the whole run dying of signal 13.
    static let enabled: Bool = {
        signal(SIGPIPE, SIG_IGN)
        if required || configured { return true }
        FileHandle.standardError.write(Data("""

            ********************************************************************************
            SKIPPING integration tests: WARREN_AMQP_URL and WARREN_DATABASE_URL are not set.
            Run ./infra/local/test to start RabbitMQ and Postgres and run every test.
            ********************************************************************************

            """.utf8))
        return false
    }()

    static let logger: Logger = {
        var logger = Logger(label: "warren.tests")
        logger.logLevel = environment["LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
        return logger
    }()

    static func amqpConfiguration(_ name: String, url: String = amqpURL) throws -> AMQPConfiguration {
        var configuration = try AMQPConfiguration(url: url, connectionName: name)
        configuration.heartbeat = .seconds(10)
        configuration.reconnectBackoff = Backoff(base: .milliseconds(50), cap: .milliseconds(500), floor: .milliseconds(10))
        return configuration
    }

    /// A connected AMQP connection that declared the standard topology; closed after `body`.
    static func withConnection<T: Sendable>(_ name: String, url: String = amqpURL, declareTopology: Bool = true,
                                            _ body: (AMQPConnection) async throws -> T) async throws -> T {
        let connection = AMQPConnection(configuration: try amqpConfiguration(name, url: url), logger: logger) { control in
            if declareTopology { try Topology.standard.declare(on: control) }
        }
        try await connection.connect()
        do {
            let value = try await body(connection)
            await connection.close()
            return value
        } catch {
            await connection.close()
            throw error
        }
    }

    /// A fresh virtual host (deleted afterwards) and the AMQP URL that points into it.
    static func withVhost<T: Sendable>(_ body: (_ amqpURL: String) async throws -> T) async throws -> T {
        let vhost = "warren-test-" + UUID().uuidString.prefix(8).lowercased()
        try await Management.createVhost(vhost)
        guard let slash = amqpURL.lastIndex(of: "/") else { throw ManagementError(status: 0, body: Data("bad WARREN_AMQP_URL".utf8)) }
        let url = amqpURL[..<slash] + "/" + vhost
        do {
            let value = try await body(String(url))
            try await Management.deleteVhost(vhost)
            return value
        } catch {
            try? await Management.deleteVhost(vhost)
            throw error
        }
    }

    /// A pool whose connections work in a fresh schema, dropped afterwards.
    static func withSchema<T: Sendable>(_ body: (PostgresPool) async throws -> T) async throws -> T {
        let schema = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
        let admin = PostgresPool(configuration: PostgresConfiguration(url: databaseURL, applicationName: "warren-tests"), logger: logger)
        try await admin.query("CREATE SCHEMA \(schema)")
        var configuration = PostgresConfiguration(url: databaseURL, applicationName: String(schema))
        configuration.searchPath = String(schema)
        configuration.maxConnections = 4
        let pool = PostgresPool(configuration: configuration, logger: logger)
        do {
            let value = try await body(pool)
            await pool.close()
            try await admin.query("DROP SCHEMA \(schema) CASCADE")
            await admin.close()
            return value
        } catch {
            await pool.close()
            _ = try? await admin.query("DROP SCHEMA \(schema) CASCADE")
            await admin.close()
            throw error
        }
    }

    /// Like ``waitUntil(timeout:_:_:)`` but a timeout is an answer, not a failure: true when
    /// the condition held before the deadline.
    static func holds(within timeout: Duration, _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return false
    }

    /// Polls `condition` every 20 ms until it holds (no fixed sleeps); at `timeout`, records an
    /// issue naming `what` and throws. The default is generous: the whole suite runs at once on
    /// 2 cores, and a deadline only matters when something is wrong.
    static func waitUntil(timeout: Duration = .seconds(30), _ what: String,
                          _ condition: () async throws -> Bool) async throws {
        if try await holds(within: timeout, condition) { return }
        Issue.record("timed out after \(timeout) waiting for: \(what)")
        throw CancellationError()
    }
}
