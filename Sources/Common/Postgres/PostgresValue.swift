import Foundation
import WarrenSupport

/// A value bound to a `$n` parameter, sent in Postgres text format.
///
/// Values are always parameters, never spliced into SQL text: a payload with quotes or
/// `'); DROP TABLE` lands verbatim.
package protocol PostgresEncodable: Sendable {
    /// The text form Postgres parses for this value, or nil for SQL NULL.
    var postgresText: String? { get }
}

extension String: PostgresEncodable { package var postgresText: String? { self } }
extension Int: PostgresEncodable { package var postgresText: String? { String(self) } }
extension Int64: PostgresEncodable { package var postgresText: String? { String(self) } }
extension Int32: PostgresEncodable { package var postgresText: String? { String(self) } }
extension Double: PostgresEncodable { package var postgresText: String? { String(self) } }
extension Bool: PostgresEncodable { package var postgresText: String? { self ? "t" : "f" } }
extension UUID: PostgresEncodable { package var postgresText: String? { lowercasedString } }
extension Timestamp: PostgresEncodable { package var postgresText: String? { iso8601 } }
extension CivilDate: PostgresEncodable { package var postgresText: String? { description } }
extension Optional: PostgresEncodable where Wrapped: PostgresEncodable {
    package var postgresText: String? { self?.postgresText }
}

/// A JSON document bound as text (cast with `$n::jsonb` in the SQL).
package struct PostgresJSON: PostgresEncodable, Hashable {
    package var text: String
    package init(text: String) { self.text = text }
    package init(bytes: [UInt8]) { self.text = String(decoding: bytes, as: UTF8.self) }
    package var postgresText: String? { text }
}

/// A text array literal (`{"a","b"}`) for `$n::text[]`, `$n::uuid[]` and friends, so bulk
/// writes can send one parameter per column (`unnest`).
package struct PostgresArray: PostgresEncodable {
    package var elements: [String?]
    package init(_ elements: [String?]) { self.elements = elements }
    package init<T: PostgresEncodable>(_ values: [T]) { self.elements = values.map(\.postgresText) }

    package var postgresText: String? {
        var text = "{"
        for (index, element) in elements.enumerated() {
            if index > 0 { text += "," }
            guard let element else {
                text += "NULL"
                continue
            }
            text += "\""
            for character in element.unicodeScalars {
                if character == "\"" || character == "\\" { text += "\\" }
                text.unicodeScalars.append(character)
            }
            text += "\""
        }
        return text + "}"
    }
}

/// One result row, values in text format.
package struct PostgresRow: Sendable {
    package let columns: [String]
    package let values: [String?]

    package subscript(_ index: Int) -> String? { values[index] }

    package subscript(_ name: String) -> String? {
        guard let index = columns.firstIndex(of: name) else { return nil }
        return values[index]
    }

    package func string(_ index: Int) throws(PostgresError) -> String {
        guard let value = values[index] else { throw decodingError(index, "text") }
        return value
    }

    package func int(_ index: Int) throws(PostgresError) -> Int {
        guard let text = values[index], let value = Int(text) else { throw decodingError(index, "integer") }
        return value
    }

    package func double(_ index: Int) throws(PostgresError) -> Double {
        guard let text = values[index], let value = Double(text) else { throw decodingError(index, "float8") }
        return value
    }

    package func bool(_ index: Int) throws(PostgresError) -> Bool {
        guard let text = values[index], text == "t" || text == "f" else { throw decodingError(index, "boolean") }
        return text == "t"
    }

    package func uuid(_ index: Int) throws(PostgresError) -> UUID {
        guard let text = values[index], let value = UUID(uuidString: text) else { throw decodingError(index, "uuid") }
        return value
    }

    package func date(_ index: Int) throws(PostgresError) -> CivilDate {
        guard let text = values[index], let value = CivilDate(iso8601: text) else { throw decodingError(index, "date") }
        return value
    }

    package func timestamp(_ index: Int) throws(PostgresError) -> Timestamp {
        guard let text = values[index], let value = Timestamp(iso8601: text) else { throw decodingError(index, "timestamptz") }
        return value
    }

    private func decodingError(_ index: Int, _ type: String) -> PostgresError {
        let column = index < columns.count ? columns[index] : "#\(index)"
        return PostgresError(.decoding, function: "PostgresRow", message: "column \(column) is not a non-null \(type)")
    }
}

/// The result of one statement: rows (for queries) and the affected-row count.
package struct PostgresResult: Sendable {
    package var columns: [String]
    package var rows: [PostgresRow]
    /// From `PQcmdTuples`: rows inserted, updated or deleted (0 when not applicable).
    package var affectedRows: Int
}
