import ArgumentParser
import Foundation
import Logging
import WarrenAMQP
import WarrenConfig
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// `producer dead list|replay|discard`: the dead letters (`dead_letters`, filled from
/// `warren.jobs.dead` by the schedulers), for an operator: every tenant's, straight from
/// Postgres (the HTTP API's `/v1/dead` is the same for a token's tenant).
struct DeadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dead", abstract: "List, replay or discard dead letters.",
        subcommands: [List.self, Replay.self, Discard.self])

    /// The filters every subcommand takes.
    struct Selection: ParsableArguments {
        @Option(name: .customLong("id"), help: "A dead letter's id (repeat for more).") var ids: [Int64] = []
        @Option(help: "Only this reason (max-attempts, permanent-failure, delivery_limit, ...).") var reason: String?
        @Option(help: "Only this job type.") var type: String?
        @Option(help: "Only this tier.") var tier: String?
        @Option(help: "Only this tenant.") var tenant: String?
        @Option(help: "Only those dead at or after this instant (ISO 8601 with its offset).") var since: String?
        @Option(help: "Only those dead before this instant (ISO 8601 with its offset).") var until: String?

        func validate() throws { _ = try filter() }

        func filter() throws -> DeadLetterStore.Filter {
            var filter = DeadLetterStore.Filter(ids: ids.isEmpty ? nil : ids, reason: reason, type: type, tenant: tenant)
            if let tier {
                do { filter.tier = try Tier.parse(tier) } catch { throw ValidationError("--tier: \(error.message)") }
            }
            if let since {
                guard let instant = Timestamp(iso8601: since) else { throw ValidationError("--since: expected an ISO 8601 instant with its offset") }
                filter.since = instant
            }
            if let until {
                guard let instant = Timestamp(iso8601: until) else { throw ValidationError("--until: expected an ISO 8601 instant with its offset") }
                filter.until = instant
            }
            return filter
        }

        /// A replay or discard of everything needs at least one filter: no accident takes all.
        func requireOne() throws {
            guard !ids.isEmpty || reason != nil || type != nil || tier != nil || tenant != nil || since != nil || until != nil else {
                throw ValidationError("name what to take: --id, or a filter (--reason, --type, --tier, --tenant, --since, --until)")
            }
        }
    }

    static func withStore<T: Sendable>(_ body: (DeadLetterStore, PostgresPool) async throws -> T) async throws -> T {
        do {
            return try await PostgresPool.withMigrated(applicationName: "warren-dead") { try await body(DeadLetterStore(pool: $0), $0) }
        } catch let error as SettingsError {
            throw ValidationError("\(error)")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List dead letters (tab-separated), oldest first, and counts by reason.")

        @OptionGroup var selection: Selection
        @Option(help: "dead (default), replayed or discarded.") var state = "dead"
        @Option(help: "At most this many (default 100).") var limit = 100
        @Option(help: "Those after this id (the last one of the previous page).") var after: Int64?

        func validate() throws {
            guard ["dead", "replayed", "discarded"].contains(state) else { throw ValidationError("--state: dead, replayed or discarded") }
            guard (1...10_000).contains(limit) else { throw ValidationError("--limit must be from 1 to 10000") }
        }

        func run() async throws {
            var filter = try selection.filter()
            filter.state = state
            let (rows, counts) = try await DeadCommand.withStore { store, _ in
                (try await store.list(filter, after: after, limit: limit), try await store.countByReason(filter))
            }
            print("id\tjob_id\ttype\ttier\ttenant\treason\tattempt\tdead_at\terror")
            for row in rows {
                print([String(row.id), row.jobID?.lowercasedString ?? "-", row.type ?? "-", row.tier ?? "-", row.tenant ?? "-", row.reason,
                       row.attempt.map(String.init) ?? "-", row.deadAt.iso8601,
                       (row.error ?? "-").replacingOccurrences(of: "\n", with: " ")].joined(separator: "\t"))
            }
            let summary = counts.map { "\($0.reason) \($0.count)" }.joined(separator: ", ")
            FileHandle.standardError.write(Data("\(state) by reason: \(summary.isEmpty ? "none" : summary)\n".utf8))
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Put dead jobs back to work: each as the next message of its job, published with confirms.")

        @OptionGroup var selection: Selection
        @Flag(help: "Keep the attempts spent (the job gets its next attempt) instead of starting again at attempt 1.")
        var keepAttempts = false
        @Option(help: "At most this many (default 1000).") var limit = 1_000
        @Option(help: "RabbitMQ URL (default: $WARREN_AMQP_URL).") var amqpURL: String?

        func validate() throws {
            try selection.requireOne()
            guard (1...100_000).contains(limit) else { throw ValidationError("--limit must be from 1 to 100000") }
        }

        func run() async throws {
            let filter = try selection.filter()
            var logger = Logger(label: "warren.dead")
            logger.logLevel = .warning
            let amqp: AMQPConfiguration
            do {
                amqp = try AMQPConfiguration(url: amqpURL ?? Settings().amqpURL, connectionName: "producer dead replay")
            } catch {
                throw ValidationError("\(error)")
            }
            let publisher = JobPublisher(configuration: amqp, logger: logger)
            try await publisher.start()
            let (settled, published) = try await DeadCommand.withStore { store, pool in
                let settled = try await store.replay(filter, resetAttempts: !keepAttempts, by: "producer dead replay", limit: limit)
                let results = await Outbox(pool: pool).publish(settled.jobs, with: publisher)
                return (settled, results.filter { (try? $0.get()) != nil }.count)
            }
            await publisher.close()
            for (id, job) in zip(settled.ids, settled.jobs) { print("\(id)\t\(job.id.lowercasedString)") }
            var note = "replayed \(settled.ids.count), \(published) published now"
            if published < settled.jobs.count { note += "; the scheduler publishes the rest within \(Outbox.publishLeaseSeconds) s" }
            FileHandle.standardError.write(Data("\(note)\n".utf8))
        }
    }

    struct Discard: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Mark dead letters discarded (kept for the record, never replayed).")

        @OptionGroup var selection: Selection
        @Option(help: "At most this many (default 1000).") var limit = 1_000

        func validate() throws {
            try selection.requireOne()
            guard (1...100_000).contains(limit) else { throw ValidationError("--limit must be from 1 to 100000") }
        }

        func run() async throws {
            let ids = try await DeadCommand.withStore { store, _ in
                try await store.discard(try selection.filter(), by: "producer dead discard", limit: limit)
            }
            for id in ids { print(id) }
            FileHandle.standardError.write(Data("discarded \(ids.count)\n".utf8))
        }
    }
}
