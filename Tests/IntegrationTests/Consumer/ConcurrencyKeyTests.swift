import Foundation
import Synchronization
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenNotify

/// Per-key concurrency across consumers: at most `limit` jobs of a key run at once, counted
/// from the rows' run intervals; waiting jobs hold no worker slot and spend no attempt; a
/// slot held by a consumer that died frees once its lease expires.
@Suite(.enabled(if: TestServices.enabled))
struct ConcurrencyKeyTests {
    typealias World = ConsumerIntegrationTests.World

    /// Jobs of `key` (its name the idempotency key's prefix, so the rows tell them apart).
    func keyed(_ key: String?, limit: Int = 1, _ count: Int, ms: Int, tenant: String? = nil) -> [JobEnvelope] {
        (0..<count).map { index in
            JobEnvelope(type: "sleep", tier: .free, payload: Array(#"{"ms":\#(ms)}"#.utf8), tenant: tenant,
                        idempotencyKey: "\(key ?? "none")-\(index)", concurrencyKey: key, concurrencyLimit: limit)
        }
    }

    func consumer(_ world: World, id: String, concurrency: Int, lease: String = "30") throws -> RunningProduct {
        try RunningProduct("consumer", ["--tier", "free", "--concurrency", "\(concurrency)", "--admin-port", "0"],
                           environment: world.environment.merging(["WARREN_ADMIN_HOST": "127.0.0.1", "WARREN_CONSUMER_ID": id,
                                                                   "WARREN_KEY_LEASE_SECONDS": lease]) { $1 })
    }

    /// The most jobs of `key` that ran at once: for each job's start, the jobs of the key whose
    /// run interval covers it.
    func peak(_ world: World, _ key: String) async throws -> Int {
        try await world.count("""
            SELECT coalesce(max(c), 0) FROM (
              SELECT (SELECT count(*) FROM job_runs o WHERE o.idempotency_key LIKE '\(key)-%'
                        AND o.started_at <= r.started_at AND o.finished_at > r.started_at) AS c
              FROM job_runs r WHERE r.idempotency_key LIKE '\(key)-%') AS covering
            """)
    }

    @Test func aKeysLimitHoldsAcrossTwoConsumersAndWaitingSpendsNoAttempt() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let first = try consumer(world, id: "keys-1", concurrency: 8, lease: "0.6")
            defer { first.signal(SIGKILL) }
            let second = try consumer(world, id: "keys-2", concurrency: 8, lease: "0.6")
            defer { second.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "both consumers are subscribed") {
                try await world.connection.withControl { try $0.queueDepth(Tier.free.queueName).consumers } == 2
            }
            // Jobs of 1.2 s on a lease of 0.6 s: only the refresh keeps a running job's slot.
            try await world.publish(keyed("one", limit: 1, 6, ms: 150) + keyed("two", limit: 2, 8, ms: 150)
                                    + keyed("slow", limit: 1, 3, ms: 1_200))
            try await TestServices.waitUntil(timeout: .seconds(90), "all 17 jobs succeeded") {
                try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 17
            }
            #expect(try await peak(world, "one") == 1)
            #expect(try await peak(world, "two") == 2, "the limit is used, not only kept")
            #expect(try await peak(world, "slow") == 1, "a running job kept its slot past the lease's lifetime")
            #expect(try await world.count("SELECT max(attempts) FROM job_runs") == 1, "waiting for the key spent no attempt")
            #expect(try await world.count("SELECT count(DISTINCT consumer_id) FROM job_runs") == 2)
            #expect(try await world.count("SELECT count(*) FROM concurrency_leases") == 0, "every slot given back")
            for product in [first, second] {
                product.signal(SIGTERM)
                #expect(try await product.wait(timeout: .seconds(60)) == 0, "graceful stop: \(product.stderr.suffix(2_000))")
            }
        }
    }

    @Test func jobsWaitingForTheirKeyHoldNoWorkerSlot() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            // Two slots: one runs a job of the key; the others of the key wait without a slot,
            // so the jobs without a key behind them run meanwhile.
            try await world.publish(keyed("busy", limit: 1, 5, ms: 400) + keyed(nil, 10, ms: 10))
            let worker = try consumer(world, id: "keys-slots", concurrency: 2)
            defer { worker.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "all 15 jobs succeeded") {
                try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 15
            }
            let early = try await world.count("""
                SELECT count(*) FROM job_runs WHERE idempotency_key LIKE 'none-%'
                  AND finished_at < (SELECT max(started_at) FROM job_runs WHERE idempotency_key LIKE 'busy-%')
                """)
            #expect(early == 10, "only \(early) of the 10 jobs without a key ran while the keyed ones waited")
            #expect(try await peak(world, "busy") == 1)
        }
    }

    /// A slot given back is announced on `warren.control` (`keys_free`), so jobs of the key
    /// waiting in other consumers ask at once; announcements a consumer cannot read are ignored.
    @Test func aFreedKeyIsAnnouncedToTheFleetAndJunkAnnouncementsAreIgnored() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let listener = "test.control.\(UUID().uuidString.prefix(8))"
            try await world.connection.withControl { control in
                try Topology.standard.declare(on: control)
                try control.declareQueue(listener, durable: false, exclusive: true, autoDelete: true)
                try control.bindQueue(listener, exchange: Topology.controlExchange, routingKey: "")
            }
            let worker = try consumer(world, id: "keys-announce", concurrency: 4)
            defer { worker.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "the consumer is subscribed") {
                try await world.connection.withControl { try $0.queueDepth(Tier.free.queueName).consumers } == 1
            }
            for junk in [#"{"action":"keys_free","keys":[1,2]}"#, #"{"action":"keys_free"}"#, #"{"action":"keys_free","keys":"k"}"#] {
                try await world.connection.publish(AMQPOutgoingMessage(exchange: Topology.controlExchange, routingKey: "",
                                                                       body: Array(junk.utf8), mandatory: false))
            }
            try await world.publish(keyed("told", 3, ms: 1) + keyed(nil, 2, ms: 1))
            try await TestServices.waitUntil(timeout: .seconds(60), "all 5 jobs succeeded") {
                try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 5
            }
            let announced = Mutex<Set<String>>([])
            let messages = try await world.connection.consume(queue: listener, prefetch: 100)
            let collector = Task {
                for try await message in messages {
                    if case .keysFree(let keys, "keys-announce")? = ControlMessage(body: message.body) { announced.withLock { $0.formUnion(keys) } }
                }
            }
            defer { collector.cancel() }
            try await TestServices.waitUntil(timeout: .seconds(20), "the freed key was announced") {
                announced.withLock { $0.contains("told") }
            }
            #expect(announced.withLock { $0 } == ["told"], "only keyed jobs free a key")
            worker.signal(SIGTERM)
            #expect(try await worker.wait(timeout: .seconds(60)) == 0, "the junk did not stop it: \(worker.stderr.suffix(2_000))")
        }
    }

    @Test func aSlotHeldByAConsumerThatDiedFreesWhenItsLeaseExpires() async throws {
        let doomedTenant = "tenant-a", laterTenant = "tenant-b"
        try #require(Tier.lane(tenant: doomedTenant) != Tier.lane(tenant: laterTenant))
        try await ConsumerIntegrationTests().withWorld { world in
            try await world.publish(keyed("crash", 1, ms: 120_000, tenant: doomedTenant))
            let doomed = try consumer(world, id: "keys-doomed", concurrency: 2, lease: "2")
            defer { doomed.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "the first job holds the key's slot") {
                try await world.count("SELECT count(*) FROM concurrency_leases WHERE key = 'crash' AND holder = 'keys-doomed'") == 1
            }
            doomed.signal(SIGKILL)
            _ = try await doomed.wait(timeout: .seconds(30))
            // Its job is not run again here (taken off its lane once the broker has it back), so
            // only the lease stands in the way.
            let doomedLane = Tier.free.queueName(tenant: doomedTenant)
            try await TestServices.waitUntil(timeout: .seconds(30), "the broker has the first job back") {
                try await world.connection.withControl { try $0.queueDepth(doomedLane).messages } == 1
            }
            _ = try await world.connection.withControl { control in try control.purgeQueue(doomedLane) }
            var later = keyed("crash", 1, ms: 1, tenant: laterTenant)
            later[0].idempotencyKey = "crash-later"
            try await world.publish(later)
            let rescuer = try consumer(world, id: "keys-rescuer", concurrency: 2, lease: "2")
            defer { rescuer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "the second job ran once the dead consumer's lease expired") {
                try await world.count("SELECT count(*) FROM job_runs WHERE idempotency_key = 'crash-later' AND status = 'succeeded'") == 1
            }
            #expect(try await world.count("SELECT attempts FROM job_runs WHERE idempotency_key = 'crash-later'") == 1)
            #expect(try await world.count("SELECT count(*) FROM concurrency_leases") == 0)
        }
    }
}
