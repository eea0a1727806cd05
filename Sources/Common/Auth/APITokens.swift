import Foundation
import Synchronization
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// What a bearer token allows.
package enum Scope: String, Sendable, CaseIterable {
    case jobsWrite = "jobs:write"
    case jobsRead = "jobs:read"
    case schedulesWrite = "schedules:write"
    case contactsWrite = "contacts:write"
    /// List the tenant's dead letters (`GET /v1/dead`).
    case deadRead = "dead:read"
    /// Replay or discard the tenant's dead letters.
    case deadWrite = "dead:write"
    /// With `dead:*`: every tenant's dead letters, and those of jobs that have no tenant. In the
    /// console: every tenant's jobs, batches, schedules and dead letters.
    case admin = "admin"
    /// Sign in to the web console (`/console`); its actions also need the scope of the API
    /// call they stand for (`jobs:write` to cancel, `dead:write` to replay, ...).
    case console = "console"
}

/// A token's record (never the token itself).
package struct APIToken: Sendable, Equatable {
    package var id: UUID
    package var prefix: String
    package var tenant: String
    package var tier: Tier
    package var scopes: Set<Scope>
    package var createdAt: Timestamp
    package var expiresAt: Timestamp?
    package var revokedAt: Timestamp?

    package func allows(_ scope: Scope) -> Bool { scopes.contains(scope) }
}

/// Why a presented token is refused.
package enum TokenRejection: Error, Sendable, Equatable {
    case unknown, expired, revoked
}

/// Creates, lists, revokes and checks API tokens in `api_tokens`. Tokens are 32 random bytes
/// (`wrn_` + base64url); only their SHA-256 (computed by Postgres) is stored.
package struct APITokenStore: Sendable {
    package let pool: PostgresPool

    package init(pool: PostgresPool) { self.pool = pool }

    /// Creates a token; returns its record and the token text, which is not stored.
    package func create(tenant: String, tier: Tier, scopes: Set<Scope>, expiresAt: Timestamp? = nil) async throws -> (APIToken, String) {
        let token = "wrn_" + Self.randomSecret()
        let id = JobID.make()
        let prefix = String(token.prefix(12))
        let rows = try await pool.query("""
            INSERT INTO api_tokens (id, prefix, token_hash, tenant, tier, scopes, expires_at)
            VALUES ($1, $2, sha256(convert_to($3, 'UTF8')), $4, $5, $6::text[], $7)
            RETURNING created_at
            """, [id, prefix, token, tenant, tier.rawValue, PostgresArray(scopes.map(\.rawValue).sorted()), expiresAt]).rows
        let createdAt = try rows.first?.timestamp(0) ?? .now()
        return (APIToken(id: id, prefix: prefix, tenant: tenant, tier: tier, scopes: scopes, createdAt: createdAt,
                         expiresAt: expiresAt, revokedAt: nil), token)
    }

    package func list() async throws -> [APIToken] {
        try await pool.query(Self.select + " ORDER BY created_at").rows.map(Self.token)
    }

    /// Revokes by id or prefix; returns how many tokens it revoked.
    @discardableResult
    package func revoke(_ idOrPrefix: String) async throws -> Int {
        let rows = try await pool.query("""
            UPDATE api_tokens SET revoked_at = now()
            WHERE revoked_at IS NULL AND (id::text = $1 OR prefix = $1)
            RETURNING id
            """, [idOrPrefix]).rows
        return rows.count
    }

    /// The token presented in a request, if it is known, not expired and not revoked.
    package func check(_ token: String, now: Timestamp = .now()) async throws -> Result<APIToken, TokenRejection> {
        let rows = try await pool.query(Self.select + " WHERE token_hash = sha256(convert_to($1, 'UTF8'))", [token]).rows
        guard let row = rows.first else { return .failure(.unknown) }
        let record = try Self.token(row)
        if record.revokedAt != nil { return .failure(.revoked) }
        if let expiresAt = record.expiresAt, expiresAt <= now { return .failure(.expired) }
        return .success(record)
    }

    /// 32 random bytes, base64url without padding: a token's secret part, a console session's
    /// cookie, a CSRF token.
    static func randomSecret() -> String {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8]()
        for _ in 0..<4 { withUnsafeBytes(of: generator.next() as UInt64) { bytes.append(contentsOf: $0) } }
        return Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static let select = """
        SELECT id, prefix, tenant, tier, array_to_string(scopes, ','), created_at, expires_at, revoked_at FROM api_tokens
        """

    static func token(_ row: PostgresRow) throws -> APIToken {
        let tierName = try row.string(3)
        guard let tier = Tier(rawValue: tierName) else {
            throw PostgresError(.decoding, function: "api_tokens.tier", message: "unknown tier '\(tierName)'")
        }
        let scopes = Set((row[4] ?? "").split(separator: ",").compactMap { Scope(rawValue: String($0)) })
        return APIToken(id: try row.uuid(0), prefix: try row.string(1), tenant: try row.string(2), tier: tier, scopes: scopes,
                        createdAt: try row.timestamp(5), expiresAt: row[6].flatMap(Timestamp.init(iso8601:)),
                        revokedAt: row[7].flatMap(Timestamp.init(iso8601:)))
    }
}

/// Valid tokens remembered for a few seconds, so a busy client does not cost a Postgres
/// round trip per request. Only successes are kept; a revoked token stops working within
/// `ttl` in every producer (`WARREN_TOKEN_CACHE_SECONDS`, default 2, 0 turns it off), and an
/// expiry is checked on every use.
package final class TokenCache: Sendable {
    private let store: APITokenStore
    private let ttl: Duration
    private let entries = Mutex<[String: (token: APIToken, until: ContinuousClock.Instant)]>([:])
    private static let maxEntries = 10_000

    package init(store: APITokenStore, ttl: Duration) {
        self.store = store
        self.ttl = ttl
    }

    package func check(_ token: String) async throws -> Result<APIToken, TokenRejection> {
        let now = ContinuousClock.now
        if ttl > .zero, let cached = entries.withLock({ $0[token] }), cached.until > now {
            if let expiresAt = cached.token.expiresAt, expiresAt <= .now() { return .failure(.expired) }
            return .success(cached.token)
        }
        let result = try await store.check(token)
        if ttl > .zero, case .success(let valid) = result {
            entries.withLock { entries in
                if entries.count >= Self.maxEntries { entries = entries.filter { $0.value.until > now } }
                if entries.count < Self.maxEntries { entries[token] = (valid, now + ttl) }
            }
        }
        return result
    }
}
