import NIOCore
import Synchronization

/// The deliveries an overflow consumer holds from several tier queues, handed out highest tier
/// first. ``next()`` is asked only once a job slot is free and answers the oldest delivery of
/// the highest tier that has one; but while a higher tier's queue has a backlog (``backlog(_:)``,
/// from the broker's ready counts) nothing of a lower tier is handed out, even if held here:
/// the slot waits for the higher tier's delivery. So the pool never starts free work while
/// enterprise work waits in its queue (as of the last count, every 100 ms). One taker (the
/// consumer's dispatch loop); many putters (one reader per subscription).
final class TierInbox: Sendable {
    private struct State {
        var queues: [Tier: CircularBuffer<AMQPDelivery>] = [:]
        var waiter: CheckedContinuation<AMQPDelivery?, Never>?
        var open: Int
        var failure: (any Error)?
        /// Tiers whose queue had ready messages at the last count.
        var backlogged: Set<Tier>

        /// The delivery to start now, if any. Once every subscription ended, whatever is held.
        mutating func pick(order: [Tier]) -> AMQPDelivery? {
            for tier in order {
                if let delivery = queues[tier]?.popFirst() { return delivery }
                if open > 0, backlogged.contains(tier) { return nil }
            }
            return nil
        }
    }

    private let order: [Tier]
    private let state: Mutex<State>

    /// `tiers` in priority order, highest first; one subscription each.
    /// Until the first ``backlog(_:)``, every tier counts as backlogged.
    init(tiers: [Tier]) {
        order = tiers
        state = Mutex(State(open: tiers.count, backlogged: Set(tiers)))
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

    /// The first error a subscription ended with.
    var failure: (any Error)? { state.withLock { $0.failure } }

    /// Reads `deliveries` into the inbox until it ends (or fails).
    func fill(_ tier: Tier, from deliveries: AMQPDeliveries) async {
        do {
            for try await delivery in deliveries { put(tier, delivery) }
            finish(nil)
        } catch {
            finish(error)
        }
    }

    func put(_ tier: Tier, _ delivery: AMQPDelivery) {
        let handOut = state.withLock { state -> (CheckedContinuation<AMQPDelivery?, Never>, AMQPDelivery)? in
            state.queues[tier, default: CircularBuffer()].append(delivery)
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

    /// The next delivery to run, highest tier first; nil once every subscription ended and
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
