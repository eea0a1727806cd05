import Foundation
import Testing
@testable import WarrenAMQP
@testable import WarrenJobs
@testable import WarrenNotify

/// The topology services declare and the one the broker preloads must agree, or a service
/// start fails with PRECONDITION_FAILED.
@Suite struct TopologyTests {
    static let definitionsURL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("infra/rabbitmq/definitions.json")

    func definitions() throws -> [String: Any] {
        let data = try Data(contentsOf: Self.definitionsURL)
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// JSON numbers, strings and booleans as field values (what the broker turns them into).
    func fieldValue(_ json: Any) -> AMQPFieldValue? {
        // Topology arguments hold integers and strings only.
        if let number = json as? NSNumber { return .int(number.int64Value) }
        if let string = json as? String { return .string(string) }
        return nil
    }

    func table(_ json: Any?) throws -> [String: AMQPFieldValue] {
        let object = try #require(json as? [String: Any])
        return try object.mapValues { try #require(fieldValue($0)) }
    }

    @Test func exchangesMatch() throws {
        let exchanges = try #require(try definitions()["exchanges"] as? [[String: Any]])
        let fromFile = Set(exchanges.map { "\($0["name"]!) \($0["type"]!) durable=\($0["durable"]!) auto_delete=\($0["auto_delete"]!)" })
        let fromCode = Set(Topology.standard.exchanges.map { "\($0.name) \($0.type) durable=1 auto_delete=0" })
        #expect(fromFile == fromCode)
    }

    @Test func queuesMatch() throws {
        let queues = try #require(try definitions()["queues"] as? [[String: Any]])
        var fromFile: [String: [String: AMQPFieldValue]] = [:]
        for queue in queues {
            let name = try #require(queue["name"] as? String)
            #expect(queue["durable"] as? Bool == true, "\(name) must be durable")
            #expect(queue["auto_delete"] as? Bool == false, "\(name) must not auto-delete")
            fromFile[name] = try table(queue["arguments"])
        }
        let fromCode = Dictionary(uniqueKeysWithValues: Topology.standard.queues.map { ($0.name, $0.arguments.dictionary) })
        #expect(Set(fromFile.keys) == Set(fromCode.keys))
        for (name, arguments) in fromCode {
            #expect(fromFile[name] == arguments, "arguments of \(name)")
        }
    }

    @Test func bindingsMatch() throws {
        let bindings = try #require(try definitions()["bindings"] as? [[String: Any]])
        var fromFile: [String] = []
        for binding in bindings {
            let arguments = try table(binding["arguments"]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            fromFile.append("\(binding["source"]!) -> \(binding["destination"]!) [\(binding["routing_key"]!)] \(arguments)")
        }
        let fromCode = Topology.standard.bindings.map { binding in
            let arguments = binding.arguments.dictionary.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            return "\(binding.exchange) -> \(binding.queue) [\(binding.routingKey)] \(arguments)"
        }
        #expect(fromFile.sorted() == fromCode.sorted())
    }

    @Test func everyTierQueueIsQuorumWithGuards() {
        for tier in Tier.allCases {
            let queue = Topology.standard.queues.first { $0.name == tier.queueName }
            #expect(queue?.arguments["x-queue-type"] == .string("quorum"))
            #expect(queue?.arguments["x-overflow"] == .string("reject-publish"))
            #expect(queue?.arguments["x-delivery-limit"] != nil)
            #expect(queue?.arguments["x-dead-letter-exchange"] == .string("warren.dead"))
        }
        #expect(Topology.queueCaps[.free]! < Topology.queueCaps[.premium]!)
        #expect(Topology.queueCaps[.premium]! < Topology.queueCaps[.enterprise]!)
    }

    @Test func definitionsHaveUsersForLocalAndCompose() throws {
        let users = try #require(try definitions()["users"] as? [[String: Any]])
        #expect(Set(users.compactMap { $0["name"] as? String }) == ["guest", "warren"])
    }
}
