import Foundation
import HTTPTypes
import Hummingbird
import WarrenSupport

/// The API's answers: `Encodable` bodies written by one `JSONEncoder`, and the JSON error body.

/// A JSON response of `status` with `body` encoded.
func json(_ status: HTTPResponse.Status, _ body: some Encodable) throws(APIError) -> Response {
    let data: Data
    do {
        data = try APIEncoder.encoder.encode(body)
    } catch {
        throw APIError(.internalServerError, "internal", "the answer could not be written: \(error)")
    }
    return Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}

/// A JSON response from text already written (the hand-written fast paths, and the error body).
func json(_ status: HTTPResponse.Status, text: String) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
}

enum APIEncoder {
    /// One encoder for every answer: `JSONEncoder` is safe to share once configured.
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return encoder
    }()
}

/// An optional member written as `null` when absent (a synthesized `Encodable` leaves it out;
/// the spec lists every member of a job, a batch, a schedule as present, `null` when unknown).
@propertyWrapper
struct Null<Value: Encodable & Sendable>: Encodable, Sendable {
    var wrappedValue: Value?

    init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}

/// JSON text kept as it was given (a payload, a result from `jsonb`), written as a JSON value
/// inside an encoded answer: parsed with ``JSONScanner`` and written back member by member,
/// numbers as their digits (through `Decimal`, exact to 38 digits). Text that is not JSON is
/// written as a string.
struct JSONFragment: Encodable, Sendable {
    let text: String

    init(_ text: String) { self.text = text }

    func encode(to encoder: any Encoder) throws {
        let bytes = Array(text.utf8)
        guard (try? JSONScanner.validate(bytes)) != nil else {
            var container = encoder.singleValueContainer()
            try container.encode(text)
            return
        }
        try JSONFragment.value(bytes, 0..<bytes.count).encode(to: encoder)
    }

    /// The value in `bytes[range]`, whitespace around it allowed.
    private static func value(_ bytes: [UInt8], _ range: Range<Int>) throws -> Value {
        let slice = Array(bytes[range])
        var start = 0
        while start < slice.count, [0x20, 0x09, 0x0A, 0x0D].contains(slice[start]) { start += 1 }
        guard start < slice.count else { return .null }
        switch slice[start] {
        case UInt8(ascii: "{"):
            return .object(try JSONScanner.objectMembers(slice).map { ($0.key, try value(slice, $0.value)) })
        case UInt8(ascii: "["):
            return .array(try JSONScanner.arrayElements(slice).map { try value(slice, $0.value) })
        case UInt8(ascii: "\""):
            var end = slice.count
            while end > start, slice[end - 1] != UInt8(ascii: "\"") { end -= 1 }
            return .string(try JSONScanner.string(slice, at: start..<end))
        case UInt8(ascii: "t"): return .bool(true)
        case UInt8(ascii: "f"): return .bool(false)
        case UInt8(ascii: "n"): return .null
        default:
            let literal = String(decoding: slice[start...], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            return .number(literal)
        }
    }

    private indirect enum Value: Encodable {
        case null, bool(Bool), number(String), string(String), array([Value]), object([(String, Value)])

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            switch self {
            case .null:
                var container = encoder.singleValueContainer()
                try container.encodeNil()
            case .bool(let value):
                var container = encoder.singleValueContainer()
                try container.encode(value)
            case .number(let literal):
                var container = encoder.singleValueContainer()
                if let integer = Int64(literal) {
                    try container.encode(integer)
                } else if let decimal = Decimal(string: literal), decimal.isFinite {
                    try container.encode(decimal)
                } else {
                    try container.encode(Double(literal) ?? 0)
                }
            case .string(let value):
                var container = encoder.singleValueContainer()
                try container.encode(value)
            case .array(let values):
                var container = encoder.unkeyedContainer()
                for value in values { try container.encode(value) }
            case .object(let members):
                var container = encoder.container(keyedBy: Key.self)
                for (key, value) in members { try container.encode(value, forKey: Key(stringValue: key)) }
            }
        }
    }
}

/// A request that cannot be served, as the JSON error body clients get:
/// `{"error": {"code", "message", "field"?}, ...more}`. Thrown by routes and middleware;
/// ``RequestLogMiddleware`` turns it into the response.
struct APIError: Error {
    var status: HTTPResponse.Status
    var code: String
    var message: String
    var field: String?
    var retryAfter: Int?
    /// More top-level members of the body, beside `error` (`errors` for a batch).
    var more: (any Encodable & Sendable)?

    init(_ status: HTTPResponse.Status, _ code: String, _ message: String, field: String? = nil, retryAfter: Int? = nil,
         more: (any Encodable & Sendable)? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retryAfter = retryAfter
        self.more = more
    }

    /// The `error` member, and one item of a batch's error list (`index` set).
    struct Detail: Encodable, Sendable {
        var index: Int?
        var code: String
        var message: String
        var field: String?
    }

    var detail: Detail { Detail(code: code, message: message, field: field) }

    /// The body's text.
    var json: String {
        struct Body: Encodable {
            let error: Detail
            let more: (any Encodable)?

            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(error, forKey: .error)
                try more?.encode(to: encoder)
            }

            enum CodingKeys: CodingKey { case error }
        }
        let data = (try? APIEncoder.encoder.encode(Body(error: detail, more: more))) ?? Data(#"{"error":{"code":"internal","message":""}}"#.utf8)
        return String(decoding: data, as: UTF8.self)
    }

    var response: Response {
        var response = WarrenAPI.json(status, text: json)
        if status == .unauthorized { response.headers[.wwwAuthenticate] = #"Bearer realm="warren""# }
        if let retryAfter { response.headers[.retryAfter] = String(retryAfter) }
        return response
    }
}
