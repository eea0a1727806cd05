import Foundation
import Testing

/// A 3-node RabbitMQ cluster of one test's own, run with `infra/local/cluster` on ports and
/// in a state directory of its own (`.state/clustertest-*`), so nodes can be killed and
/// booted again while the shared broker serves the other tests.
struct OwnCluster: Sendable {
    let state: URL
    /// Node N (1-3) serves AMQP on `base + N - 1` and management on `base + 10000 + N - 1`.
    let base: Int

    func amqpPort(_ node: Int) -> Int { base + node - 1 }
    func managementURL(_ node: Int) -> String { "http://127.0.0.1:\(base + 10_000 + node - 1)" }
    func nodeName(_ node: Int) -> String { "warren-cluster-\(base)-\(node)@localhost" }

    /// A `WARREN_AMQP_URL` listing the nodes in `order` (clients try them in turn).
    func url(_ order: [Int] = [1, 2, 3], query: String = "") -> String {
        order.map { "amqp://guest:guest@127.0.0.1:\(amqpPort($0))/%2f\(query)" }.joined(separator: ",")
    }

    static func withCluster<T: Sendable>(_ body: (OwnCluster) async throws -> T) async throws -> T {
        let stateRoot = Products.repositoryRoot.appendingPathComponent(".state")
        try FileManager.default.createDirectory(at: stateRoot, withIntermediateDirectories: true)
        let state = stateRoot.appendingPathComponent("clustertest-\(UUID().uuidString.prefix(8).lowercased())")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        var base = 0
        for _ in 0..<200 {
            let candidate = try LocalScript.freeNodePort(span: 3)
            if candidate + 10_002 < 65_536, (0..<3).allSatisfy({ LocalScript.isFree(candidate + 10_000 + $0) }) {
                base = candidate
                break
            }
        }
        guard base != 0 else { throw POSIXError(.EADDRNOTAVAIL) }
        let cluster = OwnCluster(state: state, base: base)
        do {
            try await cluster.run("start")
            let value = try await body(cluster)
            _ = try? await cluster.run("stop")
            try? FileManager.default.removeItem(at: state)
            return value
        } catch {
            _ = try? await cluster.run("stop")
            try? FileManager.default.removeItem(at: state)
            throw error
        }
    }

    /// SIGKILLs node N; returns once its AMQP port is closed.
    func kill(_ node: Int) async throws { try await run("kill", String(node)) }

    /// Boots node N again (it rejoins the cluster with its data).
    func restart(_ node: Int) async throws { try await run("restart", String(node)) }

    /// The node leading quorum queue `queue` (in vhost `/`).
    func leader(of queue: String) async throws -> Int {
        let text = try await run("leader", queue)
        guard let node = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            Issue.record("infra/local/cluster leader printed '\(text)'")
            throw CancellationError()
        }
        return node
    }

    /// The node (1-3) serving the connection the client named `clientName`, from the
    /// management API of any running node.
    func node(ofConnection clientName: String, asking nodes: [Int] = [1, 2, 3]) async throws -> Int? {
        for asked in nodes {
            guard let (_, data) = try? await Management.request("GET", "/api/connections", base: managementURL(asked)),
                  let list = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] else { continue }
            for connection in list {
                let properties = connection["client_properties"] as? [String: Any]
                guard properties?["connection_name"] as? String == clientName, let name = connection["node"] as? String else { continue }
                return (1...3).first { nodeName($0) == name }
            }
        }
        return nil
    }

    @discardableResult
    private func run(_ arguments: String...) async throws -> String {
        let script = Products.repositoryRoot.appendingPathComponent("infra/local/cluster").path
        return try await LocalScript.run(#""$1" "${@:2}" >"$WARREN_SCRIPT_OUT""#, [script] + arguments,
                                         log: state.appendingPathComponent("script.log"),
                                         environment: ["WARREN_CLUSTER_AMQP_PORT": String(base), "WARREN_CLUSTER_STATE": state.path])
    }
}
