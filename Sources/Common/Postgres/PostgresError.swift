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
        /// A parameter cannot be sent at all (text holding a NUL byte, which libpq's C strings
        /// cannot carry): refused before anything reaches the server.
        package static let invalidParameter = Code(name: "invalidParameter")
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

    /// The statement can never succeed with these values, however often it is retried: the
    /// server refused the data (class 22 data exception, class 23 integrity violation other
    /// than a missing partition, 54 program limit such as an over-long row) or a parameter
    /// could not be sent. Anything else (connection, timeout, lock, resources, a missing
    /// table) may pass on a later try.
    package var isDataError: Bool {
        if code == .invalidParameter { return true }
        guard code == .server, let sqlState, !isNoPartition else { return false }
        return sqlState.hasPrefix("22") || sqlState.hasPrefix("23") || sqlState.hasPrefix("54")
    }

    /// A row for which no partition exists: SQLSTATE 23514 is every CHECK violation, so the
    /// message says which ("no partition of relation ... found for row").
    package var isNoPartition: Bool {
        code == .server && sqlState == Self.checkViolation && message.hasPrefix("no partition of relation")
    }

    package static let duplicateTable = "42P07"
    package static let undefinedTable = "42P01"
    package static let uniqueViolation = "23505"
    /// check_violation: a CHECK constraint, or a row that no partition accepts (see ``isNoPartition``).
    package static let checkViolation = "23514"
}

extension Optional {
    /// The value, or a decoding error: a query that returns a row did not.
    package func unwrap() throws -> Wrapped {
        guard let value = self else { throw PostgresError(.decoding, function: "unwrap", message: "no row returned") }
        return value
    }
}
