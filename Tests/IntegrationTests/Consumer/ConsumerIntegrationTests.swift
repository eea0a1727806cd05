import Foundation
import Logging
import Synchronization
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport
import WarrenWorker

/// The consumer against the real broker and Postgres. Each test has a virtual host and a
/// schema of its own, so tier queues, the dead queue and job_runs are its alone.
@Suite(.enabled(if: TestServices.enabled))
struct ConsumerIntegrationTests {
    /// Everything a test needs: the vhost URL, the schema's pool, a publishing connection.
    struct World: Sendable {
        var amqpURL: String
        var pool: PostgresPool
        var connection: AMQPConnection

        var schema: String { pool.configuration.searchPath ?? "public" }

        var databaseConfiguration: PostgresConfiguration { pool.configuration }

        /// Environment for a `consumer` subprocess working in this world.
        var environment: [String: String] {
            ["WARREN_AMQP_URL": amqpURL, "WARREN_DATABASE_URL": TestServices.databaseURL, "WARREN_DATABASE_SCHEMA": schema,
             "LOG_LEVEL": "info"]
        }

        func publish(_ jobs: [JobEnvelope]) async throws {
            for result in await connection.publish(jobs.map(\.outgoingMessage)) { try result.get() }
        }

        func rows() async throws -> [(id: UUID, status: String, attempts: Int, error: String?, result: String?)] {
            try await pool.query("SELECT job_id, status, attempts, error, result::text FROM job_runs ORDER BY enqueued_at").rows.map {
                (try $0.uuid(0), try $0.string(1), try $0.int(2), $0[3], $0[4])
            }
        }

        func count(_ sql: String) async throws -> Int {
            try await pool.query(sql).rows.first?.int(0) ?? 0
        }

        func depth(_ queue: String) async throws -> Int {
            Int(try await connection.withControl { control in try control.queueDepth(queue).messages })
        }

        /// Publishes `job` again and hands it back unacked (the connection that took it drops),
        /// so it comes back flagged redelivered, as after a crash between a write and its ack.
        func redeliver(_ job: JobEnvelope) async throws {
            try await publish([job])
            try await TestServices.withConnection("test redeliver", url: amqpURL) { connection in
                let deliveries = try await connection.consume(queue: job.tier.queueName(tenant: job.tenant), prefetch: 1)
                var iterator = deliveries.makeAsyncIterator()
                _ = try #require(try await iterator.next())
            }
        }

        /// True once `count` `duplicate` events are logged and the free queue is empty.
        func duplicatesAcked(_ count: Int) async throws -> Bool {
            let duplicates = try await self.count("SELECT count(*) FROM message_logs WHERE event = 'duplicate'")
            let left = try await depth(Tier.free.queueName)
            return duplicates == count && left == 0
        }

        /// Takes every message off `queue` (acked), to inspect what was dead-lettered.
        func drain(_ queue: String, expecting count: Int) async throws -> [AMQPDelivery] {
            let deliveries = try await connection.consume(queue: queue, prefetch: 100)
            var received: [AMQPDelivery] = []
            var iterator = deliveries.makeAsyncIterator()
            while received.count < count, let delivery = try await iterator.next() {
                received.append(delivery)
                try await connection.ack(delivery)
            }
            try await connection.cancel(consumerTag: deliveries.consumerTag)
            return received
        }
    }

    func withWorld<T: Sendable>(_ body: (World) async throws -> T) async throws -> T {
        try await TestServices.withVhost { url in
            try await TestServices.withSchema { pool in
                _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
                return try await TestServices.withConnection("test consumer world", url: url) { connection in
                    try await body(World(amqpURL: url, pool: pool, connection: connection))
                }
            }
        }
    }

