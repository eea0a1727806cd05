import Foundation
import Testing

/// A Postgres cluster of one test's own, started and stopped with the project's script
/// (`infra/local/lib.sh`: its own data directory under `.state/`, its own loopback port), so
/// a test can really stop the database under a consumer and start it again without touching
/// the one the other tests share.
struct OwnPostgres: Sendable {
    let state: URL
    let port: Int

    var url: String { "postgresql://warren:warren@127.0.0.1:\(port)/warren" }

    static func withCluster<T: Sendable>(_ body: (OwnPostgres) async throws -> T) async throws -> T {
        let stateRoot = Products.repositoryRoot.appendingPathComponent(".state")
        try FileManager.default.createDirectory(at: stateRoot, withIntermediateDirectories: true)
        let state = stateRoot.appendingPathComponent("pgtest-\(UUID().uuidString.prefix(8).lowercased())")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        let cluster = OwnPostgres(state: state, port: try freePort())
        do {
            try await cluster.start()
            let value = try await body(cluster)
            try? await cluster.stop()
            try? FileManager.default.removeItem(at: state)
            return value
        } catch {
            try? await cluster.stop()
            try? FileManager.default.removeItem(at: state)
            throw error
        }
    }

    /// Starts the cluster (creating it, the warren role and database the first time).
    func start() async throws {
        try await script(#"warren_start_postgres "$1" "$2""#)
    }

    /// Stops it (`pg_ctl stop -m fast`: sessions are terminated, new connections refused).
    func stop() async throws {
        try await script(#"WARREN_PG_BINDIR=$(_warren_pg_bindir); WARREN_PG_DATA="$1/pg"; _warren_stop_postgres_cluster"#)
    }

    private func script(_ body: String) async throws {
        try await LocalScript.run(body, [state.path, String(port)], log: state.appendingPathComponent("script.log"))
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
                guard bind(fd, pointer, length) == 0 else { return -1 }
                return getsockname(fd, pointer, &length)
            }
        }
        guard bound == 0 else { throw POSIXError(.EADDRNOTAVAIL) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
