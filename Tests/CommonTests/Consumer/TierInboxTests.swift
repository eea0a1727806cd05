import Testing

@testable import Common

/// The overflow pool's hand-out order, without a broker: deliveries are told apart by tag.
struct TierInboxTests {
    func delivery(_ tag: UInt64) -> AMQPDelivery {
        AMQPDelivery(deliveryTag: tag, redelivered: false, exchange: "", routingKey: "", consumerTag: "", properties: AMQPProperties(),
                     body: [], channel: 1, generation: 1)
    }

    @Test func aFreeSlotTakesTheHighestTiersOldestDelivery() async {
        let inbox = TierInbox(tiers: [.enterprise, .premium, .free])
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
        let inbox = TierInbox(tiers: [.enterprise, .free])
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
        let inbox = TierInbox(tiers: [.enterprise, .free])
        inbox.put(.free, delivery(1))
        inbox.put(.enterprise, delivery(2))
        #expect(await inbox.next()?.deliveryTag == 2)
        let next = Task { await inbox.next()?.deliveryTag }
        inbox.backlog([])
        #expect(await next.value == 1)
    }

    @Test func itEndsOnceEverySubscriptionEndedAndWhatItHeldIsHandedOut() async {
        let inbox = TierInbox(tiers: [.enterprise, .free])
        inbox.backlog([.enterprise])
        inbox.put(.free, delivery(1))
        inbox.finish(nil)
        inbox.finish(nil)
        #expect(await inbox.next()?.deliveryTag == 1, "held work is run at shutdown, as on one queue")
        #expect(await inbox.next() == nil)
    }

    @Test func aFailedSubscriptionEndsItAtOnce() async {
        struct Gone: Error {}
        let inbox = TierInbox(tiers: [.enterprise, .free])
        inbox.backlog([])
        inbox.put(.free, delivery(1))
        inbox.finish(Gone())
        #expect(await inbox.next() == nil)
        #expect(inbox.failure is Gone)
    }
}
