import Foundation
import Logging
import Synchronization
import Testing
import Warren
@testable import WarrenAMQP
@testable import WarrenJobs
@testable import WarrenPostgres

/// The `Warren` library as a Swift user holds it (`import Warren`: `Worker`, `JobClient`,
/// typed handlers), against the real broker and Postgres.
@Suite(.enabled(if: TestServices.enabled))
struct WarrenLibraryTests {
    struct Invoice: Codable, Sendable {
        var customer: String
        var cents: Int
    }

    struct Receipt: Codable, Sendable {
        var customer: String
        var total: String
    }

    /// Counts its runs, so a test sees how often the handler really ran.
    final class Runs: Sendable {
        private let count = Mutex(0)
        func add() { count.withLock { $0 += 1 } }
        var value: Int { count.withLock { $0 } }
    }

    struct SendInvoice: TypedJobHandler {
        let type = "invoice.send"
        let runs: Runs

        func run(_ payload: Invoice, context: JobContext) async throws -> JobOutcome {
            runs.add()
            guard payload.cents >= 0 else { throw PermanentJobFailure("a negative invoice") }
            return .success(Receipt(customer: payload.customer, total: String(format: "%.2f", Double(payload.cents) / 100)))
        }
    }

    func environment(_ world: ConsumerIntegrationTests.World) -> [String: String] {
        ProcessInfo.processInfo.environment.merging(world.environment) { $1 }
    }

    /// Runs a `Worker` of `handlers` for `body`, then cancels it: it must stop cleanly.
    func withWorker<T: Sendable>(_ world: ConsumerIntegrationTests.World, _ handlers: [any JobHandler],
                                 _ body: () async throws -> T) async throws -> T {
        var configuration = try Worker.Configuration(tiers: [.free], environment: environment(world))
        configuration.workerID = "library-test"
        configuration.concurrency = 4
        let worker = try Worker(configuration: configuration, handlers: handlers, logger: TestServices.logger)
        let running = Task { try await worker.run() }
        do {
            let value = try await body()
            running.cancel()
            try await running.value
            return value
        } catch {
            running.cancel()
            _ = try? await running.value
            throw error
        }
    }

    @Test func aWorkerRunsTypedHandlersOnJobsAJobClientPublished() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let runs = Runs()
            let client = try JobClient(configuration: .init(environment: environment(world)), logger: TestServices.logger)
            let good = try await client.enqueue("invoice.send", payload: Invoice(customer: "acme", cents: 1999),
                                                options: .init(tier: .free, tenant: "acme", idempotencyKey: "inv-1"))
            let negative = try await client.enqueue("invoice.send", payload: Invoice(customer: "acme", cents: -5))
            let malformed = try await client.enqueue("invoice.send", json: Array(#"{"customer": "acme", "cents": "lots"}"#.utf8))
            let missing = try await client.enqueue("invoice.send", json: Array(#"{"cents": 1}"#.utf8))
            let unknown = try await client.enqueue("invoice.void", json: Array("{}".utf8))
            await client.close()
            #expect(try await world.depth(Tier.free.queueName(tenant: "acme")) == 1, "confirmed and on its tenant's lane")

            try await withWorker(world, [SendInvoice(runs: runs)]) {
                try await TestServices.waitUntil("every job has an outcome") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status IN ('succeeded', 'failed')") == 5
                }
            }
            func row(_ id: String) async throws -> (status: String, error: String?, total: String?) {
                let rows = try await world.pool.query("SELECT status, error, result->>'total' FROM job_runs WHERE job_id = $1::uuid",
                                                      [id]).rows
                return try #require(rows.first.map { (try $0.string(0), $0[1], $0[2]) })
            }
            #expect(try await row(good) == ("succeeded", nil, "19.99"))
            #expect(try await row(negative) == ("failed", "a negative invoice", nil))
            #expect(try await row(malformed).error == "payload does not decode as Invoice: field 'cents': expected a Int")
            #expect(try await row(missing).error == "payload does not decode as Invoice: field 'customer': missing")
            #expect(try await row(unknown).status == "failed")
            #expect(runs.value == 2, "the handler ran for the two payloads that decoded, once each")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE idempotency_key = 'inv-1' AND tenant = 'acme'") == 1)
            for queue in Tier.free.queueNames { #expect(try await world.depth(queue) == 0, "all acked") }
        }
    }

    @Test func aJobClientRefusesBadJobsPublishingNothingAndHoldsDelayedOnesInPostgres() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let client = try JobClient(configuration: .init(environment: environment(world)), logger: TestServices.logger)
            await #expect(throws: JobError.self) { try await client.enqueue("", json: Array("{}".utf8)) }
            await #expect(throws: JobError.self) { try await client.enqueue("invoice.send", json: Array("not json".utf8)) }
            await #expect(throws: JobError.self) {
                try await client.enqueue("invoice.send", json: Array("{}".utf8), options: .init(concurrencyLimit: 2))
            }
            let delayed = try await client.enqueue("invoice.send", payload: Invoice(customer: "acme", cents: 1),
                                                   options: .init(tier: .premium, delay: .seconds(3_600)))
            await client.close()
            for tier in Tier.allCases {
                for queue in tier.queueNames { #expect(try await world.depth(queue) == 0, "nothing published to \(queue)") }
            }
            let held = try await world.count("""
                SELECT count(*) FROM delayed_jobs WHERE job_id = '\(delayed)'::uuid AND state = 'pending' AND tier = 'premium'
                  AND run_at > now() + interval '59 minutes'
                """)
            #expect(held == 1, "held until due, for the scheduler to publish")
        }
    }

    @Test func aWorkerRefusesTwoHandlersForOneTypeAndAMalformedConfiguration() throws {
        let runs = Runs()
        let configuration = try Worker.Configuration(tiers: [.free], environment: [:])
        #expect(throws: HandlerRegistry.DuplicateType.self) {
            try Worker(configuration: configuration, handlers: [SendInvoice(runs: runs), SendInvoice(runs: runs)], logger: TestServices.logger)
        }
        #expect(throws: (any Error).self) { try Worker.Configuration(tiers: [], environment: [:]) }
        #expect(throws: (any Error).self) { try Worker.Configuration(tiers: [.free, .free], environment: [:]) }
        #expect(throws: (any Error).self) { try Worker.Configuration(tiers: [.free], environment: ["WARREN_CONCURRENCY": "lots"]) }
    }
}
