import Common
import Foundation
import Testing

/// `producer publish` as scripts use it: a subprocess, its exit status, stdout and stderr,
/// against the real broker, each test in a virtual host of its own.
@Suite(.enabled(if: TestServices.enabled))
struct ProducerCLITests {
    func depths(_ connection: AMQPConnection) async throws -> [Tier: Int] {
        try await connection.withControl { control in
            var depths: [Tier: Int] = [:]
            for tier in Tier.allCases { depths[tier] = Int(try control.queueDepth(tier.queueName).messages) }
            return depths
        }
    }

    @Test func oneJobPrintsItsIdAndLandsWithItsProperties() async throws {
        try await TestServices.withVhost { url in
            let result = try await Products.run("producer", [
                "publish", "--type", "email.welcome", "--tier", "premium", "--payload", "-",
                "--idempotency-key", "welcome-7", "--tenant", "acme", "--amqp-url", url,
            ], stdin: #"{"to":"a@b.c"}"#)
            #expect(result.status == 0, "\(result.stderr)")
            let printed = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let id = try #require(UUID(uuidString: printed), "stdout: \(result.stdout)")
            #expect(JobID.timestamp(of: id) != nil, "a UUIDv7")

            try await TestServices.withConnection("test cli read-back", url: url) { connection in
                let deliveries = try await connection.consume(queue: Tier.premium.queueName, prefetch: 1)
                var iterator = deliveries.makeAsyncIterator()
                let delivery = try #require(try await iterator.next())
                let job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
                #expect(job.id == id)
                #expect(job.type == "email.welcome")
                #expect(job.idempotencyKey == "welcome-7")
                #expect(job.tenant == "acme")
                #expect(job.payload == Array(#"{"to":"a@b.c"}"#.utf8))
                try await connection.ack(delivery)
            }
        }
    }

    @Test func jsonlPublishesEveryLineAndSummarizes() async throws {
        try await TestServices.withVhost { url in
            let lines = (0..<30).map { index in
                let tier = Tier.allCases[index % 3].rawValue
                return #"{"type":"noop","tier":"\#(tier)","payload":{"i":\#(index)}}"#
            }
            let result = try await Products.run("producer", ["publish", "--jsonl", "-", "--amqp-url", url, "--batch-size", "7"],
                                                stdin: lines.joined(separator: "\n") + "\n")
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stderr.contains("published 30, rejected 0"), "\(result.stderr)")
            try await TestServices.withConnection("test cli depths", url: url) { connection in
                let counted = try await depths(connection)
                #expect(counted == [.enterprise: 10, .premium: 10, .free: 10])
            }
        }
    }

    @Test func aBadLineIsReportedByNumberAndNothingIsPublished() async throws {
        try await TestServices.withVhost { url in
            let input = """
                {"type":"noop","tier":"free","payload":{}}
                {"type":"noop","tier":"free","payload":{}}
                {"type":"noop","tier":"gold","payload":{}}
                {"type":"noop","tier":"free","payload":{"unterminated":
                """
            let result = try await Products.run("producer", ["publish", "--jsonl", "-", "--amqp-url", url], stdin: input)
            #expect(result.status == 2)
            #expect(result.stderr.contains("line 3"), "\(result.stderr)")
            #expect(result.stderr.contains("line 4"), "\(result.stderr)")
            #expect(result.stderr.contains("nothing was published"), "\(result.stderr)")
            try await TestServices.withConnection("test cli nothing", url: url) { connection in
                let counted = try await depths(connection)
                #expect(counted == [.enterprise: 0, .premium: 0, .free: 0])
            }
        }
    }

    @Test func anUnreachableBrokerExitsNonZero() async throws {
        let result = try await Products.run("producer", [
            "publish", "--type", "noop", "--tier", "free", "--payload", "{}",
            "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f?connection_timeout=1",
        ])
        #expect(result.status == 1, "\(result.stderr)")
        #expect(result.stdout.isEmpty)
    }
}
