import NIOCore
import Synchronization
import WarrenAMQP
import WarrenJobs

/// The deliveries a consumer holds from its queues (every tenant lane of its tier, or of
/// several tiers for an overflow pool), handed out highest tier first and, within a tier, one
/// lane after the other. ``next()`` is asked only once a job slot is free:
/// - It answers the highest tier that has a delivery held.
/// - Within that tier, it takes the oldest delivery of the next lane, round-robin from the
///   lane served last. So a tenant whose flood fills its lane gets every other slot at most
///   while other lanes have work: a quiet tenant's job waits for one free slot, not for the
///   flood (tenants that share a lane, ``Tier/lane(tenant:)``, share its order).
/// - While a higher tier's queues have a backlog (``backlog(_:)``, from the broker's ready
///   counts), nothing of a lower tier is handed out, even if held here: the slot waits for the
///   higher tier's delivery. So an overflow pool never starts free work while enterprise work
///   waits in its queues (as of the last count, every 100 ms).
///
/// One taker (the consumer's dispatch loop); many putters (one reader per subscription).
final class TierInbox: Sendable {
    private struct State {
        /// Per tier (in `order`), per lane: what is held.
        var held: [[CircularBuffer<AMQPDelivery>]]
        /// Per tier: the lane to look at first next time.
        var cursor: [Int]
        var waiter: CheckedContinuation<AMQPDelivery?, Never>?
        var open: Int
        var failure: (any Error)?
        /// Tiers whose queues had ready messages at the last count.
        var backlogged: Set<Tier>

        /// The delivery to start now, if any. Once every subscription ended, whatever is held.
        mutating func pick(order: [Tier]) -> AMQPDelivery? {
            for (index, tier) in order.enumerated() {
                let lanes = held[index].count
                for step in 0..<lanes {
                    let lane = (cursor[index] + step) % lanes
                    if let delivery = held[index][lane].popFirst() {
                        cursor[index] = (lane + 1) % lanes
                        return delivery
                    }
                }
                if open > 0, backlogged.contains(tier) { return nil }
            }
            return nil
        }
    }

    private let order: [Tier]
    private let state: Mutex<State>

    /// `tiers` in priority order, highest first, with `lanes` subscriptions each.
    /// Until the first ``backlog(_:)``, every tier counts as backlogged.
    init(tiers: [Tier], lanes: Int = Tier.lanes) {
        order = tiers
        state = Mutex(State(held: tiers.map { _ in Array(repeating: CircularBuffer(), count: lanes) },
                            cursor: tiers.map { _ in 0 }, open: tiers.count * lanes, backlogged: Set(tiers)))
    }

    /// The tiers whose queues have ready messages now.
    func backlog(_ tiers: Set<Tier>) {
        let handOut = state.withLock { state -> (CheckedContinuation<AMQPDelivery?, Never>, AMQPDelivery)? in
            state.backlogged = tiers
            return Self.handOut(&state, order: order)
        }
        handOut.map { $0.0.resume(returning: $0.1) }
    }

    /// The waiting taker and what it may start, if both.
    private static func handOut(_ state: inout State, order: [Tier]) -> (CheckedContinuation<AMQPDelivery?, Never>, AMQPDelivery)? {
        guard let waiter = state.waiter, let delivery = state.pick(order: order) else { return nil }
        state.waiter = nil
        return (waiter, delivery)
    }

    /// Deliveries of `tier` held here, not started yet.
    func held(_ tier: Tier) -> Int {
        guard let index = order.firstIndex(of: tier) else { return 0 }
        return state.withLock { $0.held[index].reduce(0) { $0 + $1.count } }
    }

    /// The first error a subscription ended with.
    var failure: (any Error)? { state.withLock { $0.failure } }

    /// One more subscription will ``fill(_:lane:from:)`` (one replacing another: counted
    /// before the old one ends, so the inbox never looks finished in between).
    func opened() {
        state.withLock { $0.open += 1 }
    }

    /// Reads `deliveries` (of `tier`'s `lane`) into the inbox until it ends (or fails).
    func fill(_ tier: Tier, lane: Int = 0, from deliveries: AMQPDeliveries) async {
        do {
            for try await delivery in deliveries { put(tier, lane: lane, delivery) }
            finish(nil)
        } catch {
            finish(error)
        }
    }

    func put(_ tier: Tier, lane: Int = 0, _ delivery: AMQPDelivery) {
        guard let index = order.firstIndex(of: tier) else { preconditionFailure("a delivery of a tier this inbox does not hold") }
        let handOut = state.withLock { state -> (CheckedContinuation<AMQPDelivery?, Never>, AMQPDelivery)? in
            state.held[index][lane].append(delivery)
            return Self.handOut(&state, order: order)
        }
        handOut.map { $0.0.resume(returning: $0.1) }
    }

    /// One subscription ended; with an error, the inbox ends at once (held deliveries stay
    /// unacked and go back to their queues with the connection).
    func finish(_ error: (any Error)?) {
        let (waiter, delivery) = state.withLock { state -> (CheckedContinuation<AMQPDelivery?, Never>?, AMQPDelivery?) in
            state.open -= 1
            if let error, state.failure == nil { state.failure = error }
            guard let waiter = state.waiter else { return (nil, nil) }
            if state.failure == nil, let delivery = state.pick(order: order) {
                state.waiter = nil
                return (waiter, delivery)
            }
            guard state.failure != nil || state.open == 0 else { return (nil, nil) }
            state.waiter = nil
            return (waiter, nil)
        }
        waiter?.resume(returning: delivery)
    }

    /// The next delivery to run, highest tier first, lanes in turn; nil once every subscription ended and
    /// nothing is held, or one failed.
    func next() async -> AMQPDelivery? {
        await withCheckedContinuation { (continuation: CheckedContinuation<AMQPDelivery?, Never>) in
            let answer = state.withLock { state -> AMQPDelivery?? in
                if state.failure != nil { return .some(nil) }
                if let delivery = state.pick(order: order) { return .some(delivery) }
                if state.open == 0 { return .some(nil) }
                state.waiter = continuation
                return .none
            }
            if case .some(let delivery) = answer { continuation.resume(returning: delivery) }
        }
    }
}
