import Testing
@testable import WarrenAMQP

@Suite struct AMQPEndpointTests {
    @Test func parsesAFullURL() throws {
        let endpoint = try AMQPEndpoint(url: "amqp://warren:s%40cret@rabbit.local:5673/jobs?heartbeat=10&connection_timeout=3")
        #expect(endpoint.host == "rabbit.local")
        #expect(endpoint.port == 5673)
        #expect(endpoint.user == "warren")
        #expect(endpoint.password == "s@cret")
        #expect(endpoint.vhost == "jobs")
        #expect(endpoint.heartbeatSeconds == 10)
        #expect(endpoint.connectionTimeoutSeconds == 3)
    }

    @Test func encodedSlashIsTheDefaultVhost() throws {
        #expect(try AMQPEndpoint(url: "amqp://guest:guest@127.0.0.1:5672/%2f").vhost == "/")
        #expect(try AMQPEndpoint(url: "amqp://127.0.0.1").vhost == "/")
        #expect(try AMQPEndpoint(url: "amqp://127.0.0.1/").vhost == "/")
        #expect(try AMQPEndpoint(url: "amqp://127.0.0.1").port == 5672)
        #expect(try AMQPEndpoint(url: "amqp://127.0.0.1").user == "guest")
    }

    @Test func listSplitsOnCommas() throws {
        let endpoints = try AMQPEndpoint.list("amqp://a:1@h1:5672/%2f, amqp://a:1@h2:5673/%2f")
        #expect(endpoints.map(\.host) == ["h1", "h2"])
        #expect(endpoints.map(\.port) == [5672, 5673])
    }

    @Test(arguments: ["http://h/", "amqps://h/", "amqp://", "amqp://h:99999/", "amqp://h/a/b", "amqp://h/?heartbeat=x", ""])
    func rejectsBadURLs(_ url: String) {
        #expect(throws: AMQPError.self) { _ = try AMQPEndpoint.list(url) }
    }

    @Test func descriptionHidesThePassword() throws {
        let endpoint = try AMQPEndpoint(url: "amqp://u:topsecret@h:5672/%2f")
        #expect(!endpoint.description.contains("topsecret"))
        let error = #expect(throws: AMQPError.self) { _ = try AMQPEndpoint(url: "amqp://u:topsecret@h:99999/") }
        #expect(error?.description.contains("topsecret") == false)
    }
}
