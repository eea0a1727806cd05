import WarrenAMQP
import WarrenPostgres

/// The usual readiness check of a service's `/readyz` (see `AdminServer`).
package enum Readiness {
    /// `broker` when `connection` is not connected, `database` when
    /// `pool` does not answer `SELECT 1`.
    package static func unreachable(broker connection: AMQPConnection?, database pool: PostgresPool) async -> [String] {
        var down: [String] = []
        if let connection, !connection.isConnected { down.append("broker") }
        do {
            _ = try await pool.query("SELECT 1")
        } catch {
            down.append("database")
        }
        return down
    }
}
