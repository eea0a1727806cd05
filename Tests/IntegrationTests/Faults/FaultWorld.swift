import Foundation
import Testing
import WarrenJobs
import WarrenPostgres
import WarrenStore

/// What the fault tests share: jobs keyed one by one (so rows can be counted per job),
/// counting in `job_runs`, and the fleet's processes started against a broker and a schema.
struct FaultWorld: Sendable {
    var amqpURL: String
    var pool: PostgresPool

    var schema: String { pool.configuration.searchPath ?? "public" }

    /// Environment for `consumer`, `producer` and `scheduler` processes in this world.
    func environment(_ extra: [String: String] = [:]) -> [String: String] {
        ["WARREN_AMQP_URL": amqpURL, "WARREN_DATABASE_URL": TestServices.databaseURL, "WARREN_DATABASE_SCHEMA": schema,
         "WARREN_HTTP_HOST": "127.0.0.1", "WARREN_HTTP_PORT": "0", "WARREN_ADMIN_HOST": "127.0.0.1"].merging(extra) { $1 }
    }

    /// A world in a fresh schema (migrated) on the shared database, for the broker at `amqpURL`.
    static func with<T: Sendable>(amqpURL: String, _ body: (FaultWorld) async throws -> T) async throws -> T {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            return try await body(FaultWorld(amqpURL: amqpURL, pool: pool))
        }
    }

    func count(_ sql: String) async throws -> Int {
        try await pool.query(sql).rows.first?.int(0) ?? 0
    }

    /// Rows per idempotency key among `job_runs` whose key starts with `prefix`: how many
    /// keys have a row, and how many rows there are beyond one per key (duplicates).
    func rowsByKey(prefix: String) async throws -> (keys: Int, duplicates: Int) {
        let row = try await pool.query(
            "SELECT count(DISTINCT idempotency_key), count(*) - count(DISTINCT idempotency_key) FROM job_runs WHERE idempotency_key LIKE $1",
            [prefix + "%"]).rows.first
        return (try row?.int(0) ?? 0, try row?.int(1) ?? 0)
    }

    /// The keys among `keys` without a row in `job_runs`.
    func missing(_ keys: [String]) async throws -> [String] {
        let present = Set(try await pool.query("SELECT DISTINCT idempotency_key FROM job_runs WHERE idempotency_key = ANY($1::text[])",
                                               [PostgresArray(keys)]).rows.map { try $0.string(0) })
        return keys.filter { !present.contains($0) }
    }

    /// A JSON-lines file of `count` `noop` jobs in `tier`, keyed `prefix0`, `prefix1`...
    static func jobsFile(count: Int, prefix: String, tier: Tier = .premium) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("warren-faults-\(UUID().uuidString.prefix(8)).jsonl")
        let lines = (0..<count).map { #"{"type":"noop","tier":"\#(tier.rawValue)","idempotency_key":"\#(prefix)\#($0)"}"# }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: url)
        return url
    }

    /// What `producer publish --jsonl` reported: confirmed and rejected counts from its
    /// summary, and the line numbers it listed as not confirmed.
    struct PublishReport: Sendable {
        var confirmed: Int
        var rejected: Int
        var unconfirmedLines: Set<Int>
        /// The CLI lists at most 50 lines; past that it says how many more.
        var listedAll: Bool
    }

    static func publishReport(_ stderr: String) -> PublishReport? {
        guard let summary = stderr.firstMatch(of: /published (\d+), rejected (\d+)/),
              let confirmed = Int(summary.output.1), let rejected = Int(summary.output.2) else { return nil }
        let lines = Set(stderr.matches(of: /line (\d+): not confirmed/).compactMap { Int($0.output.1) })
        return PublishReport(confirmed: confirmed, rejected: rejected, unconfirmedLines: lines, listedAll: lines.count == rejected)
    }
}
