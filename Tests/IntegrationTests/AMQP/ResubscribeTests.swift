import Foundation
import Synchronization
import Testing
import WarrenAMQP

/// Replacing a consumer by one with another prefetch (what adaptive admission does): consume
/// again on a fresh channel, then cancel the old consumer. Nothing may be dropped on the old
/// stream or left unacked on its channel, nothing acked may come back, and retired channels
/// must be reused.
@Suite(.enabled(if: TestServices.enabled))
struct ResubscribeTests {
    /// Deliveries seen, by body.
    final class Seen: Sendable {
        let counts = Mutex<[String: Int]>([:])
        /// Streams that ended.
        let ended = Atomic(0)
        /// Deliveries flagged redelivered (requeued by the broker).
        let redelivered = Atomic(0)
        var count: Int { counts.withLock { $0.count } }
    }

    /// Reads `deliveries` until the stream ends, acking `batch` at a time (one call, with
    /// `multiple` where the tags allow, as the result writer does) and counting each by its body.
    static func read(_ deliveries: AMQPDeliveries, on connection: AMQPConnection, into seen: Seen, batch: Int) async throws {
        var held: [AMQPDelivery] = []
        func ack() async throws {
            guard !held.isEmpty else { return }
            let stale = try await connection.ack(held)
            #expect(stale.isEmpty, "acks refused as stale: \(stale.count)")
            for delivery in held {
                if delivery.redelivered { seen.redelivered.add(1, ordering: .relaxed) }
                seen.counts.withLock { $0[String(decoding: delivery.body, as: UTF8.self), default: 0] += 1 }
            }
            held.removeAll()
        }
        for try await delivery in deliveries {
            held.append(delivery)
            if held.count >= batch { try await ack() }
        }
        try await ack()
    }

    @Test func consumersReplacedWhileMessagesFlowLoseNothingAndLeaveNothingUnacked() async throws {
        try await TestServices.withConnection("test resubscribe") { connection in
            try await PublisherIntegrationTests().withScratchQueue(connection) { queue in
                let total = 3_000
                let seen = Seen()
                var current = try await connection.consume(queue: queue, prefetch: 100)
                var readers: [Task<Void, any Error>] = []
                func start(_ deliveries: AMQPDeliveries, batch: Int = 1) -> Task<Void, any Error> {
                    Task {
                        try await Self.read(deliveries, on: connection, into: seen, batch: batch)
                        seen.ended.add(1, ordering: .relaxed)
                    }
                }
                readers.append(start(current))
                let publisher = Task {
                    for chunk in stride(from: 0, to: total, by: 250) {
                        let messages = (chunk..<min(total, chunk + 250)).map {
                            AMQPOutgoingMessage(exchange: "", routingKey: queue, body: Array("m\($0)".utf8))
                        }
                        for result in await connection.publish(messages) { try result.get() }
                    }
                }
                // Replace the consumer every ~100 deliveries while the publisher and the readers run.
                var swaps = 0
                while seen.count < total - 200, swaps < 40 {
                    let before = seen.count
                    try await TestServices.waitUntil(timeout: .seconds(30), "more deliveries") {
                        seen.count >= min(total - 200, before + 100)
                    }
                    // Prefetch 7 acked one by one, prefetch 100 acked five at a time, on channels
                    // that are reused as the old consumers retire.
                    let next = try await connection.consume(queue: queue, prefetch: swaps % 2 == 0 ? 7 : 100)
                    readers.append(start(next, batch: swaps % 2 == 0 ? 1 : 5))
                    try await connection.cancel(consumerTag: current.consumerTag)
                    current = next
                    swaps += 1
                }
                if swaps % 2 == 0 {
                    // The last reader acks in fives: one acking each, so none waits for a fifth.
                    let next = try await connection.consume(queue: queue, prefetch: 7)
                    readers.append(start(next))
                    try await connection.cancel(consumerTag: current.consumerTag)
                    current = next
                    swaps += 1
                }
                try await publisher.value
                try await TestServices.waitUntil(timeout: .seconds(60), "every message delivered") {
                    seen.count == total
                }
                #expect(swaps >= 10, "the test replaced the consumer \(swaps) times")
                let counts = seen.counts.withLock { $0 }
                #expect(counts.values.allSatisfy { $0 == 1 },
                        "delivered twice: \(counts.filter { $0.value > 1 }.keys.sorted().prefix(10)); redelivered: \(seen.redelivered.load(ordering: .relaxed))")
                // Every replaced consumer's stream ended (its reader returned).
                try await TestServices.waitUntil(timeout: .seconds(10), "the replaced consumers' streams end") {
                    seen.ended.load(ordering: .relaxed) == swaps
                }
                try await connection.cancel(consumerTag: current.consumerTag)
                for reader in readers { try await reader.value }
                #expect(try await connection.withControl { control in try control.queueDepth(queue).messages } == 0)
            }
        }
    }

    @Test func retiredChannelsAreReusedSoReplacingAConsumerNeverRunsOutOfThem() async throws {
        try await TestServices.withConnection("test channel reuse") { connection in
            try await PublisherIntegrationTests().withScratchQueue(connection) { queue in
                // More replacements than the broker's channel_max (2047): without reusing the
                // old channels, channel.open fails partway.
                var current = try await connection.consume(queue: queue, prefetch: 10)
                for round in 0..<2_100 {
                    let next = try await connection.consume(queue: queue, prefetch: UInt16(1 + round % 10))
                    try await connection.cancel(consumerTag: current.consumerTag)
                    current = next
                }
                // The last one still works: a message published now reaches it.
                try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue, body: Array("last".utf8)))
                var iterator = current.makeAsyncIterator()
                let delivery = try #require(try await iterator.next())
                #expect(delivery.body == Array("last".utf8))
                try await connection.ack(delivery)
                try await connection.cancel(consumerTag: current.consumerTag)
            }
        }
    }
}
