/// An error from the Postgres layer, with the SQLSTATE when the server sent one.
///
/// `description` is safe to show to users (no parameter values are included).
package struct PostgresError: Error, Sendable, CustomStringConvertible {
    package struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate let name: String
        package var description: String { name }
        /// Could not connect (or the connection broke).
        package static let connectionFailed = Code(name: "connectionFailed")
        /// The server reported an error for a statement (see `sqlState`).
        package static let server = Code(name: "server")
        /// The connection is closed or the pool shut down.
        package static let closed = Code(name: "closed")
        /// A value could not be decoded from a result.
        package static let decoding = Code(name: "decoding")
    }

    package var code: Code
    /// The libpq function that failed, e.g. `PQexecParams`.
    package var function: String
    /// Five-character SQLSTATE, e.g. `23505` unique_violation, `42P07` duplicate_table.
    package var sqlState: String?
    package var message: String
    package var detail: String?

    package init(_ code: Code, function: String, message: String, sqlState: String? = nil, detail: String? = nil) {
        self.code = code
        self.function = function
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
    }

    package var description: String {
        var text = "Postgres \(code) in \(function)"
        if let sqlState { text += " [\(sqlState)]" }
        text += ": \(message)"
        if let detail { text += " (\(detail))" }
        return text
    }

    /// SQLSTATE classes that mean "the connection is unusable; try another".
    package var isConnectionLevel: Bool {
        if code == .connectionFailed || code == .closed { return true }
        guard let sqlState else { return false }
        return sqlState.hasPrefix("08") || sqlState == "57P01" || sqlState == "57P02" || sqlState == "57P03"
    }

    package static let duplicateTable = "42P07"
    package static let undefinedTable = "42P01"
    package static let uniqueViolation = "23505"
    /// "no partition of relation found for row".
    package static let noPartition = "23514"
}
