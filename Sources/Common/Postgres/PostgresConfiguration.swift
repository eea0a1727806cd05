import WarrenSupport

/// How to reach Postgres, and the per-connection settings Warren insists on.
package struct PostgresConfiguration: Sendable {
    /// A libpq connection URL or keyword string (`postgresql://user:pass@host:port/db`).
    package var url: String
    package var applicationName: String
    /// Connections the pool may open at once.
    package var maxConnections = 4
    package var connectTimeoutSeconds = 5
    /// `statement_timeout` for every statement on service connections.
    package var statementTimeout: Duration = .seconds(30)
    /// Ends a session left idle inside a transaction (a stuck client holding locks).
    package var idleInTransactionTimeout: Duration = .seconds(60)
    /// Schema search path for every connection (tests isolate themselves in a schema).
    package var searchPath: String?

    package init(url: String, applicationName: String) {
        self.url = url
        self.applicationName = applicationName
    }

    /// Advisory lock key `base` made particular to `schema` (itself for `public` or none), for
    /// every lock that guards one deployment's tables: deployments in other schemas of the
    /// same database never wait for each other.
    package static func lockKey(_ base: Int64, schema: String?) -> Int64 {
        guard let schema, schema != "public" else { return base }
        var hash: UInt32 = 2_166_136_261  // FNV-1a: stable across processes, unlike Hasher
        for byte in schema.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return base ^ (Int64(hash) << 8)
    }

    /// ``lockKey(_:schema:)`` for this configuration's schema.
    package func lockKey(_ base: Int64) -> Int64 { Self.lockKey(base, schema: searchPath) }

    private var options: String {
        var options = "-c TimeZone=UTC -c statement_timeout=\(statementTimeout.milliseconds)"
        options += " -c idle_in_transaction_session_timeout=\(idleInTransactionTimeout.milliseconds)"
        if let searchPath { options += " -c search_path=\(searchPath)" }
        return options
    }

    /// libpq keywords, defaults first: `dbname` (expanded from the URL) comes last so the
    /// user's URL can override any of them.
    var connectionParameters: [(String, String)] {
        [
            ("application_name", applicationName),
            ("connect_timeout", String(connectTimeoutSeconds)),
            // Notice a dead peer: a half-open TCP connection must not keep locks forever.
            ("keepalives", "1"),
            ("keepalives_idle", "10"),
            ("keepalives_interval", "5"),
            ("keepalives_count", "3"),
            ("tcp_user_timeout", "30000"),
            ("options", options),
            ("dbname", url),
        ]
    }
}
