import Foundation

/// An instant with microsecond precision, the precision Postgres `timestamptz` keeps.
///
/// Warren keys `job_runs` by `(job_id, enqueued_at)`, so the enqueued-at instant must survive
/// the trip through AMQP headers and Postgres unchanged: it travels as whole microseconds,
/// never as a `Double`.
package struct Timestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Microseconds since 1970-01-01T00:00:00Z.
    package var microseconds: Int64

    package init(microseconds: Int64) { self.microseconds = microseconds }

    package init(_ date: Date) {
        microseconds = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
    }

    /// The current wall-clock time.
    package static func now() -> Timestamp {
        // A Double of seconds since 1970 resolves about 0.24 µs today: whole microseconds survive.
        Timestamp(microseconds: Int64((Date().timeIntervalSince1970 * 1_000_000).rounded(.down)))
    }

    package var date: Date { Date(timeIntervalSince1970: Double(microseconds) / 1_000_000) }

    /// Seconds since the epoch, rounded down (the AMQP `timestamp` property's unit).
    package var unixSeconds: Int64 {
        microseconds >= 0 ? microseconds / 1_000_000 : (microseconds - 999_999) / 1_000_000
    }

    /// ISO 8601 in UTC with six fractional digits: `2026-11-23T09:00:00.000123Z`.
    package var iso8601: String {
        let seconds = unixSeconds
        let micros = microseconds - seconds * 1_000_000
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        // By hand: String(format:) was a tenth of `producer publish`'s CPU time.
        var text = [UInt8]()
        text.reserveCapacity(27)
        func append(_ value: Int, digits: Int, then separator: UInt8?) {
            var divisor = 1
            for _ in 1..<digits { divisor *= 10 }
            var rest = value
            while divisor > 0 {
                text.append(UInt8(ascii: "0") + UInt8(rest / divisor % 10))
                rest %= divisor
                divisor /= 10
            }
            if let separator { text.append(separator) }
        }
        append(Int(parts.tm_year) + 1900, digits: 4, then: UInt8(ascii: "-"))
        append(Int(parts.tm_mon) + 1, digits: 2, then: UInt8(ascii: "-"))
        append(Int(parts.tm_mday), digits: 2, then: UInt8(ascii: "T"))
        append(Int(parts.tm_hour), digits: 2, then: UInt8(ascii: ":"))
        append(Int(parts.tm_min), digits: 2, then: UInt8(ascii: ":"))
        append(Int(parts.tm_sec), digits: 2, then: UInt8(ascii: "."))
        append(Int(micros), digits: 6, then: UInt8(ascii: "Z"))
        return String(decoding: text, as: UTF8.self)
    }

    /// Parses ISO 8601 / RFC 3339 with an optional fraction (up to 6 digits kept) and a `Z`
    /// or `±HH:MM` offset (hours 00-23, minutes 00-59); also the form Postgres prints
    /// (`2026-11-23 09:00:00.5+00`).
    package init?(iso8601 text: String) {
        let bytes = Array(text.utf8)
        var index = 0
        func digits(_ count: Int) -> Int? {
            guard index + count <= bytes.count else { return nil }
            var value = 0
            for _ in 0..<count {
                let byte = bytes[index]
                guard byte >= 0x30 && byte <= 0x39 else { return nil }
                value = value * 10 + Int(byte - 0x30)
                index += 1
            }
            return value
        }
        func expect(_ characters: String) -> Bool {
            guard index < bytes.count, characters.utf8.contains(bytes[index]) else { return false }
            index += 1
            return true
        }
        guard let year = digits(4), expect("-"), let month = digits(2), expect("-"), let day = digits(2),
              expect("Tt "), let hour = digits(2), expect(":"), let minute = digits(2), expect(":"),
              let second = digits(2)
        else { return nil }
        guard (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61 else { return nil }
        var micros = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var scale = 100_000
            var sawDigit = false
            while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
                micros += Int(bytes[index] - 0x30) * scale
                scale /= 10
                index += 1
                sawDigit = true
            }
            guard sawDigit else { return nil }
        }
        var offsetSeconds = 0
        guard index < bytes.count else { return nil }
        if bytes[index] == UInt8(ascii: "Z") || bytes[index] == UInt8(ascii: "z") {
            index += 1
        } else if bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let sign = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            index += 1
            guard let offsetHours = digits(2) else { return nil }
            var offsetMinutes = 0
            if index < bytes.count {
                _ = expect(":")
                guard let parsed = digits(2) else { return nil }
                offsetMinutes = parsed
            }
            // RFC 3339 offsets run from -23:59 to +23:59: `+99:99` is a typo, not a zone.
            guard offsetHours < 24, offsetMinutes < 60 else { return nil }
            offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
        } else {
            return nil
        }
        guard index == bytes.count else { return nil }
        guard let days = CivilDate(validating: year, month, day)?.daysSinceEpoch else { return nil }
        let seconds = Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second) - Int64(offsetSeconds)
        microseconds = seconds * 1_000_000 + Int64(micros)
    }

    package var description: String { iso8601 }

    package static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.microseconds < rhs.microseconds }
}
