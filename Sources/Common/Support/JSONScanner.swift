/// A strict, allocation-light JSON (RFC 8259) validator that also splits a top-level object
/// into its members, handing back each value as the exact bytes it was written with.
///
/// Warren keeps job payloads byte for byte, so it never needs a JSON tree: it needs to know
/// the text *is* JSON and where each field's value starts and ends. Foundation's
/// `JSONSerialization` builds (and bridges) a whole object graph for that, which made it the
/// largest cost of `producer publish --jsonl`; this scanner does one pass with no tree.
///
/// Accepts exactly what RFC 8259 allows: one value with optional surrounding whitespace,
/// valid UTF-8, no control characters in strings, well-formed escapes (surrogates paired),
/// numbers without leading zeros. Nesting is limited to `maxDepth`.
package enum JSONScanner {
    package enum Kind: Sendable, Equatable {
        case object, array, string, number, bool, null
    }

    /// One member of a top-level object: its key (unescaped), the range of its value's bytes
    /// within the scanned buffer, and the value's kind.
    package struct Member: Sendable, Equatable {
        package var key: String
        package var value: Range<Int>
        package var kind: Kind
    }

    package struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        /// Byte offset where the problem was found.
        package var offset: Int
        package var reason: String
        package var description: String { "\(reason) at byte \(offset + 1)" }
    }

    package static let maxDepth = 256

    /// Throws unless `bytes` hold exactly one JSON value.
    package static func validate(_ bytes: some Collection<UInt8>) throws(Failure) {
        try withBuffer(bytes) { (buffer) throws(Failure) in
            var reader = Reader(buffer: buffer)
            reader.skipWhitespace()
            _ = try reader.value(depth: 0)
            try reader.expectEnd()
        }
    }

    /// Validates `bytes` as one JSON object and returns its members in order. Duplicate keys
    /// are an error: which one wins is undefined across JSON libraries.
    package static func objectMembers(_ bytes: some Collection<UInt8>) throws(Failure) -> [Member] {
        try withBuffer(bytes) { (buffer) throws(Failure) -> [Member] in
            var reader = Reader(buffer: buffer)
            reader.skipWhitespace()
            guard reader.peek == UInt8(ascii: "{") else { throw Failure(offset: reader.index, reason: "expected a JSON object") }
            reader.index += 1
            var members: [Member] = []
            // Seen keys in a set: a per-key scan of `members` made a body of many keys quadratic.
            var seen = Set<String>()
            reader.skipWhitespace()
            if reader.peek == UInt8(ascii: "}") {
                reader.index += 1
            } else {
                while true {
                    guard reader.peek == UInt8(ascii: "\"") else { throw Failure(offset: reader.index, reason: "expected a string key") }
                    let keyStart = reader.index
                    try reader.string()
                    let key = try decodeString(buffer, keyStart..<reader.index)
                    if !seen.insert(key).inserted {
                        throw Failure(offset: keyStart, reason: "duplicate key '\(key)'")
                    }
                    reader.skipWhitespace()
                    try reader.expect(UInt8(ascii: ":"))
                    reader.skipWhitespace()
                    let valueStart = reader.index
                    let kind = try reader.value(depth: 1)
                    members.append(Member(key: key, value: valueStart..<reader.index, kind: kind))
                    reader.skipWhitespace()
                    if reader.peek == UInt8(ascii: ",") {
                        reader.index += 1
                        reader.skipWhitespace()
                        continue
                    }
                    try reader.expect(UInt8(ascii: "}"))
                    break
                }
            }
            try reader.expectEnd()
            return members
        }
    }

    /// Validates `bytes` as one JSON array and returns its elements' ranges and kinds, in order.
    package static func arrayElements(_ bytes: some Collection<UInt8>) throws(Failure) -> [(value: Range<Int>, kind: Kind)] {
        try withBuffer(bytes) { (buffer) throws(Failure) -> [(value: Range<Int>, kind: Kind)] in
            var reader = Reader(buffer: buffer)
            reader.skipWhitespace()
            guard reader.peek == UInt8(ascii: "[") else { throw Failure(offset: reader.index, reason: "expected a JSON array") }
            reader.index += 1
            var elements: [(value: Range<Int>, kind: Kind)] = []
            reader.skipWhitespace()
            if reader.peek == UInt8(ascii: "]") {
                reader.index += 1
            } else {
                while true {
                    let start = reader.index
                    let kind = try reader.value(depth: 1)
                    elements.append((start..<reader.index, kind))
                    reader.skipWhitespace()
                    if reader.peek == UInt8(ascii: ",") {
                        reader.index += 1
                        reader.skipWhitespace()
                        continue
                    }
                    try reader.expect(UInt8(ascii: "]"))
                    break
                }
            }
            try reader.expectEnd()
            return elements
        }
    }

    /// The text of a JSON string token (quotes included) at `range` of `bytes`, unescaped.
    package static func string(_ bytes: some Collection<UInt8>, at range: Range<Int>) throws(Failure) -> String {
        try withBuffer(bytes) { (buffer) throws(Failure) in try decodeString(buffer, range) }
    }

    // MARK: - Internals

    private static func withBuffer<R>(_ bytes: some Collection<UInt8>,
                                      _ body: (UnsafeBufferPointer<UInt8>) throws(Failure) -> R) throws(Failure) -> R {
        let result: Result<R, Failure>? = bytes.withContiguousStorageIfAvailable { buffer in
            do throws(Failure) { return .success(try body(buffer)) } catch { return .failure(error) }
        }
        if let result { return try result.get() }
        return try Array(bytes).withUnsafeBufferPointer { (buffer) throws(Failure) in try body(buffer) }
    }

    private static func decodeString(_ buffer: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) throws(Failure) -> String {
        let inner = (range.lowerBound + 1)..<(range.upperBound - 1)
        let slice = UnsafeBufferPointer(rebasing: buffer[inner])
        if !slice.contains(UInt8(ascii: "\\")) { return String(decoding: slice, as: UTF8.self) }
        var out: [UInt8] = []
        out.reserveCapacity(slice.count)
        var index = inner.lowerBound
        func hex4(_ at: Int) -> UInt32 {
            var value: UInt32 = 0
            for offset in 0..<4 { value = value << 4 | UInt32(hexValue(buffer[at + offset])) }
            return value
        }
        while index < inner.upperBound {
            let byte = buffer[index]
            guard byte == UInt8(ascii: "\\") else {
                out.append(byte)
                index += 1
                continue
            }
            let escape = buffer[index + 1]
            index += 2
            switch escape {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = hex4(index)
                index += 4
                if (0xD800...0xDBFF).contains(scalar) {
                    // The reader checked that a low surrogate escape follows.
                    let low = hex4(index + 2)
                    index += 6
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                out.append(contentsOf: String(Character(Unicode.Scalar(scalar)!)).utf8)
            default: out.append(escape)  // " \ /
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8 {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: 0xFF
        }
    }

    private struct Reader {
        let buffer: UnsafeBufferPointer<UInt8>
        var index = 0

        init(buffer: UnsafeBufferPointer<UInt8>) { self.buffer = buffer }

        var peek: UInt8? { index < buffer.count ? buffer[index] : nil }

        mutating func skipWhitespace() {
            while index < buffer.count {
                switch buffer[index] {
                case 0x20, 0x09, 0x0A, 0x0D: index += 1
                default: return
                }
            }
        }

        mutating func expect(_ byte: UInt8) throws(Failure) {
            guard peek == byte else {
                throw Failure(offset: index, reason: peek == nil ? "unexpected end of input" : "expected '\(Character(Unicode.Scalar(byte)))'")
            }
            index += 1
        }

        mutating func expectEnd() throws(Failure) {
            skipWhitespace()
            guard index == buffer.count else { throw Failure(offset: index, reason: "unexpected text after the JSON value") }
        }

        mutating func value(depth: Int) throws(Failure) -> Kind {
            guard let byte = peek else { throw Failure(offset: index, reason: "unexpected end of input") }
            switch byte {
            case UInt8(ascii: "{"):
                try container(close: UInt8(ascii: "}"), keyed: true, depth: depth)
                return .object
            case UInt8(ascii: "["):
                try container(close: UInt8(ascii: "]"), keyed: false, depth: depth)
                return .array
            case UInt8(ascii: "\""):
                try string()
                return .string
            case UInt8(ascii: "t"):
                try literal("true")
                return .bool
            case UInt8(ascii: "f"):
                try literal("false")
                return .bool
            case UInt8(ascii: "n"):
                try literal("null")
                return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                try number()
                return .number
            default:
                throw Failure(offset: index, reason: "unexpected character")
            }
        }

        mutating func container(close: UInt8, keyed: Bool, depth: Int) throws(Failure) {
            guard depth < JSONScanner.maxDepth else { throw Failure(offset: index, reason: "nested deeper than \(JSONScanner.maxDepth) levels") }
            index += 1
            skipWhitespace()
            if peek == close {
                index += 1
                return
            }
            while true {
                if keyed {
                    guard peek == UInt8(ascii: "\"") else { throw Failure(offset: index, reason: "expected a string key") }
                    try string()
                    skipWhitespace()
                    try expect(UInt8(ascii: ":"))
                    skipWhitespace()
                }
                _ = try value(depth: depth + 1)
                skipWhitespace()
                if peek == UInt8(ascii: ",") {
                    index += 1
                    skipWhitespace()
                    continue
                }
                try expect(close)
                return
            }
        }

        mutating func literal(_ word: StaticString) throws(Failure) {
            let count = word.utf8CodeUnitCount
            guard index + count <= buffer.count,
                  (0..<count).allSatisfy({ buffer[index + $0] == word.utf8Start[$0] }) else {
                throw Failure(offset: index, reason: "invalid literal")
            }
            index += count
        }

        mutating func digits() -> Int {
            let start = index
            while let byte = peek, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") { index += 1 }
            return index - start
        }

        mutating func number() throws(Failure) {
            let start = index
            if peek == UInt8(ascii: "-") { index += 1 }
            if peek == UInt8(ascii: "0") {
                index += 1
                if let byte = peek, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
                    throw Failure(offset: start, reason: "number with a leading zero")
                }
            } else if digits() == 0 {
                throw Failure(offset: start, reason: "invalid number")
            }
            if peek == UInt8(ascii: ".") {
                index += 1
                guard digits() > 0 else { throw Failure(offset: start, reason: "invalid number") }
            }
            if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
                index += 1
                if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { index += 1 }
                guard digits() > 0 else { throw Failure(offset: start, reason: "invalid number") }
            }
        }

        /// Scans a string token, checking escapes and UTF-8; leaves `index` after the closing quote.
        mutating func string() throws(Failure) {
            let start = index
            index += 1
            while true {
                guard index < buffer.count else { throw Failure(offset: start, reason: "unterminated string") }
                let byte = buffer[index]
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    return
                case UInt8(ascii: "\\"):
                    try escape()
                case 0x00..<0x20:
                    throw Failure(offset: index, reason: "control character in a string")
                case 0x20..<0x80:
                    index += 1
                default:
                    try utf8Sequence()
                }
            }
        }

        mutating func escape() throws(Failure) {
            let start = index
            guard index + 1 < buffer.count else { throw Failure(offset: start, reason: "unterminated string") }
            switch buffer[index + 1] {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                 UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                index += 2
            case UInt8(ascii: "u"):
                let unit = try hex4(at: index + 2)
                index += 6
                if (0xD800...0xDBFF).contains(unit) {
                    guard index + 1 < buffer.count, buffer[index] == UInt8(ascii: "\\"), buffer[index + 1] == UInt8(ascii: "u"),
                          (0xDC00...0xDFFF).contains(try hex4(at: index + 2)) else {
                        throw Failure(offset: start, reason: "unpaired surrogate escape")
                    }
                    index += 6
                } else if (0xDC00...0xDFFF).contains(unit) {
                    throw Failure(offset: start, reason: "unpaired surrogate escape")
                }
            default:
                throw Failure(offset: start, reason: "invalid escape")
            }
        }

        func hex4(at position: Int) throws(Failure) -> UInt32 {
            guard position + 4 <= buffer.count else { throw Failure(offset: position, reason: "invalid \\u escape") }
            var value: UInt32 = 0
            for offset in 0..<4 {
                let digit = JSONScanner.hexValue(buffer[position + offset])
                guard digit != 0xFF else { throw Failure(offset: position, reason: "invalid \\u escape") }
                value = value << 4 | UInt32(digit)
            }
            return value
        }

        /// One multi-byte UTF-8 sequence (RFC 3629: no overlongs, no surrogates, ≤ U+10FFFF).
        mutating func utf8Sequence() throws(Failure) {
            let lead = buffer[index]
            let count: Int
            var lower: UInt8 = 0x80
            var upper: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: count = 2
            case 0xE0: count = 3; lower = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: count = 3
            case 0xED: count = 3; upper = 0x9F
            case 0xF0: count = 4; lower = 0x90
            case 0xF1...0xF3: count = 4
            case 0xF4: count = 4; upper = 0x8F
            default: throw Failure(offset: index, reason: "invalid UTF-8")
            }
            guard index + count <= buffer.count else { throw Failure(offset: index, reason: "invalid UTF-8") }
            for offset in 1..<count {
                let byte = buffer[index + offset]
                let (low, high) = offset == 1 ? (lower, upper) : (UInt8(0x80), UInt8(0xBF))
                guard byte >= low, byte <= high else { throw Failure(offset: index, reason: "invalid UTF-8") }
            }
            index += count
        }
    }
}
