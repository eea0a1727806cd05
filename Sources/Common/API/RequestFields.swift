import HTTPTypes
import WarrenJobs
import WarrenSupport

/// The members of a JSON object request body, read with errors that name the member:
/// 400 when the body is not an object, 422 `unknown_field`, `missing_field` or `invalid_field`.
struct RequestFields {
    let body: [UInt8]
    let members: [JSONScanner.Member]

    init(_ body: [UInt8], allowed: Set<String>) throws(APIError) {
        do {
            members = try JSONScanner.objectMembers(body)
        } catch {
            throw APIError(.badRequest, "invalid_json", "the body is not a JSON object: \(error)")
        }
        if let unknown = members.first(where: { !allowed.contains($0.key) }) {
            throw APIError(.unprocessableContent, "unknown_field",
                           "unknown field '\(unknown.key)' (expected \(allowed.sorted().joined(separator: ", ")))", field: unknown.key)
        }
        self.body = body
    }

    private func member(_ key: String) -> JSONScanner.Member? { members.first { $0.key == key && $0.kind != .null } }

    static func invalid(_ key: String, _ message: String) -> APIError {
        APIError(.unprocessableContent, "invalid_field", message, field: key)
    }

    /// A string member; nil when absent or null. `maxLength` counts Unicode scalars, as JSON
    /// Schema's `maxLength` does (the spec's bounds are the server's).
    func string(_ key: String, maxLength: Int = 200) throws(APIError) -> String? {
        guard let member = member(key) else { return nil }
        guard member.kind == .string, let value = try? JSONScanner.string(body, at: member.value) else {
            throw Self.invalid(key, "'\(key)' must be a string")
        }
        guard value.unicodeScalars.count <= maxLength else { throw Self.invalid(key, "'\(key)' is longer than \(maxLength) characters") }
        try Self.refuseNUL(value, key)
        return value
    }

    /// A `\u0000` escape decodes to a NUL, which Postgres text cannot hold (and which once cut
    /// `Ada\u0000Evil` to `Ada` and made `\u0000` a blank name): refused, naming the member.
    static func refuseNUL(_ value: String, _ key: String) throws(APIError) {
        guard !value.utf8.contains(0) else { throw invalid(key, "'\(key)' must not contain a NUL character (\\u0000)") }
    }

    /// A string member that must be there and not blank.
    func required(_ key: String, maxLength: Int = 200) throws(APIError) -> String {
        guard let value = try string(key, maxLength: maxLength) else {
            throw APIError(.unprocessableContent, "missing_field", "missing field '\(key)'", field: key)
        }
        guard !value.allSatisfy(\.isWhitespace) else { throw Self.invalid(key, "'\(key)' must not be blank") }
        return value
    }

    func int(_ key: String, in range: ClosedRange<Int>) throws(APIError) -> Int? {
        guard let member = member(key) else { return nil }
        guard member.kind == .number, let value = JobRequest.integer(body[member.value]), range.contains(value) else {
            throw Self.invalid(key, "'\(key)' must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    func bool(_ key: String) throws(APIError) -> Bool? {
        guard let member = member(key) else { return nil }
        guard member.kind == .bool else { throw Self.invalid(key, "'\(key)' must be true or false") }
        return body[member.value.lowerBound] == UInt8(ascii: "t")
    }

    /// A member's JSON text as written (an object for `payload`); nil when absent or null.
    func object(_ key: String) throws(APIError) -> String? {
        guard let member = member(key) else { return nil }
        guard member.kind == .object else { throw Self.invalid(key, "'\(key)' must be a JSON object") }
        return String(decoding: body[member.value], as: UTF8.self)
    }

    /// A `YYYY-MM-DD` date that exists (no 29 February 2025).
    func date(_ key: String, required: Bool) throws(APIError) -> CivilDate? {
        let text = required ? try self.required(key) : try string(key)
        guard let text else { return nil }
        guard let date = CivilDate(iso8601: text), (1800...9999).contains(date.year) else {
            throw Self.invalid(key, "'\(key)' must be a date that exists, as YYYY-MM-DD from year 1800 (got '\(text)')")
        }
        return date
    }

    /// An IANA time zone name (`Europe/London`); abbreviations and offsets are refused.
    func timeZone(_ key: String) throws(APIError) -> String {
        let name = try required(key, maxLength: 64)
        do {
            _ = try CronSchedule.zone(name)
        } catch {
            throw Self.invalid(key, error.description)
        }
        return name
    }
}
