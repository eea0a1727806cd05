import Logging
import Synchronization
import WarrenPostgres

/// Scheduler leadership: a session-level Postgres advisory lock held on a dedicated
/// connection (with TCP keepalives, so a dead peer is noticed). The lock lives exactly as long
/// as that session: when the leader dies (even SIGKILL) or its connection drops, Postgres
/// releases it and a standby's next ``confirm()`` takes it.
///
/// The leader calls ``confirm()`` before every round of work; a round runs only when the
/// session answered, so a leader that can no longer reach its lock stops firing at once.
/// (Fire keys make a late overlap harmless anyway: they, not the lock, guarantee one job
/// per fire.)
package final class LeaderLock: Sendable {
    /// The key every Warren scheduler competes for.
    package static let schedulerKey: Int64 = 0x5741_5252_454E_0005

    private let configuration: PostgresConfiguration
    private let key: Int64
    private let logger: Logger
    private let held = Mutex<PostgresConnection?>(nil)
    /// A standby tries for the lock at most this often (each try opens a connection).
    private let attemptInterval: Duration
    private let lastAttempt = Mutex<ContinuousClock.Instant?>(nil)

    /// The key for the schedulers of one schema: Warren's tables in another schema (a test's,
    /// a second deployment's in the same database) have a leader of their own.
    package static func schedulerKey(schema: String?) -> Int64 { PostgresConfiguration.lockKey(schedulerKey, schema: schema) }

    package init(configuration: PostgresConfiguration, key: Int64? = nil, attemptInterval: Duration = .seconds(1), logger: Logger) {
        self.attemptInterval = attemptInterval
        var configuration = configuration
        configuration.statementTimeout = .seconds(5)
        self.configuration = configuration
        self.key = key ?? Self.schedulerKey(schema: configuration.searchPath)
        self.logger = logger
    }

    package var isLeader: Bool { held.withLock { $0 != nil } }

    /// True when this process holds the lock: confirmed on its session just now, or acquired
    /// now because it was free (a standby tries at most once per `attemptInterval`).
    package func confirm() async -> Bool {
        if let connection = held.withLock({ $0 }) {
            do {
                _ = try await connection.query("SELECT 1")
                return true
            } catch {
                logger.warning("leader lock session lost; no longer leader", metadata: ["error": "\(error)"])
                held.withLock { $0 = nil }
                await connection.close()
                return false
            }
        }
        let due = lastAttempt.withLock { last -> Bool in
            guard last.map({ ContinuousClock.now - $0 >= attemptInterval }) ?? true else { return false }
            last = .now
            return true
        }
        guard due else { return false }
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(configuration, logger: logger)
        } catch {
            logger.debug("cannot reach Postgres for the leader lock", metadata: ["error": "\(error)"])
            return false
        }
        do {
            if try await connection.query("SELECT pg_try_advisory_lock($1)", [key]).rows.first?.bool(0) == true {
                held.withLock { $0 = connection }
                logger.info("became leader", metadata: ["lock_key": "\(key)"])
                return true
            }
        } catch {
            logger.debug("leader lock attempt failed", metadata: ["error": "\(error)"])
        }
        await connection.close()
        return false
    }

    /// Gives the lock up (at shutdown), so a standby takes over without waiting.
    package func release() async {
        guard let connection = held.withLock({ state -> PostgresConnection? in
            defer { state = nil }
            return state
        }) else { return }
        _ = try? await connection.query("SELECT pg_advisory_unlock($1)", [key])
        await connection.close()
        logger.info("leadership released")
    }
}
