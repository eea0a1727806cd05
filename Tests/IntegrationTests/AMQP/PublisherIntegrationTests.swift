import Foundation
import Synchronization
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenNotify

@Suite(.enabled(if: TestServices.enabled), .serialized)
struct PublisherIntegrationTests {
    /// A throwaway quorum queue on the default exchange, deleted afterwards.
    func withScratchQueue<T: Sendable>(_ connection: AMQPConnection, arguments: AMQPTable = [:],
                                       _ body: (String) async throws -> T) async throws -> T {
        let name = "warren.test.\(UUID().uuidString.lowercased())"
        var queueArguments = arguments
        queueArguments["x-queue-type"] = .string("quorum")
        let declared = queueArguments
        try await connection.withControl { control in _ = try control.declareQueue(name, arguments: declared) }
        do {
            let value = try await body(name)
            _ = try? await connection.withControl { control in try control.deleteQueue(name) }
            return value
        } catch {
            _ = try? await connection.withControl { control in try control.deleteQueue(name) }
            throw error
        }
    }

    func depth(_ connection: AMQPConnection, _ queue: String) async throws -> Int {
        Int(try await connection.withControl { control in try control.queueDepth(queue).messages })
    }

    @Test func publishedJobIsConfirmedAndReadBackWithItsProperties() async throws {
        try await TestServices.withConnection("test publish-read-back") { connection in
            try await connection.withControl { control in try control.purgeQueue(Tier.premium.queueName(tenant: "acme")) }
            var job = JobEnvelope(type: "email.welcome", tier: .premium, payload: Array(#"{"to":"a@b.c","note":"it's \"quoted\""}"#.utf8),
                                  tenant: "acme", idempotencyKey: "welcome-1", correlationID: "req-42")
            job.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            try await connection.publish(job.outgoingMessage)
            #expect(try await depth(connection, Tier.premium.queueName(tenant: "acme")) == 1)

            let deliveries = try await connection.consume(queue: Tier.premium.queueName(tenant: "acme"), prefetch: 10)
            var iterator = deliveries.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            #expect(delivery.properties.messageID == job.id.uuidString.lowercased())
            #expect(delivery.properties.type == "email.welcome")
            #expect(delivery.properties.contentType == "application/json")
            #expect(delivery.properties.deliveryMode == 2)
            #expect(delivery.properties.headers["x-warren-tier"] == .string("premium"))
            #expect(delivery.routingKey == Tier.premium.routingKey(lane: Tier.lane(tenant: "acme")))
            #expect(!delivery.redelivered)
            let decoded = try JobEnvelope(properties: delivery.properties, body: delivery.body)
            #expect(decoded == job)
            try await connection.ack(delivery)
            try await connection.cancel(consumerTag: deliveries.consumerTag)
            try await TestServices.waitUntil("queue drained after ack") {
                try await depth(connection, Tier.premium.queueName(tenant: "acme")) == 0
            }
        }
    }

    @Test func tierQueuesAreQuorumQueues() async throws {
        try await TestServices.withConnection("test quorum") { connection in
            // Re-declaring with the quorum arguments succeeds only if the broker agrees.
            for tier in Tier.allCases {
                let queue = Topology.standard.queues.first { $0.name == tier.queueName }!
                try await connection.withControl { control in _ = try control.declareQueue(queue.name, arguments: queue.arguments) }
            }
            // ...and a classic declaration of the same name is refused, leaving the connection usable.
            let error = await #expect(throws: AMQPError.self) {
                try await connection.withControl { control in _ = try control.declareQueue(Tier.free.queueName) }
            }
            #expect(error?.replyCode == 406)
            _ = try await depth(connection, Tier.free.queueName(tenant: "acme"))
        }
    }

    @Test func fullQueueRejectsPublishesOneByOne() async throws {
        try await TestServices.withConnection("test reject-publish") { connection in
            try await withScratchQueue(connection, arguments: ["x-max-length": .int(5), "x-overflow": .string("reject-publish")]) { queue in
                let messages = (0..<20).map { index in
                    var properties = AMQPProperties()
                    properties.messageID = "m\(index)"
                    return AMQPOutgoingMessage(exchange: "", routingKey: queue, properties: properties, body: Array("\(index)".utf8))
                }
                var results: [Result<Void, AMQPError>] = []
                for message in messages { results.append(contentsOf: await connection.publish([message])) }
                let accepted = results.filter { if case .success = $0 { true } else { false } }.count
                let nacked = results.filter { if case .failure(let error) = $0 { error.code == .nacked } else { false } }.count
                #expect(accepted + nacked == messages.count, "every publish settles as ack or nack")
                #expect(accepted >= 5)
                #expect(nacked > 0)
                let inQueue = try await depth(connection, queue)
                #expect(inQueue == accepted, "every confirmed message is in the queue")
            }
        }
    }

