import Foundation
import HTTPTypes
import Logging
@testable import WarrenAPI
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenResilience
import WarrenStore

/// The net under intake's checks: a value Postgres refuses (a parameter holding NUL, which the
/// Postgres layer will not send, or a data exception from the server) fails the same way on
/// every retry, so the answer is a 422, never a 503 with `Retry-After` inviting one.
@Suite struct StoreErrorTests {
    static func api() throws -> HTTPAPI {
        let logger = Logger(label: "warren.tests", factory: { _ in SwiftLogNoOpLogHandler() })
        let amqp = try AMQPConfiguration(url: "amqp://127.0.0.1", connectionName: "tests")
        let pool = PostgresPool(configuration: PostgresConfiguration(url: "postgresql://127.0.0.1:1/none", applicationName: "tests"),
                                logger: logger)
        return HTTPAPI(publisher: JobPublisher(configuration: amqp, logger: logger), pool: pool, tokenCacheTTL: .zero,
                       rateLimiter: SharedRateLimiter(store: RateBucketStore(pool: pool), logger: logger), knownTypes: [], maxBodyBytes: 1, logger: logger)
    }

    @Test func valuesPostgresRefusesAreA422AndOutagesA503() async throws {
        let api = try Self.api()
        let refused: [PostgresError] = [
            PostgresError(.invalidParameter, function: "PQexecParams", message: "parameter $4 holds a NUL byte"),
            PostgresError(.server, function: "PQexecParams", message: "unsupported Unicode escape sequence", sqlState: "22P05"),
        ]
        for error in refused {
            let answer = api.storeError(error, message: "retry later")
            #expect(answer.status.code == 422, "\(error)")
            #expect(answer.code == "invalid_value" && answer.retryAfter == nil, "\(error)")
        }
        let outages: [any Error] = [
            PostgresError(.connectionFailed, function: "PQconnectdb", message: "refused"),
            PostgresError(.server, function: "PQexecParams", message: "terminating connection", sqlState: "57P01"),
            CancellationError(),
        ]
        for error in outages {
            let answer = api.storeError(error, message: "retry later")
            #expect(answer.status.code == 503 && answer.code == "database_unavailable" && answer.retryAfter == 2, "\(error)")
        }
        // Through the helper every route uses.
        do {
            let _: Int = try await api.database { throw refused[0] }
            Issue.record("no error")
        } catch {
            #expect(error.status.code == 422)
        }
    }
}
