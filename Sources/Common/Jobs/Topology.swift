import WarrenAMQP
import WarrenSupport

/// Warren's RabbitMQ topology: exchanges, quorum queues and bindings.
///
/// Every service declares it at start (idempotent); `infra/rabbitmq/definitions.json` holds
/// the same for the broker to preload, and a test keeps the two equal. Queue arguments cannot
/// change after declaration: change caps and limits by policy, or here and in the file together.
package struct Topology: Sendable, Equatable {
    package struct Exchange: Sendable, Equatable {
        package var name: String
        package var type: String
    }

    package struct Queue: Sendable, Equatable {
        package var name: String
        package var arguments: AMQPTable
    }

    package struct Binding: Sendable, Equatable {
        package var exchange: String
        package var queue: String
        package var routingKey: String
        package var arguments: AMQPTable
    }

    /// One retry delay queue: `warren.retry.<label>` with a fixed TTL.
    package struct RetryDelay: Sendable, Equatable {
        package var label: String
        package var milliseconds: Int64
        package var queueName: String { "warren.retry.\(label)" }
    }

    package static let jobsExchange = "warren.jobs"
    package static let retryExchange = "warren.retry"
    package static let deadExchange = "warren.dead"
    package static let controlExchange = "warren.control"
    package static let deadQueue = "warren.jobs.dead"

    /// Poison guard: a message redelivered this many times (crashing consumers) is dead-lettered.
    package static let deliveryLimit: Int64 = 10

    /// Length caps per tier lane (each of a tier's ``Tier/lanes`` queues has its tier's cap):
    /// past them the broker nacks publishes (reject-publish), so load is shed at the front
    /// door, free first.
    package static let queueCaps: [Tier: Int64] = [.enterprise: 1_000_000, .premium: 200_000, .free: 50_000]

    /// Retry delays. A message expires only at the head of a queue, so one queue per delay.
    package static let retryDelays: [RetryDelay] = [
        RetryDelay(label: "1s", milliseconds: 1_000),
        RetryDelay(label: "5s", milliseconds: 5_000),
        RetryDelay(label: "30s", milliseconds: 30_000),
        RetryDelay(label: "2m", milliseconds: 120_000),
        RetryDelay(label: "10m", milliseconds: 600_000),
        RetryDelay(label: "1h", milliseconds: 3_600_000),
    ]

    package var exchanges: [Exchange]
    package var queues: [Queue]
    package var bindings: [Binding]

    /// The standard topology.
    package static let standard: Topology = {
        var queues: [Queue] = []
        var bindings: [Binding] = []
        for tier in Tier.allCases {
            for lane in 0..<Tier.lanes {
                queues.append(Queue(name: tier.queueName(lane: lane), arguments: [
                    "x-queue-type": .string("quorum"),
                    "x-delivery-limit": .int(deliveryLimit),
                    "x-dead-letter-exchange": .string(deadExchange),
                    "x-dead-letter-strategy": .string("at-least-once"),
                    "x-max-length": .int(queueCaps[tier]!),
                    "x-overflow": .string("reject-publish"),
                ]))
                bindings.append(Binding(exchange: jobsExchange, queue: tier.queueName(lane: lane), routingKey: tier.routingKey(lane: lane),
                                        arguments: AMQPTable()))
            }
        }
        // A retried job is published to the headers exchange with its lane's routing key;
        // when its TTL expires it is dead-lettered to warren.jobs keeping that routing key.
        for delay in retryDelays {
            queues.append(Queue(name: delay.queueName, arguments: [
                "x-queue-type": .string("quorum"),
                "x-message-ttl": .int(delay.milliseconds),
                "x-dead-letter-exchange": .string(jobsExchange),
                "x-dead-letter-strategy": .string("at-least-once"),
                "x-overflow": .string("reject-publish"),
            ]))
            bindings.append(Binding(exchange: retryExchange, queue: delay.queueName, routingKey: "", arguments: [
                "x-match": .string("all"),
                JobEnvelope.Header.retryDelay: .string(delay.label),
            ]))
        }
        queues.append(Queue(name: deadQueue, arguments: ["x-queue-type": .string("quorum")]))
        bindings.append(Binding(exchange: deadExchange, queue: deadQueue, routingKey: "", arguments: AMQPTable()))
        return Topology(
            exchanges: [
                Exchange(name: jobsExchange, type: "direct"),
                Exchange(name: retryExchange, type: "headers"),
                Exchange(name: deadExchange, type: "fanout"),
                Exchange(name: controlExchange, type: "fanout"),
            ],
            queues: queues,
            bindings: bindings)
    }()

    /// Declares everything (idempotent). A PRECONDITION_FAILED here means the broker holds the
    /// same names with other arguments.
    package func declare(on control: AMQPControl) throws(AMQPError) {
        for exchange in exchanges { try control.declareExchange(exchange.name, type: exchange.type) }
        for queue in queues { try control.declareQueue(queue.name, arguments: queue.arguments) }
        for binding in bindings {
            try control.bindQueue(binding.queue, exchange: binding.exchange, routingKey: binding.routingKey, arguments: binding.arguments)
        }
        // Brokers set up before 2026-11-23 carry retry bindings keyed on `x-warren-retry-delay`,
        // which a headers exchange ignores (so they matched every retry): remove them.
        for delay in Self.retryDelays {
            try control.unbindQueue(delay.queueName, exchange: Self.retryExchange, routingKey: "",
                                    arguments: ["x-match": .string("all"), "x-warren-retry-delay": .string(delay.label)])
        }
    }
}

extension AMQPControl {
    /// Messages ready in `tier`'s queues, every lane summed (passive declares).
    package func readyCount(_ tier: Tier) throws(AMQPError) -> Int {
        var total = 0
        for queue in tier.queueNames { total += Int(try queueDepth(queue).messages) }
        return total
    }

    /// `tier`'s ready messages (every lane summed) and its consumers: the fewest any lane has
    /// (every consumer of a tier takes from all its lanes; 0 means some lane has none).
    package func readyAndConsumers(_ tier: Tier) throws(AMQPError) -> (ready: Int, consumers: Int) {
        var total = 0
        var fewest = Int.max
        for queue in tier.queueNames {
            let depth = try queueDepth(queue)
            total += Int(depth.messages)
            fewest = min(fewest, Int(depth.consumers))
        }
        return (total, fewest == .max ? 0 : fewest)
    }
}