    @Test func unroutableMandatoryPublishIsAnError() async throws {
        try await TestServices.withConnection("test unroutable") { connection in
            var properties = AMQPProperties()
            properties.messageID = UUID().uuidString
            let message = AMQPOutgoingMessage(exchange: "warren.jobs", routingKey: "no-such-tier", properties: properties, body: [])
            let error = await #expect(throws: AMQPError.self) { try await connection.publish(message) }
            #expect(error?.code == .unroutable)
            #expect(error?.replyCode == 312)
        }
    }

    @Test func closedConnectionFailsEveryUnconfirmedPublishAndReconnects() async throws {
        let name = "test kill-\(UUID().uuidString.prefix(8))"
        try await TestServices.withConnection(name) { connection in
            try await withScratchQueue(connection) { queue in
                let body = [UInt8](repeating: 0x61, count: 512)
                let messages = (0..<200).map { index in
                    var properties = AMQPProperties()
                    properties.messageID = "\(index)"
                    return AMQPOutgoingMessage(exchange: "", routingKey: queue, properties: properties, body: body)
                }
                // Keep publishing until a close catches publishes in flight (bounded by a deadline).
                let caught = Flag()
                let publishing = Task {
                    var results: [Result<Void, AMQPError>] = []
                    let deadline = ContinuousClock.now + .seconds(60)
                    while ContinuousClock.now < deadline {
                        let batch = await connection.publish(messages)
                        results += batch
                        if batch.contains(where: { if case .failure = $0 { true } else { false } }) {
                            caught.set()
                            break
                        }
                    }
                    return results
                }
                // A close that lands between two bursts fails nothing (the next burst goes out on
                // the new connection), so close again until one catches publishes in flight.
                for _ in 0..<20 where !caught.isSet {
                    try await TestServices.waitUntil("the broker lists the connection") {
                        try await Management.connections(named: name).count == 1 || caught.isSet
                    }
                    if caught.isSet { break }
                    _ = try await Management.closeConnections(named: name)
                    _ = try await TestServices.holds(within: .seconds(3)) { caught.isSet }
                }
                let results = await publishing.value
                let confirmed = results.filter { if case .success = $0 { true } else { false } }.count
                let failures = results.compactMap { if case .failure(let error) = $0 { error } else { nil } }
                #expect(!failures.isEmpty, "the close must have caught publishes in flight")
                #expect(failures.allSatisfy { $0.code == .connectionLost || $0.code == .notConnected || $0.code == .serverClosed },
                        "\(Set(failures.map(\.code.description)))")
                // After reconnecting: nothing confirmed was lost.
                try await TestServices.waitUntil("reconnected") { connection.isConnected }
                let inQueue = try await depth(connection, queue)
                #expect(inQueue >= confirmed, "confirmed \(confirmed), in queue \(inQueue)")
                #expect(inQueue <= confirmed + failures.count)
                // ...and the connection works again.
                try await connection.publish(messages[0])
            }
        }
    }

    @Test func unackedDeliveriesComeBackRedeliveredAfterAReconnect() async throws {
        let name = "test redeliver-\(UUID().uuidString.prefix(8))"
        try await TestServices.withConnection(name) { connection in
            try await withScratchQueue(connection) { queue in
                try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: queue, body: Array("x".utf8)))
                let deliveries = try await connection.consume(queue: queue, prefetch: 5)
                var iterator = deliveries.makeAsyncIterator()
                let first = try #require(try await iterator.next())
                #expect(!first.redelivered)
                try await TestServices.waitUntil("the broker lists the connection") {
                    try await Management.connections(named: name).count == 1
                }
                try #require(try await Management.closeConnections(named: name) == 1)
                // The consumer is re-subscribed after the reconnect and the message comes back.
                let second = try #require(try await iterator.next())
                #expect(second.redelivered)
                #expect(second.body == first.body)
                // The old delivery's tag died with its connection: acking it is refused, not sent.
                await #expect(throws: AMQPError.self) { try await connection.ack(first) }
                try await connection.ack(second)
                try await TestServices.waitUntil("acked message leaves the queue") {
                    try await connection.withControl { control in try control.queueDepth(queue).messages } == 0
                }
            }
        }
    }

    @Test func connectingToNothingFailsClearly() async throws {
        var configuration = try AMQPConfiguration(url: "amqp://guest:guest@127.0.0.1:1/%2f", connectionName: "nowhere")
        configuration.connectTimeout = .seconds(2)
        let connection = AMQPConnection(configuration: configuration, logger: TestServices.logger)
        let error = await #expect(throws: AMQPError.self) { try await connection.connect() }
        #expect(error?.code == .connectionFailed)
        await #expect(throws: AMQPError.self) { try await connection.publish(AMQPOutgoingMessage(exchange: "", routingKey: "x", body: [])) }
    }

    @Test func wrongPasswordIsAConnectionFailure() async throws {
        var endpoint = try AMQPEndpoint.list(TestServices.amqpURL)[0]
        endpoint.password = "wrong"
        let connection = AMQPConnection(configuration: AMQPConfiguration(endpoints: [endpoint], connectionName: "badpw"), logger: TestServices.logger)
        let error = await #expect(throws: AMQPError.self) { try await connection.connect() }
        #expect(error?.code == .connectionFailed)
    }
}

/// A flag one task sets and another reads.
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}
