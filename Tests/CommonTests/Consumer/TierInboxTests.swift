import Testing
@testable import WarrenAMQP
@testable import WarrenJobs
@testable import WarrenWorker

/// The hand-out order of a consumer's inbox (tiers, then tenant lanes), without a broker:
/// deliveries are told apart by tag.
struct TierInboxTests {
    @Test func withinATierLanesTakeTurnsSoAFloodedLaneGetsEveryOtherSlot() async {
        let inbox = TierInbox(tiers: [.free], lanes: 3)
        for tag in 1...5 { inbox.put(.free, lane: 0, delivery(UInt64(tag))) }
        inbox.put(.free, lane: 2, delivery(10))
        inbox.put(.free, lane: 2, delivery(11))
        var order: [UInt64] = []
        for _ in 0..<7 { order.append(await inbox.next()?.deliveryTag ?? 0) }
        #expect(order == [1, 10, 2, 11, 3, 4, 5])
        // A delivery of a lane just arrived goes next, ahead of the flooded lane's rest.
        for tag in 20...22 { inbox.put(.free, lane: 0, delivery(UInt64(tag))) }
        _ = await inbox.next()
        inbox.put(.free, lane: 1, delivery(30))
        #expect(await inbox.next()?.deliveryTag == 30)
    }

    @Test func laneOfATenantIsStableAndJobsWithoutOneAreInLaneZero() {
        #expect(Tier.lane(tenant: nil) == 0)
        // FNV-1a 32 of "a" is 0xe40c292c: the lane every publisher of any version must agree on.
        #expect(Tier.lane(tenant: "a") == 0xe40c_292c % Tier.lanes)
        #expect(Tier.lane(tenant: "tenant-a") == 3)
        #expect(Tier.free.queueName(lane: 0) == "warren.jobs.free")
        #expect(Tier.free.queueName(lane: 3) == "warren.jobs.free.3")
        #expect(Tier.free.routingKey(lane: 3) == "free.3")
        #expect(JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8), tenant: "tenant-a").outgoingMessage.routingKey == "free.3")
    }

    func delivery(_ tag: UInt64) -> AMQPDelivery {
        AMQPDelivery(deliveryTag: tag, redelivered: false, exchange: "", routingKey: "", consumerTag: "", properties: AMQPProperties(),
                     body: [], channel: 1, generation: 1)
    }

    @Test func aFreeSlotTakesTheHighestTiersOldestDelivery() async {
        let inbox = TierInbox(tiers: [.enterprise, .premium, .free], lanes: 1)
        inbox.backlog([])
        inbox.put(.free, delivery(1))
        inbox.put(.premium, delivery(2))
        inbox.put(.enterprise, delivery(3))
        inbox.put(.enterprise, delivery(4))
        var order: [UInt64] = []
        for _ in 0..<4 { order.append(await inbox.next()?.deliveryTag ?? 0) }
        #expect(order == [3, 4, 2, 1])
    }

    @Test func whileAHigherTierIsBackloggedLowerWorkWaitsForIt() async {
        let inbox = TierInbox(tiers: [.enterprise, .free], lanes: 1)
        inbox.backlog([.enterprise, .free])
        inbox.put(.free, delivery(1))
        // The slot waits: enterprise has ready jobs in its queue, even if none arrived yet.
        let taker = Task { await inbox.next()?.deliveryTag }
        inbox.put(.enterprise, delivery(2))
        #expect(await taker.value == 2)
        let next = Task { await inbox.next()?.deliveryTag }
        // Enterprise's queue drained: the free job held all along may start.
        inbox.backlog([.free])
        #expect(await next.value == 1)
    }

    @Test func beforeTheFirstCountOnlyTheHighestTierStarts() async {
        let inbox = TierInbox(tiers: [.enterprise, .free], lanes: 1)
        inbox.put(.free, delivery(1))
        inbox.put(.enterprise, delivery(2))
        #expect(await inbox.next()?.deliveryTag == 2)
        let next = Task { await inbox.next()?.deliveryTag }
        inbox.backlog([])
        #expect(await next.value == 1)
    }

    @Test func itEndsOnceEverySubscriptionEndedAndWhatItHeldIsHandedOut() async {
        let inbox = TierInbox(tiers: [.enterprise, .free], lanes: 1)
        inbox.backlog([.enterprise])
        inbox.put(.free, delivery(1))
        inbox.finish(nil)
        inbox.finish(nil)
        #expect(await inbox.next()?.deliveryTag == 1, "held work is run at shutdown, as on one queue")
        #expect(await inbox.next() == nil)
    }

    @Test func aFailedSubscriptionEndsItAtOnce() async {
        struct Gone: Error {}
        let inbox = TierInbox(tiers: [.enterprise, .free], lanes: 1)
        inbox.backlog([])
        inbox.put(.free, delivery(1))
        inbox.finish(Gone())
        #expect(await inbox.next() == nil)
        #expect(inbox.failure is Gone)
    }
}
