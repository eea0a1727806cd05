import Foundation
import WarrenPostgres
import WarrenSupport

/// Web console sign-ins, in `console_sessions`. A session is opened by a token with the
/// `console` scope and lives until it is closed, until `ttl` passes, or until its token is
/// revoked or expires (checked on every request, so revoking the token signs it out at once).
/// The browser holds only the session's secret (32 random bytes, in an HttpOnly cookie);
/// Postgres holds its SHA-256. Each session has its own CSRF token, which every form carries.
package struct ConsoleSessionStore: Sendable {
    package let pool: PostgresPool

    package init(pool: PostgresPool) { self.pool = pool }

    package struct Session: Sendable, Equatable {
        /// The cookie's value: shown once, at sign-in.
        package var secret: String
        package var csrf: String
        package var token: APIToken
        package var expiresAt: Timestamp
    }

    /// Opens a session for `token` (which the caller checked), ending at `ttl` or at the
    /// token's own expiry, whichever is first. Expired sessions are deleted on the way.
    package func open(for token: APIToken, ttl: Duration) async throws -> Session {
        let secret = APITokenStore.randomSecret()
        let csrf = APITokenStore.randomSecret()
        var expiresAt = Timestamp(microseconds: Timestamp.now().microseconds + ttl.nanoseconds / 1_000)
        if let tokenExpiry = token.expiresAt, tokenExpiry < expiresAt { expiresAt = tokenExpiry }
        try await pool.query("DELETE FROM console_sessions WHERE expires_at < now()")
        try await pool.query("""
            INSERT INTO console_sessions (id_hash, token_id, csrf, expires_at) VALUES (sha256(convert_to($1, 'UTF8')), $2, $3, $4)
            """, [secret, token.id, csrf, expiresAt])
        return Session(secret: secret, csrf: csrf, token: token, expiresAt: expiresAt)
    }

    /// The live session whose cookie holds `secret`, with its token: nil when there is none,
    /// it ended, or its token was revoked or expired.
    package func find(_ secret: String) async throws -> Session? {
        guard !secret.isEmpty, secret.utf8.count <= 128 else { return nil }
        let rows = try await pool.query("""
            SELECT t.id, t.prefix, t.tenant, t.tier, array_to_string(t.scopes, ','), t.created_at, t.expires_at, t.revoked_at,
                   s.csrf, s.expires_at
            FROM console_sessions s JOIN api_tokens t ON t.id = s.token_id
            WHERE s.id_hash = sha256(convert_to($1, 'UTF8')) AND s.expires_at > now()
              AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
            """, [secret]).rows
        guard let row = rows.first else { return nil }
        return Session(secret: secret, csrf: try row.string(8), token: try APITokenStore.token(row), expiresAt: try row.timestamp(9))
    }

    /// Signs out: the session's row is deleted (its cookie no longer finds anything).
    package func close(_ secret: String) async throws {
        try await pool.query("DELETE FROM console_sessions WHERE id_hash = sha256(convert_to($1, 'UTF8'))", [secret])
    }
}
