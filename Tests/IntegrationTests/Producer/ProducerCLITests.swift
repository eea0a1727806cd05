import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres

/// `producer publish` as scripts use it: a subprocess, its exit status, stdout and stderr,
/// against the real broker, each test in a virtual host of its own.
@Suite(.enabled(if: TestServices.enabled))
struct ProducerCLITests {
    func depths(_ connection: AMQPConnection) async throws -> [Tier: Int] {
        try await connection.withControl { control in
            var depths: [Tier: Int] = [:]
            for tier in Tier.allCases { depths[tier] = Int(try control.readyCount(tier)) }
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
                let deliveries = try await connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 1)
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

    /// A normal call's stderr is empty: the JSON "AMQP connected" line went to every script's
    /// stderr. (LOG_LEVEL=info brings the logs back.)
    @Test func aSuccessfulPublishWritesNothingToStderr() async throws {
        try await TestServices.withVhost { url in
            let result = try await Products.run("producer", ["publish", "--type", "noop", "--tier", "free", "--amqp-url", url])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(UUID(uuidString: result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) != nil, "\(result.stdout)")
            #expect(result.stderr.isEmpty, "\(result.stderr)")
            let verbose = try await Products.run("producer", ["publish", "--type", "noop", "--tier", "free", "--amqp-url", url],
                                                 environment: ["LOG_LEVEL": "info"])
            #expect(verbose.status == 0 && !verbose.stderr.isEmpty, "\(verbose.stderr)")
            try await TestServices.withConnection("test cli quiet", url: url) { connection in
                let counted = try await depths(connection)
                #expect(counted[.free] == 2)
            }
        }
    }

    /// `--in` with `--at` is bad input, exit 2 as documented (it was a usage error, 64), and an
    /// offset out of RFC 3339's ±23:59 is refused (`+99:99` was held for 4 days early).
    @Test func badTimesExit2AndHoldNothing() async throws {
        try await TestServices.withSchema { pool in
            let environment = ["WARREN_DATABASE_URL": TestServices.databaseURL,
                               "WARREN_DATABASE_SCHEMA": pool.configuration.searchPath ?? "public"]
            let cases: [([String], String)] = [
                (["--in", "10m", "--at", "2026-12-24T09:00:00+01:00"], "--at and --in"),
                (["--at", "2026-12-24T09:00:00+99:99"], "--at"),
                (["--at", "2026-12-24T09:00:00-24:00"], "--at"),
                (["--at", "2026-12-24T09:00:00+01:60"], "--at"),
            ]
            for (arguments, words) in cases {
                let result = try await Products.run("producer", ["publish", "--type", "noop", "--tier", "free"] + arguments,
                                                    environment: environment)
                #expect(result.status == 2, "\(arguments): \(result.stderr)")
                #expect(result.stderr.contains(words), "\(arguments): \(result.stderr)")
                #expect(result.stdout.isEmpty, "\(arguments): \(result.stdout)")
            }
            // Nothing was held: the table is not even there unless a publish migrated the schema.
            let migrated = try await pool.query("SELECT (to_regclass('delayed_jobs') IS NOT NULL)::int").rows.first?.int(0) == 1
            if migrated {
                #expect(try await pool.query("SELECT count(*) FROM delayed_jobs").rows.first?.int(0) == 0)
            }
        }
    }

    /// `--expires-in-days 0` printed the root command's usage; it is this subcommand's now.
    @Test func tokensCreateRefusesBadArgumentsWithItsOwnUsage() async throws {
        for arguments in [["--expires-in-days", "0"], ["--tier", "gold"], ["--scopes", "jobs:fly"]] {
            var all = ["tokens", "create", "--tenant", "acme", "--tier", "free", "--scopes", "jobs:write"]
            if let index = all.firstIndex(of: arguments[0]) { all.remove(at: index + 1); all.remove(at: index) }
            let result = try await Products.run("producer", all + arguments,
                                                environment: ["WARREN_DATABASE_URL": "postgresql://warren:warren@127.0.0.1:1/none"])
            #expect(result.status == 64, "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains(arguments[0]), "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains("producer tokens create"), "\(arguments): \(result.stderr)")
            #expect(!result.stderr.contains("<subcommand>"), "\(arguments): the root's usage: \(result.stderr)")
            #expect(result.stdout.isEmpty)
        }
    }

    /// `--jsonl --ids` prints every job's id, line n for input job n, paced or not.
    @Test func jsonlWithIdsPrintsEachIdInInputOrder() async throws {
        try await TestServices.withVhost { url in
            let lines = (0..<40).map { #"{"type":"noop","tier":"free","payload":{"i":\#($0)}}"# }
            let input = lines.joined(separator: "\n") + "\n"
            let plain = try await Products.run("producer", ["publish", "--jsonl", "-", "--ids", "--batch-size", "7", "--amqp-url", url],
                                               stdin: input)
            let paced = try await Products.run("producer", ["publish", "--jsonl", "-", "--ids", "--rate", "4000", "--amqp-url", url],
                                               stdin: input)
            var printed: [[UUID]] = []
            for result in [plain, paced] {
                #expect(result.status == 0, "\(result.stderr)")
                let ids = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().compactMap { UUID(uuidString: String($0)) }
                #expect(ids.count == 40, "\(result.stdout)")
                printed.append(ids)
            }
            #expect(Set(printed.joined()).count == 80)
            try await TestServices.withConnection("test cli ids", url: url) { connection in
                // Read back only what is there (an exact count), so a failed run cannot leave the loop waiting.
                let counted = try await depths(connection)
                try #require(counted[.free] == 80, "\(counted)")
                let deliveries = try await connection.consume(queue: Tier.free.queueName, prefetch: 100)
                var iterator = deliveries.makeAsyncIterator()
                var payloads: [UUID: String] = [:]
                while payloads.count < 80, let delivery = try await iterator.next() {
                    let job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
                    payloads[job.id] = String(decoding: job.payload, as: UTF8.self)
                    try await connection.ack(delivery)
                }
                for ids in printed {
                    for (index, id) in ids.enumerated() {
                        #expect(payloads[id] == #"{"i":\#(index)}"#, "line \(index + 1)")
                    }
                }
            }
            let alone = try await Products.run("producer", ["publish", "--type", "noop", "--tier", "free", "--ids", "--amqp-url", url])
            #expect(alone.status == 2, "\(alone.stderr)")
        }
    }
}
