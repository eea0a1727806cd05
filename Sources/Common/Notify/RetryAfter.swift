import Foundation
import WarrenSupport

/// Reads an HTTP `Retry-After` value (RFC 9110 §10.2.3): a number of seconds, or an HTTP-date
/// in any of the three forms a recipient must accept (IMF-fixdate `Sun, 06 Nov 1994 08:49:37
/// GMT`, RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT`, asctime `Sun Nov  6 08:49:37 1994`).
package enum RetryAfter {
    /// Waits longer than this are cut to it (a confused server must not park a job for years).
    package static let longest: Duration = .seconds(86_400)

    /// How long to wait from `now`: nil when `value` is neither form; zero for a date in the past.
    package static func parse(_ value: String, now: Timestamp) -> Duration? {
        let text = value.trimmingCharacters(in: .whitespaces)
        guard !text.isEmpty else { return nil }
        if text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) {
            // Digits only; too many of them is simply "very long".
            guard let seconds = Int64(text) else { return longest }
            return min(.seconds(seconds), longest)
        }
        guard let date = httpDate(text) else { return nil }
        let wait = date - now.unixSeconds
        return wait <= 0 ? .zero : min(.seconds(wait), longest)
    }

    /// Seconds since 1970 of an HTTP-date (always GMT), or nil.
    package static func httpDate(_ text: String) -> Int64? {
        // Commas and the RFC 850 dashes only separate fields.
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "-" }).map(String.init)
        let day: Int?, monthName: String, year: Int?, time: String
        switch fields.count {
        case 6 where fields[5] == "GMT":
            // IMF-fixdate or RFC 850: weekday, day, month, year, time, GMT.
            (day, monthName, time) = (Int(fields[1]), fields[2], fields[4])
            year = Int(fields[3]).map { fields[3].count == 2 ? ($0 < 70 ? 2_000 + $0 : 1_900 + $0) : $0 }
        case 5:
            // asctime: weekday, month, day, time, year.
            (monthName, day, time, year) = (fields[1], Int(fields[2]), fields[3], Int(fields[4]))
        default:
            return nil
        }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let clock = time.split(separator: ":").map { Int($0) }
        guard let month = months.firstIndex(of: monthName), let day, let year,
              let date = CivilDate(validating: year, month + 1, day),
              clock.count == 3, let hour = clock[0], let minute = clock[1], let second = clock[2],
              (0...23).contains(hour), (0...59).contains(minute), (0...60).contains(second) else { return nil }
        return Int64(date.daysSinceEpoch) * 86_400 + Int64(hour * 3_600 + minute * 60 + second)
    }
}
