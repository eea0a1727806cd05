import Foundation
import Testing
import WarrenJobs

/// A RabbitMQ node of one test's own, started, killed and started again with the project's
/// script (`infra/local/lib.sh`: its own node name, data directory under `.state/`, loopback
/// ports and epmd), so a test can crash the broker (SIGKILL) or raise its memory alarm without
/// touching the node the other tests share. The definitions are loaded: vhost `/` has the
/// standard topology.
struct OwnRabbitMQ: Sendable {
    let state: URL
    let amqpPort: Int
    let managementPort: Int

    var node: String { "warren-own-\(amqpPort)@localhost" }
    /// `WARREN_AMQP_URL` for it (vhost `/`).
    var url: String { "amqp://guest:guest@127.0.0.1:\(amqpPort)/%2f" }
    var managementURL: String { "http://127.0.0.1:\(managementPort)" }

    static func withNode<T: Sendable>(_ body: (OwnRabbitMQ) async throws -> T) async throws -> T {
        let stateRoot = Products.repositoryRoot.appendingPathComponent(".state")
        try FileManager.default.createDirectory(at: stateRoot, withIntermediateDirectories: true)
        let state = stateRoot.appendingPathComponent("rmqtest-\(UUID().uuidString.prefix(8).lowercased())")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        let node = OwnRabbitMQ(state: state, amqpPort: try LocalScript.freeNodePort(), managementPort: try OwnPostgres.freePort())
        do {
            try await node.start()
            let value = try await body(node)
            try? await node.stop()
            try? FileManager.default.removeItem(at: state)
            return value
        } catch {
            try? await node.stop()
            try? FileManager.default.removeItem(at: state)
            throw error
        }
    }

    /// Boots the node (the first time: creates it and loads the definitions) and waits until
    /// it serves AMQP with the topology in place.
    func start() async throws {
        try await script(#"warren_start_rabbitmq "$1" "$2" "$3" "$4""#)
    }

    /// SIGKILLs the node's VM (a crash: no connection.close to anyone); returns once its AMQP
    /// port is closed.
    func kill() async throws {
        try await script(#"warren_select_rabbitmq "$1" "$2" "$3" "$4"; warren_kill_rabbitmq"#)
    }

    func stop() async throws {
        try await script(#"warren_select_rabbitmq "$1" "$2" "$3" "$4"; warren_stop_rabbitmq"#)
    }

    /// `rabbitmqctl ARGUMENTS...` on this node; its standard output.
    @discardableResult
    func rabbitmqctl(_ arguments: [String]) async throws -> String {
        try await script(#"warren_select_rabbitmq "$1" "$2" "$3" "$4"; shift 4; "$WARREN_RABBITMQ_STATE/bin/rabbitmqctl" "$@" >"$WARREN_SCRIPT_OUT""#,
                         extra: arguments)
    }

    /// Whether the node reports its memory alarm (management API).
    func memoryAlarm() async throws -> Bool {
        let (_, data) = try await Management.request("GET", "/api/nodes", base: managementURL)
        let nodes = (try JSONSerialization.jsonObject(with: data) as? [[String: Any]]) ?? []
        return nodes.contains { $0["mem_alarm"] as? Bool == true }
    }

    /// The broker's view of the connections named `clientName`: their `state` (running,
    /// blocking, blocked...).
    func connectionStates(named clientName: String) async throws -> [String] {
        let (_, data) = try await Management.request("GET", "/api/connections", base: managementURL)
        let list = (try JSONSerialization.jsonObject(with: data) as? [[String: Any]]) ?? []
        return list.compactMap { connection in
            let properties = connection["client_properties"] as? [String: Any]
            guard properties?["connection_name"] as? String == clientName else { return nil }
            return connection["state"] as? String
        }
    }

    /// Messages on `queue` in vhost `/` (ready and unacknowledged), from the management API
    /// (which lags by its stats interval, a few seconds).
    /// Messages in `tier`'s queues, every lane summed; nil if one cannot be read.
    func messages(_ tier: Tier) async throws -> Int? {
        var total = 0
        for queue in tier.queueNames {
            guard let count = try await messages(queue) else { return nil }
            total += count
        }
        return total
    }

    func messages(_ queue: String) async throws -> Int? {
        let (status, data) = try await Management.request("GET", "/api/queues/%2F/\(queue)", base: managementURL)
        guard status == 200 else { return nil }
        return (try JSONSerialization.jsonObject(with: data) as? [String: Any])?["messages"] as? Int
    }

    @discardableResult
    private func script(_ body: String, extra: [String] = []) async throws -> String {
        try await LocalScript.run(body, [state.path, node, String(amqpPort), String(managementPort)] + extra,
                                  log: state.appendingPathComponent("script.log"))
    }
}
