import Foundation
import Testing
import WarrenPostgres

/// `/healthz`, `/readyz`, `/metrics` and `/status` as operators use them: on the API port of
/// `producer serve`, and on the admin port of the consumers and the scheduler, with the broker
/// or the database really taken away.
@Suite(.enabled(if: TestServices.enabled))
struct HealthTests {
    @Test func readyzNamesTheBrokerWhenItIsGone() async throws {
        try await APIServer.with { server, _, _ in
            #expect(try await server.request("GET", "/readyz").0 == 200)
            // Deleting the vhost closes the producer's connection and refuses its reconnects.
            try await Management.deleteVhost(server.vhost)
            try await TestServices.waitUntil(timeout: .seconds(10), "readyz reports the broker down") {
                let (status, _, body) = try await server.request("GET", "/readyz")
                return status == 503 && HTTP.object(body)["down"] as? [String] == ["broker"]
            }
            #expect(try await server.request("GET", "/healthz").0 == 200, "alive all the same")
            let token = try await server.token(tier: "free", scopes: "jobs:write")
            let (status, headers, body) = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"}"#)
            #expect(status == 503 && body.contains(#""code":"broker_unavailable""#), "\(body)")
            #expect(headers["retry-after"] != nil)
        }
    }

    @Test func readyzNamesTheDatabaseWhileItIsStopped() async throws {
        try await OwnPostgres.withCluster { cluster in
            try await APIServer.with(databaseURL: cluster.url) { server, _, _ in
                #expect(try await server.request("GET", "/readyz").0 == 200)
                try await cluster.stop()
                let (status, _, body) = try await server.request("GET", "/readyz")
                #expect(status == 503, "\(body)")
                #expect(HTTP.object(body)["down"] as? [String] == ["database"], "\(body)")
                try await cluster.start()
                try await TestServices.waitUntil(timeout: .seconds(20), "ready again once Postgres is back") {
                    try await server.request("GET", "/readyz").0 == 200
                }
            }
        }
    }

    @Test func consumersAndTheSchedulerServeTheirAdminPort() async throws {
        try await TestServices.withVhost { url in
            try await TestServices.withSchema { pool in
                let consumerID = "admin-\(UUID().uuidString.prefix(8).lowercased())"
                let environment = ["WARREN_AMQP_URL": url, "WARREN_DATABASE_URL": TestServices.databaseURL,
                                   "WARREN_DATABASE_SCHEMA": pool.configuration.searchPath ?? "public", "WARREN_ADMIN_HOST": "127.0.0.1",
                                   "WARREN_CONSUMER_ID": consumerID]
                let consumer = try RunningProduct("consumer", ["--tier", "free", "--admin-port", "0"], environment: environment)
                defer { consumer.signal(SIGKILL) }
                let scheduler = try RunningProduct("scheduler", ["--admin-port", "0"], environment: environment)
                defer { scheduler.signal(SIGKILL) }
                let consumerPort = try await consumer.listeningPort("admin_port")
                let schedulerPort = try await scheduler.listeningPort("admin_port")
                for (name, port) in [("consumer", consumerPort), ("scheduler", schedulerPort)] {
                    let base = "http://127.0.0.1:\(port)"
                    try await TestServices.waitUntil(timeout: .seconds(20), "the \(name) is ready on its admin port") {
                        (try? await HTTP.request("GET", base + "/readyz").0) == 200
                    }
                    #expect(try await HTTP.request("GET", base + "/healthz").0 == 200)
                    let status = HTTP.object(try await HTTP.request("GET", base + "/status").2)
                    #expect(status["service"] as? String == name, "\(status)")
                    let metrics = try await HTTP.request("GET", base + "/metrics")
                    #expect(metrics.0 == 200)
                    if name == "consumer" {
                        #expect(status["tier"] as? String == "free" && status["in_flight"] as? Int == 0, "\(status)")
                        #expect(metrics.2.contains("warren_consumer_jobs_total"), "\(metrics.2.prefix(500))")
                    }
                }
                // The broker out of reach (its access revoked, its connection closed): the consumer
                // stays alive, reports it, and is ready again once it reconnects.
                let vhost = String(url[url.index(after: url.lastIndex(of: "/")!)...])
                try await Management.revokeGuest(vhost)
                try await TestServices.waitUntil(timeout: .seconds(15), "the consumer reports the broker down") {
                    // (The broker may close it on the revoke already.)
                    _ = try await Management.closeConnections(named: "consumer \(consumerID)")
                    guard consumer.isRunning else {
                        Issue.record("the consumer exited: \(consumer.stderr.suffix(3_000))")
                        throw CancellationError()
                    }
                    guard let (code, _, body) = try? await HTTP.request("GET", "http://127.0.0.1:\(consumerPort)/readyz") else { return false }
                    return code == 503 && HTTP.object(body)["down"] as? [String] == ["broker"]
                }
                #expect(try await HTTP.request("GET", "http://127.0.0.1:\(consumerPort)/healthz").0 == 200)
                try await Management.grantGuest(vhost)
                try await TestServices.waitUntil(timeout: .seconds(20), "the consumer reconnected and is ready") {
                    try await HTTP.request("GET", "http://127.0.0.1:\(consumerPort)/readyz").0 == 200
                }
                consumer.signal(SIGTERM)
                #expect(try await consumer.wait(timeout: .seconds(30)) == 0)
                scheduler.signal(SIGTERM)
                #expect(try await scheduler.wait(timeout: .seconds(20)) == 0)
            }
        }
    }
}
