import Logging
import Synchronization

/// A small pool of ``PostgresConnection``s with a size limit.
///
/// Borrow with ``withConnection(_:)`` or ``withTransaction(_:)``; a connection that failed at
/// the connection level is closed instead of returned, and a new one is opened on demand.
package final class PostgresPool: Sendable {
    private struct State {
        var idle: [PostgresConnection] = []
        var open = 0
        var waiters: [CheckedContinuation<PostgresConnection?, Never>] = []
        var closed = false
    }

    package let configuration: PostgresConfiguration
    package let logger: Logger
    private let state = Mutex(State())

    package init(configuration: PostgresConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Lends a connection to `body` for its duration.
    @discardableResult
    package func withConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let connection = try await acquire()
        do {
            let value = try await body(connection)
            release(connection, broken: false)
            return value
        } catch {
            release(connection, broken: (error as? PostgresError)?.isConnectionLevel ?? false)
            throw error
        }
    }

    /// Runs `body` in a transaction: COMMIT when it returns, ROLLBACK when it throws.
    @discardableResult
    package func withTransaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await withConnection { connection in
            try await connection.execute("BEGIN")
            do {
                let value = try await body(connection)
                try await connection.execute("COMMIT")
                return value
            } catch {
                try? await connection.execute("ROLLBACK")
                throw error
            }
        }
    }

    /// One statement on any connection.
    @discardableResult
    package func query(_ sql: String, _ parameters: [any PostgresEncodable] = []) async throws -> PostgresResult {
        try await withConnection { try await $0.query(sql, parameters) }
    }

    /// Runs `body` with this pool, then closes it whether `body` returned or threw.
    package func closing<T: Sendable>(after body: (PostgresPool) async throws -> T) async throws -> T {
        do {
            let value = try await body(self)
            await close()
            return value
        } catch {
            await close()
            throw error
        }
    }

    /// Closes idle connections and refuses new borrowers; borrowed ones close when returned.
    package func close() async {
        let (idle, waiters) = state.withLock { state in
            state.closed = true
            defer {
                state.idle.removeAll()
                state.waiters.removeAll()
            }
            state.open -= state.idle.count
            return (state.idle, state.waiters)
        }
        for waiter in waiters { waiter.resume(returning: nil) }
        for connection in idle { await connection.close() }
    }

    private enum Acquire {
        case use(PostgresConnection)
        case open
        case wait
        case closed
    }

    private func acquire() async throws -> PostgresConnection {
        while true {
            let action = state.withLock { state -> Acquire in
                if state.closed { return .closed }
                if let connection = state.idle.popLast() { return .use(connection) }
                if state.open < max(1, configuration.maxConnections) {
                    state.open += 1
                    return .open
                }
                return .wait
            }
            switch action {
            case .use(let connection):
                return connection
            case .closed:
                throw PostgresError(.closed, function: "PostgresPool.acquire", message: "pool is closed")
            case .open:
                do {
                    return try await PostgresConnection.connect(configuration, logger: logger)
                } catch {
                    wakeOneWaiter(afterClosingSlot: true)
                    throw error
                }
            case .wait:
                let handedOver = await withCheckedContinuation { (continuation: CheckedContinuation<PostgresConnection?, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        if state.closed { return true }
                        state.waiters.append(continuation)
                        return false
                    }
                    if resumeNow { continuation.resume(returning: nil) }
                }
                if let handedOver { return handedOver }
                // nil: a slot opened up (or the pool closed); loop and look again.
            }
        }
    }

    private func release(_ connection: PostgresConnection, broken: Bool) {
        if broken {
            logger.warning("Postgres connection dropped from the pool after a connection-level error")
            Task { await connection.close() }
            wakeOneWaiter(afterClosingSlot: true)
            return
        }
        let waiter = state.withLock { state -> CheckedContinuation<PostgresConnection?, Never>? in
            if state.closed {
                state.open -= 1
                return nil
            }
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.idle.append(connection)
            return nil
        }
        if let waiter {
            waiter.resume(returning: connection)
        } else if state.withLock({ $0.closed }) {
            Task { await connection.close() }
        }
    }

    private func wakeOneWaiter(afterClosingSlot: Bool) {
        let waiter = state.withLock { state -> CheckedContinuation<PostgresConnection?, Never>? in
            if afterClosingSlot { state.open -= 1 }
            return state.waiters.isEmpty ? nil : state.waiters.removeFirst()
        }
        waiter?.resume(returning: nil)
    }
}