    /// Runs an in-process consumer for `body`, then stops it gracefully.
    func withConsumer<T: Sendable>(_ world: World, tier: Tier = .free, handlers: HandlerRegistry = .builtIn,
                                   configure: (inout ConsumerConfiguration) -> Void = { _ in },
                                   _ body: (JobConsumer) async throws -> T) async throws -> T {
        var configuration = ConsumerConfiguration(tier: tier)
        configuration.retry = RetryPolicy(maxAttempts: 3, backoff: Backoff(base: .milliseconds(10), cap: .milliseconds(10), floor: .milliseconds(10)))
        configuration.shutdownGrace = .seconds(5)
        configure(&configuration)
        var database = world.databaseConfiguration
        database.applicationName = "test-consumer"
        let consumer = JobConsumer(configuration: configuration, amqp: try TestServices.amqpConfiguration("test consumer", url: world.amqpURL),
                                   database: database, handlers: handlers, logger: TestServices.logger)
        let running = Task { try await consumer.run() }
        do {
            let value = try await body(consumer)
            consumer.stop()
            _ = try await running.value
            return value
        } catch {
            consumer.stop()
            _ = try? await running.value
            throw error
        }
    }

    func job(_ type: String, _ payload: String = "{}", tier: Tier = .free) -> JobEnvelope {
        JobEnvelope(type: type, tier: tier, payload: Array(payload.utf8))
    }

    // MARK: - Outcomes

