import CLibPQ
import Foundation
import Logging
import WarrenSupport

/// One libpq connection, confined to a ``WorkerThread`` of its own.
///
/// Every `PQ*` call for this connection runs on that thread; async callers are resumed with
/// copied-out results. Not safe to use from two tasks at once (the pool hands it to one
/// borrower at a time), and the statements of one borrower run in order.
package final class PostgresConnection: Sendable {
    /// The owner of the `PGconn*`: frees it exactly once, on the worker thread.
    /// `@unchecked Sendable`: only touched from closures that run on `worker`.
    private final class Handle: @unchecked Sendable {
        var conn: OpaquePointer?
        init(_ conn: OpaquePointer?) { self.conn = conn }
        func finish() {
            if let conn { PQfinish(conn) }
            conn = nil
        }
        deinit { finish() }
    }

    private let handle: Handle
    private let worker: WorkerThread
    package let logger: Logger

    private init(handle: Handle, worker: WorkerThread, logger: Logger) {
        self.handle = handle
        self.worker = worker
        self.logger = logger
    }

    /// Opens a connection (on a new worker thread). Throws `connectionFailed` with libpq's message.
    package static func connect(_ configuration: PostgresConfiguration, logger: Logger) async throws -> PostgresConnection {
        let worker = WorkerThread(name: "pg \(configuration.applicationName)")
        let parameters = configuration.connectionParameters
        do {
            let handle = try await worker.run { () throws -> Handle in
                let keywords = parameters.map { strdup($0.0) }
                let values = parameters.map { strdup($0.1) }
                defer {
                    keywords.forEach { free($0) }
                    values.forEach { free($0) }
                }
                var keywordPointers: [UnsafePointer<CChar>?] = keywords.map { UnsafePointer($0) } + [nil]
                var valuePointers: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) } + [nil]
                let conn = PQconnectdbParams(&keywordPointers, &valuePointers, 1)
                let handle = Handle(conn)
                guard let conn, PQstatus(conn) == CONNECTION_OK else {
                    let message = conn.map { String(cString: PQerrorMessage($0)) } ?? "out of memory"
                    handle.finish()
                    throw PostgresError(.connectionFailed, function: "PQconnectdbParams", message: message.trimmingWhitespace())
                }
                warren_pq_quiet(conn)
                return handle
            }
            return PostgresConnection(handle: handle, worker: worker, logger: logger)
        } catch {
            worker.shutdown()
            throw error
        }
    }

    /// Runs one parameterized statement (`$1`, `$2`, ... placeholders) and copies out its rows.
    @discardableResult
    package func query(_ sql: String, _ parameters: [any PostgresEncodable] = []) async throws -> PostgresResult {
        let texts = parameters.map(\.postgresText)
        // libpq takes parameters as C strings: a NUL would silently cut the value there (and an
        // array literal mid-element). Refuse it; callers make such text safe or answer 422.
        for (index, text) in texts.enumerated() where text?.utf8.contains(0) == true {
            throw PostgresError(.invalidParameter, function: "PQexecParams",
                                message: "parameter $\(index + 1) holds a NUL byte, which Postgres text cannot store")
        }
        let handle = self.handle
        return try await worker.run { () throws -> PostgresResult in
            guard let conn = handle.conn else {
                throw PostgresError(.closed, function: "PQexecParams", message: "connection is closed")
            }
            let copies = texts.map { $0.map { strdup($0) } ?? nil }
            defer { copies.forEach { free($0) } }
            var pointers: [UnsafePointer<CChar>?] = copies.map { $0.map { UnsafePointer($0) } }
            let result = PQexecParams(conn, sql, Int32(pointers.count), nil, &pointers, nil, nil, 0)
            return try Self.consume(result, conn: conn, function: "PQexecParams")
        }
    }

    /// Runs one or more statements with no parameters (DDL, migrations) in one round trip.
    package func execute(_ sql: String) async throws {
        let handle = self.handle
        try await worker.run { () throws in
            guard let conn = handle.conn else {
                throw PostgresError(.closed, function: "PQexec", message: "connection is closed")
            }
            _ = try Self.consume(PQexec(conn, sql), conn: conn, function: "PQexec")
        }
    }

    /// Whether libpq still considers the connection usable.
    package func isHealthy() async -> Bool {
        let handle = self.handle
        return (try? await worker.run { handle.conn.map { PQstatus($0) == CONNECTION_OK } ?? false }) ?? false
    }

    /// Closes the connection and ends its thread.
    package func close() async {
        let handle = self.handle
        _ = try? await worker.run { handle.finish() }
        worker.shutdown()
    }

    private static func consume(_ result: OpaquePointer?, conn: OpaquePointer, function: String) throws -> PostgresResult {
        guard let result else {
            throw PostgresError(.connectionFailed, function: function, message: String(cString: PQerrorMessage(conn)).trimmingWhitespace())
        }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            let columnCount = Int(PQnfields(result))
            let columns = (0..<columnCount).map { String(cString: PQfname(result, Int32($0))) }
            let rowCount = Int(PQntuples(result))
            var rows: [PostgresRow] = []
            rows.reserveCapacity(rowCount)
            for row in 0..<rowCount {
                var values: [String?] = []
                values.reserveCapacity(columnCount)
                for column in 0..<columnCount {
                    if PQgetisnull(result, Int32(row), Int32(column)) != 0 {
                        values.append(nil)
                    } else {
                        values.append(String(cString: PQgetvalue(result, Int32(row), Int32(column))))
                    }
                }
                rows.append(PostgresRow(columns: columns, values: values))
            }
            let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
            return PostgresResult(columns: columns, rows: rows, affectedRows: affected)
        default:
            func field(_ code: UInt8) -> String? {
                guard let value = PQresultErrorField(result, Int32(code)) else { return nil }
                return String(cString: value)
            }
            let sqlState = field(UInt8(ascii: "C"))
            let message = field(UInt8(ascii: "M")) ?? String(cString: PQresultErrorMessage(result)).trimmingWhitespace()
            let broken = PQstatus(conn) != CONNECTION_OK
            throw PostgresError(broken ? .connectionFailed : .server, function: function, message: message,
                                sqlState: sqlState, detail: field(UInt8(ascii: "D")))
        }
    }
}
