import Foundation
import Testing
import WarrenAMQP
import WarrenAPI
import WarrenJobs

/// The console's queue figures against the real management API: a tier's ready jobs add up
/// its lanes, the last hour's samples come back (the broker gzips them: a client that
/// decompresses with a ratio limit refused them), and a consumer is named as it named its
/// connection, with its prefetch.
@Suite(.enabled(if: TestServices.enabled))
struct BrokerStatsTests {
    @Test func aTiersFiguresAddUpItsLanesAndTheHourOfSamplesComesBack() async throws {
        try await APIServer.with { server, _, _ in
            let amqp = try AMQPConfiguration(url: try #require(server.environment["WARREN_AMQP_URL"]), connectionName: "test")
            let stats = BrokerStats(managementURL: TestServices.managementURL, amqp: amqp)
            let acme = try await server.token(tier: "premium", scopes: "jobs:write")
            let globex = try await server.token(tier: "premium", scopes: "jobs:write", tenant: "globex")
            for token in [acme, acme, globex] { _ = try await server.submit(token, #"{"type":"noop"}"#) }
            try await TestServices.waitUntil(timeout: .seconds(30), "the broker counts the three ready jobs of premium") {
                try await stats.tiers(history: false)[.premium]?.ready == 3
            }
            let figures = try await stats.tiers(history: true)
            #expect(figures[.enterprise]?.ready == 0 && figures[.free]?.ready == 0)
            #expect(figures[.premium]?.consumers == 0)
            #expect(!(figures[.premium]?.samples.isEmpty ?? true), "the broker's samples of the last hour")
            #expect(try await stats.consumers().isEmpty)

            let consumer = try RunningProduct("consumer", ["--tier", "premium", "--prefetch", "40"], environment: server.environment)
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(30), "the consumer is listed with its prefetch") {
                try await stats.consumers().contains { $0.connection.hasPrefix("consumer ") && $0.tier == .premium && $0.prefetch == 40 }
            }
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }
}