    @Test func successRetryThenSuccessDeadAndPermanentFailure() async throws {
        try await withWorld { world in
            let ok = job("noop")
            let flaky = job("fail", #"{"times": 1}"#)
            let hopeless = job("fail", #"{"always": true}"#)
            let refused = job("fail", #"{"permanent": true}"#)
            let unknown = job("no.such.type")
            try await world.publish([ok, flaky, hopeless, refused, unknown])
            try await withConsumer(world) { _ in
                try await TestServices.waitUntil(timeout: .seconds(30), "every job terminal") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status IN ('succeeded','failed','dead')") == 5
                }
            }
            let rows = Dictionary(uniqueKeysWithValues: try await world.rows().map { ($0.id, $0) })
            #expect(rows[ok.id]?.status == "succeeded")
            #expect(rows[ok.id]?.attempts == 1)
            #expect(rows[flaky.id]?.status == "succeeded")
            #expect(rows[flaky.id]?.attempts == 2, "one retry through warren.retry.1s, then success")
            #expect(rows[flaky.id]?.result == #"{"attempts": 2}"#)
            #expect(rows[hopeless.id]?.status == "dead")
            #expect(rows[hopeless.id]?.attempts == 3)
            #expect(rows[refused.id]?.status == "failed")
            #expect(rows[unknown.id]?.status == "failed")
            #expect(rows[unknown.id]?.error?.contains("unknown job type 'no.such.type'") == true)

            // Events: two retries of the hopeless job and one of the flaky one; every message once.
            #expect(try await world.count("SELECT count(*) FROM message_logs WHERE event = 'retried'") == 3)
            #expect(try await world.count("SELECT count(*) FROM message_logs WHERE event = 'succeeded'") == 2)

            // The dead, the refused and the unknown are in warren.jobs.dead with their reasons.
            let dead = try await world.drain(Topology.deadQueue, expecting: 3)
            let reasons = Dictionary(uniqueKeysWithValues: dead.map {
                ($0.properties.messageID ?? "", $0.properties.headers[JobEnvelope.Header.deadReason]?.stringValue ?? "")
            })
            #expect(reasons[hopeless.id.lowercasedString] == "max-attempts")
            #expect(reasons[refused.id.lowercasedString] == "permanent-failure")
            #expect(reasons[unknown.id.lowercasedString] == "permanent-failure")
            let last = dead.first { $0.properties.messageID == hopeless.id.lowercasedString }
            #expect(last?.properties.headers[JobEnvelope.Header.attempt]?.intValue == 3)
            #expect(last?.properties.headers[JobEnvelope.Header.lastError]?.stringValue?.contains("always") == true)
            #expect(try await world.depth(Tier.free.queueName) == 0)
        }
    }

    @Test func malformedMessagesAreDeadLetteredWithTheirReasonAndTheConsumerKeepsRunning() async throws {
        try await withWorld { world in
            let valid = job("noop")
            func message(_ mutate: (inout AMQPProperties, inout [UInt8]) -> Void) -> AMQPOutgoingMessage {
                var properties = valid.properties
                properties.messageID = UUID().uuidString.lowercased()
                var body = valid.payload
                mutate(&properties, &body)
                return AMQPOutgoingMessage(exchange: Topology.jobsExchange, routingKey: Tier.free.routingKey, properties: properties, body: body)
            }
            let malformed: [(String, AMQPOutgoingMessage)] = [
                ("payload", message { _, body in body = Array("not json {".utf8) }),
                ("message_id", message { properties, _ in properties.messageID = nil }),
                ("type", message { properties, _ in properties.type = nil }),
                (JobEnvelope.Header.tier, message { properties, _ in properties.headers[JobEnvelope.Header.tier] = nil }),
                (JobEnvelope.Header.tier, message { properties, _ in properties.headers[JobEnvelope.Header.tier] = .string("gold") }),
                (JobEnvelope.Header.tier, message { properties, _ in properties.headers[JobEnvelope.Header.tier] = .string("premium") }),
                (JobEnvelope.Header.enqueuedAt, message { properties, _ in properties.headers[JobEnvelope.Header.enqueuedAt] = .string("yesterday") }),
                (JobEnvelope.Header.attempt, message { properties, _ in properties.headers[JobEnvelope.Header.attempt] = .string("two") }),
            ]
            for (_, message) in malformed { try await world.connection.publish(message) }
            try await world.publish([valid])
            try await withConsumer(world) { _ in
                try await TestServices.waitUntil("the valid job after the malformed ones succeeded") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 1
                }
                try await TestServices.waitUntil("every malformed message dead-lettered and the tier queue empty") {
                    let dead = try await world.depth(Topology.deadQueue)
                    let left = try await world.depth(Tier.free.queueName)
                    return dead == malformed.count && left == 0
                }
            }
            #expect(try await world.count("SELECT count(*) FROM job_runs") == 1, "malformed messages write no rows")
            let dead = try await world.drain(Topology.deadQueue, expecting: malformed.count)
            for (field, message) in malformed {
                let copy = dead.first { $0.properties.messageID == message.properties.messageID && $0.body == message.body }
                let reason = copy?.properties.headers[JobEnvelope.Header.deadReason]?.stringValue ?? ""
                #expect(reason.hasPrefix("malformed:"), "\(field): \(reason)")
                #expect(reason.contains(field) || field == "payload" && reason.contains("JSON"), "\(field): \(reason)")
            }
        }
    }

    @Test func aRedeliveredJobThatAlreadyFinishedIsAckedWithoutRunningAgain() async throws {
        try await withWorld { world in
            let counter = CountingHandler()
            var handlers = HandlerRegistry.builtIn
            try handlers.register(counter)
            let first = job(counter.type)
            try await world.publish([first])
            // Runs once, durably.
            try await withConsumer(world, handlers: handlers) { _ in
                try await TestServices.waitUntil("the job succeeded") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 1
                }
            }
            #expect(counter.runs == 1)
            // The same message comes back flagged redelivered (as after a crash between the
            // write and the ack): take it without acking and drop the connection.
            try await world.redeliver(first)
            try await withConsumer(world, handlers: handlers) { _ in
                try await TestServices.waitUntil("the duplicate was recorded and acked") { try await world.duplicatesAcked(1) }
            }
            #expect(counter.runs == 1, "the handler did not run again")
            #expect(try await world.count("SELECT count(*) FROM job_runs") == 1)
        }
    }

