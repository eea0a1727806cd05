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
