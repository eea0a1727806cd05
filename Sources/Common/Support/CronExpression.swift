import Foundation

/// A five-field cron expression: minute, hour, day of month, month, day of week.
///
/// Each field takes `*`, numbers, ranges (`1-5`), lists (`1,15,30`) and steps (`*/15`,
/// `0-30/10`, `5/20` meaning from 5 to the end); months take `JAN`-`DEC` and days of the week
/// `SUN`-`SAT` (0 and 7 are both Sunday). As in Vixie cron, when both day of month and day of
/// week are restricted, a day matching either fires. Only real dates match: `0 9 29 2 *` fires
/// on 29 February, so only in leap years, as in every cron (the 28 February stand-in is a rule
/// of contact events, `ContactEvents`, not of cron).
package struct CronExpression: Sendable, Equatable, CustomStringConvertible {
    package let minutes: Set<Int>
    package let hours: Set<Int>
    package let daysOfMonth: Set<Int>
    package let months: Set<Int>
    /// 0 = Sunday ... 6 = Saturday.
    package let daysOfWeek: Set<Int>
    /// The field was `*` (or `*/1`): unrestricted, for the day-matching rule.
    let anyDayOfMonth: Bool
    let anyDayOfWeek: Bool
    package let description: String

    /// Sorted once for the next-fire search.
    let sortedMinutes: [Int]
    let sortedHours: [Int]

    package struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        /// `minute`, `hour`, `day_of_month`, `month`, `day_of_week`, or `expression`.
        package var field: String
        package var message: String
        package var description: String { "\(field): \(message)" }

        package init(field: String, message: String) {
            self.field = field
            self.message = message
        }
    }

    private struct Field {
        var name: String
        var range: ClosedRange<Int>
        var names: [String: Int] = [:]
    }

    private static let fields = [
        Field(name: "minute", range: 0...59),
        Field(name: "hour", range: 0...23),
        Field(name: "day_of_month", range: 1...31),
        Field(name: "month", range: 1...12, names: ["JAN": 1, "FEB": 2, "MAR": 3, "APR": 4, "MAY": 5, "JUN": 6,
                                                     "JUL": 7, "AUG": 8, "SEP": 9, "OCT": 10, "NOV": 11, "DEC": 12]),
        Field(name: "day_of_week", range: 0...7, names: ["SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6]),
    ]

    package init(_ text: String) throws(ParseError) {
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard parts.count == 5 else {
            throw ParseError(field: "expression", message: "expected 5 fields (minute hour day-of-month month day-of-week), got \(parts.count)")
        }
        var sets: [Set<Int>] = []
        var any: [Bool] = []
        for (part, field) in zip(parts, Self.fields) {
            let (values, unrestricted) = try Self.parse(part, field)
            sets.append(values)
            any.append(unrestricted)
        }
        minutes = sets[0]
        hours = sets[1]
        daysOfMonth = sets[2]
        months = sets[3]
        daysOfWeek = Set(sets[4].map { $0 % 7 })
        anyDayOfMonth = any[2]
        anyDayOfWeek = any[4]
        description = parts.joined(separator: " ")
        sortedMinutes = minutes.sorted()
        sortedHours = hours.sorted()
        // Only days of month that no chosen month has (30 February): it would never fire.
        if anyDayOfWeek, !anyDayOfMonth {
            let longest = months.map { CivilDate.daysIn(month: $0, year: 2024) }.max() ?? 31
            if (daysOfMonth.min() ?? 1) > longest {
                throw ParseError(field: "day_of_month", message: "no chosen month has day \(daysOfMonth.min() ?? 0); this would never fire")
            }
        }
    }

    private static func parse(_ text: String, _ field: Field) throws(ParseError) -> (Set<Int>, Bool) {
        var values = Set<Int>()
        var unrestricted = false
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard !item.isEmpty else { throw ParseError(field: field.name, message: "empty list item in '\(text)'") }
            let pieces = item.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2 else { throw ParseError(field: field.name, message: "more than one '/' in '\(item)'") }
            var step = 1
            if pieces.count == 2 {
                guard let parsed = Int(pieces[1]), parsed > 0 else {
                    throw ParseError(field: field.name, message: "step must be a positive number, got '\(pieces[1])'")
                }
                step = parsed
            }
            let base = pieces[0]
            let low: Int
            let high: Int
            if base == "*" {
                (low, high) = (field.range.lowerBound, field.name == "day_of_week" ? 6 : field.range.upperBound)
                if step == 1 { unrestricted = true }
            } else if let dash = base.firstIndex(of: "-") {
                low = try value(base[..<dash], field)
                high = try value(base[base.index(after: dash)...], field)
                guard low <= high else { throw ParseError(field: field.name, message: "range '\(base)' runs backwards") }
            } else {
                low = try value(base, field)
                // `5/20`: from 5 to the end of the field's range.
                high = pieces.count == 2 ? field.range.upperBound : low
            }
            values.formUnion(stride(from: low, through: high, by: step))
        }
        return (values, unrestricted)
    }

    private static func value(_ text: Substring, _ field: Field) throws(ParseError) -> Int {
        if let number = Int(text) {
            guard field.range.contains(number) else {
                throw ParseError(field: field.name,
                                 message: "\(number) is outside \(field.range.lowerBound)-\(field.range.upperBound)")
            }
            return number
        }
        if let named = field.names[text.uppercased()] { return named }
        throw ParseError(field: field.name, message: "'\(text)' is not a number\(field.names.isEmpty ? "" : " or a name")")
    }

    /// Whether a local calendar day is one this expression fires on (before times of day).
    package func matches(_ day: CivilDate) -> Bool {
        guard months.contains(day.month) else { return false }
        let domMatch = daysOfMonth.contains(day.day)
        let dowMatch = daysOfWeek.contains(day.weekday)
        switch (anyDayOfMonth, anyDayOfWeek) {
        case (true, true): return true
        case (false, true): return domMatch
        case (true, false): return dowMatch
        case (false, false): return domMatch || dowMatch
        }
    }
}