    @Test func aDeferredJobComesBackWithTheSameAttemptAndNeverDiesOfDeferrals() async throws {
        try await withWorld { world in
            let deferring = DeferringHandler()
            var handlers = HandlerRegistry.builtIn
            try handlers.register(deferring)
            // Deferred more times than the policy has attempts (3 in `withConsumer`), then runs.
            let patient = job(deferring.type, #"{"defer": 4}"#)
            let failing = job(deferring.type, #"{"defer": 1, "then": "retry"}"#)
            try await world.publish([patient, failing])
            try await withConsumer(world, handlers: handlers) { _ in
                try await TestServices.waitUntil(timeout: .seconds(40), "both jobs finished") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status IN ('succeeded','failed','dead')") == 2
                }
            }
            let rows = Dictionary(uniqueKeysWithValues: try await world.rows().map { ($0.id, $0) })
            #expect(rows[patient.id]?.status == "succeeded")
            #expect(rows[patient.id]?.attempts == 1, "four deferrals spent no attempt")
            #expect(rows[patient.id]?.result == #"{"runs": 5, "attempt": 1}"#, "jsonb orders keys by length")
            #expect(deferring.runs(of: patient.id) == 5)
            // Deferrals are recorded like retries, at the same attempt, with their reason.
            #expect(try await world.count("""
                SELECT count(*) FROM message_logs
                WHERE job_id = '\(patient.id.lowercasedString)' AND event = 'retried' AND attempt = 1
                  AND detail->>'deferred' = 'not now' AND detail->>'delay' = '1s'
                """) == 4)
            // A deferral then a real failure: the failure spends attempt 1, the run after it is attempt 2.
            #expect(rows[failing.id]?.status == "succeeded")
            #expect(rows[failing.id]?.attempts == 2)
            #expect(try await world.count("SELECT count(*) FROM message_logs WHERE job_id = '\(failing.id.lowercasedString)' AND event = 'retried'") == 2)
            #expect(try await world.depth(Topology.deadQueue) == 0)
        }
    }

    @Test func theDeliveryLimitDeadLettersAMessageThatKeepsComingBack() async throws {
        try await withWorld { world in
            let poison = job("noop")
            try await world.publish([poison])
            // A consumer that dies on this message returns it to the queue each time, which is
            // what a nack with requeue does; the quorum queue counts every return.
            let deliveries = try await world.connection.consume(queue: Tier.free.queueName, prefetch: 1)
            let connection = world.connection
            let nacker = Task {
                var returns = 0
                for try await delivery in deliveries {
                    try await connection.nack(delivery, requeue: true)
                    returns += 1
                }
                return returns
            }
            try await TestServices.waitUntil(timeout: .seconds(30), "the broker dead-lettered it") {
                try await world.depth(Topology.deadQueue) == 1
            }
            try await world.connection.cancel(consumerTag: deliveries.consumerTag)
            let returns = try await nacker.value
            #expect(returns >= Int(Topology.deliveryLimit))
            let dead = try await world.drain(Topology.deadQueue, expecting: 1)
            #expect(dead.first?.properties.messageID == poison.id.lowercasedString)
            #expect(dead.first?.properties.headers["x-first-death-reason"]?.stringValue == "delivery_limit")
            #expect(try await world.depth(Tier.free.queueName) == 0)
        }
    }

    @Test func postgresStoppedMidRunThenRestartedLosesAndDuplicatesNothing() async throws {
        try await TestServices.withVhost { url in
            try await OwnPostgres.withCluster { postgres in
                var database = PostgresConfiguration(url: postgres.url, applicationName: "test-pg-outage")
                database.connectTimeoutSeconds = 1
                let pool = PostgresPool(configuration: database, logger: TestServices.logger)
                defer { Task { await pool.close() } }
                try await TestServices.withConnection("test pg outage", url: url) { connection in
                    let world = World(amqpURL: url, pool: pool, connection: connection)
                    _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
                    let jobs = (0..<400).map { index in job("sleep", #"{"ms": \#(index % 3)}"#) }
                    try await world.publish(Array(jobs[..<100]))
                    var configuration = ConsumerConfiguration(tier: .free)
                    configuration.prefetch = 50
                    configuration.concurrency = 8
                    configuration.batchMaxRows = 20
                    let consumer = JobConsumer(configuration: configuration,
                                               amqp: try TestServices.amqpConfiguration("test pg outage consumer", url: url),
                                               database: database, handlers: .builtIn, logger: TestServices.logger)
                    let running = Task { try await consumer.run() }
                    try await TestServices.waitUntil(timeout: .seconds(30), "the first jobs are durable") {
                        try await world.count("SELECT count(*) FROM job_runs") == 100
                    }
                    try await postgres.stop()
                    try await world.publish(Array(jobs[100...]))
                    // While it is down the consumer holds at most `prefetch` deliveries and acks none.
                    try await TestServices.waitUntil("the consumer holds a prefetch's worth, the broker the rest") {
                        try await world.depth(Tier.free.queueName) == 300 - Int(configuration.prefetch)
                    }
                    try await postgres.start()
                    try await TestServices.waitUntil(timeout: .seconds(60), "every job durable after the restart") {
                        // The test's own pooled sessions were cut by the stop too: a failed read is "not yet".
                        (try? await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'")) == 400
                    }
                    consumer.stop()
                    _ = try await running.value
                    #expect(try await world.count("SELECT count(DISTINCT job_id) FROM job_runs") == 400)
                    #expect(try await world.count("SELECT count(*) FROM job_runs") == 400, "no duplicated rows")
                    #expect(try await world.depth(Tier.free.queueName) == 0, "everything acked")
                }
            }
        }
    }

    // MARK: - Processes: signals

    @Test func aJobThatKeepsKillingItsConsumerEndsInTheDeadQueue() async throws {
        try await withWorld { world in
            // Its consumer dies (SIGKILL) every time it runs this job: the broker gets it back
            // each time, counts, and past the delivery limit dead-letters it.
            let poison = job("sleep", #"{"ms": 60000}"#)
            try await world.publish([poison])
            var crashes = 0
            while try await world.depth(Topology.deadQueue) == 0 {
                #expect(crashes <= Int(Topology.deliveryLimit) + 1, "dead-lettered by the limit")
                guard crashes <= Int(Topology.deliveryLimit) + 1 else { break }
                let consumer = try RunningProduct("consumer", ["--tier", "free"], environment: world.environment)
                try await TestServices.waitUntil(timeout: .seconds(20), "the job was delivered, or dead-lettered") {
                    let ready = try await world.depth(Tier.free.queueName)
                    let dead = try await world.depth(Topology.deadQueue)
                    return ready == 0 || dead == 1
                }
                consumer.signal(SIGKILL)
                _ = try await consumer.wait()
                crashes += 1
                try await TestServices.waitUntil("the broker has it back, or dead-lettered it") {
                    let ready = try await world.depth(Tier.free.queueName)
                    let dead = try await world.depth(Topology.deadQueue)
                    return ready == 1 || dead == 1
                }
            }
            #expect(crashes >= Int(Topology.deliveryLimit))
            let dead = try await world.drain(Topology.deadQueue, expecting: 1)
            #expect(dead.first?.properties.messageID == poison.id.lowercasedString)
            #expect(dead.first?.properties.headers["x-first-death-reason"]?.stringValue == "delivery_limit")
            // No outcome was ever written (a consumer may have recorded that it started it).
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE status <> 'running'") == 0)
        }
    }

    @Test func sigtermLetsInFlightJobsFinishFlushesAndExitsZero() async throws {
        try await withWorld { world in
            let jobs = (0..<6).map { _ in job("sleep", #"{"ms": 1500}"#) }
            try await world.publish(jobs)
            let consumer = try RunningProduct("consumer", ["--tier", "free", "--concurrency", "10", "--shutdown-grace", "20"],
                                              environment: world.environment)
            try await TestServices.waitUntil("all six jobs were delivered") {
                try await world.depth(Tier.free.queueName) == 0
            }
            consumer.signal(SIGTERM)
            let status = try await consumer.wait()
            #expect(status == 0, "\(consumer.stderr.suffix(2_000))")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 6)
            #expect(try await world.depth(Tier.free.queueName) == 0, "all acked: nothing came back")
        }
    }

    @Test func sigtermPastTheGracePeriodHandsBackWhatIsStillRunning() async throws {
        try await withWorld { world in
            let jobs = (0..<4).map { _ in job("sleep", #"{"ms": 30000}"#) }
            try await world.publish(jobs)
            let consumer = try RunningProduct("consumer", ["--tier", "free", "--concurrency", "10", "--shutdown-grace", "0.5"],
                                              environment: world.environment)
            try await TestServices.waitUntil("all four jobs were delivered") {
                try await world.depth(Tier.free.queueName) == 0
            }
            consumer.signal(SIGTERM)
            let status = try await consumer.wait(timeout: .seconds(20))
            #expect(status == 0, "\(consumer.stderr.suffix(2_000))")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE status <> 'running'") == 0,
                    "nothing finished, no outcome written (only the running marks)")
            try await TestServices.waitUntil("the broker has them back") { try await world.depth(Tier.free.queueName) == 4 }
        }
    }

    @Test func sigkillMidBatchThenAFreshConsumerLeavesExactlyOneRowPerJob() async throws {
        try await withWorld { world in
            let total = 1_500
            let jobs = (0..<total).map { _ in job("sleep", #"{"ms": 5}"#) }
            try await world.publish(jobs)
            let first = try RunningProduct("consumer", ["--tier", "free", "--concurrency", "16", "--prefetch", "200"],
                                           environment: world.environment)
            try await TestServices.waitUntil(timeout: .seconds(30), "some jobs are durable") {
                try await world.count("SELECT count(*) FROM job_runs") >= 200
            }
            first.signal(SIGKILL)
            _ = try await first.wait()
            let before = try await world.count("SELECT count(*) FROM job_runs")
            #expect(before < total, "killed mid-run")

            let second = try RunningProduct("consumer", ["--tier", "free", "--exit-when-idle", "1s"], environment: world.environment)
            #expect(try await second.wait(timeout: .seconds(60)) == 0, "\(second.stderr.suffix(2_000))")
            #expect(try await world.count("SELECT count(*) FROM job_runs") == total, "exactly one row per job")
            #expect(try await world.count("SELECT count(DISTINCT job_id) FROM job_runs WHERE status = 'succeeded'") == total)
            #expect(try await world.depth(Tier.free.queueName) == 0)
        }
    }

    @Test func drainModeExitsZeroOnceTheQueueStaysEmpty() async throws {
        try await withWorld { world in
            try await world.publish((0..<50).map { _ in job("noop") })
            let consumer = try RunningProduct("consumer", ["--tier", "free", "--exit-when-idle", "500ms"], environment: world.environment)
            #expect(try await consumer.wait(timeout: .seconds(30)) == 0, "\(consumer.stderr.suffix(2_000))")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 50)
        }
    }

    @Test func badFlagsAreAClearErrorAndChangeNothing() async throws {
        let result = try await Products.run("consumer", ["--tier", "gold"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("tier"), "\(result.stderr)")
    }
}

/// Counts its runs; succeeds.
final class CountingHandler: JobHandler {
    let type = "test.count"
    private let count = Mutex(0)
    var runs: Int { count.withLock { $0 } }
    func run(_ context: JobContext) async -> JobOutcome {
        count.withLock { $0 += 1 }
        return .success
    }
}

/// `{"defer": N}`: defers its job N times (1 s each, attempt kept), then succeeds with the
/// attempt and its run count; with `"then": "retry"` the run after the deferrals fails once
/// (retryable) before it succeeds.
final class DeferringHandler: JobHandler {
    let type = "test.defer"
    private let counts = Mutex([UUID: Int]())

    func runs(of job: UUID) -> Int { counts.withLock { $0[job] ?? 0 } }

    func run(_ context: JobContext) async -> JobOutcome {
        let runs = counts.withLock { counts -> Int in
            counts[context.job.id, default: 0] += 1
            return counts[context.job.id]!
        }
        let fields = PayloadFields(context.job.payload)
        let deferrals = fields?.int("defer") ?? 0
        if runs <= deferrals { return .deferred(reason: "not now", retryAfter: .seconds(1)) }
        if fields?.string("then") == "retry", context.attempt == 1 {
            return .retry(error: "failed once after its deferrals", retryAfter: .seconds(1))
        }
        return .success(result: Array(#"{"attempt":\#(context.attempt),"runs":\#(runs)}"#.utf8))
    }
}
