import Foundation

/// A cron expression in an IANA time zone, and when it fires.
///
/// The rules for wall-clock times that a daylight-saving change breaks:
/// - a time in a spring-forward gap (02:30 on the night clocks jump from 02:00 to 03:00) fires
///   once, at the first valid instant after the gap (03:00);
/// - a time that occurs twice (01:30 when clocks fall back) fires once, on its first occurrence;
/// - only real dates match: an expression for 29 February fires in leap years only.
///
/// The next fire is computed from the previous *scheduled* fire (never from "now"), as an
/// instant in UTC; the search walks local calendar days with integer arithmetic and asks the
/// zone only for its UTC offset at given instants.
package struct CronSchedule: Sendable, Equatable {
    package let expression: CronExpression
    package let zone: TimeZone

    package struct ZoneError: Error, Sendable, Equatable, CustomStringConvertible {
        package var identifier: String
        package var description: String { "unknown time zone '\(identifier)' (use an IANA name such as Europe/London)" }
    }

    package init(expression: CronExpression, zone: TimeZone) {
        self.expression = expression
        self.zone = zone
    }

    package init(_ expression: String, zone identifier: String) throws {
        self.expression = try CronExpression(expression)
        self.zone = try Self.zone(identifier)
    }

    /// An IANA zone by name; abbreviations and offsets such as `EST` or `GMT+1` are refused.
    package static func zone(_ identifier: String) throws(ZoneError) -> TimeZone {
        guard identifier.contains("/") || identifier == "UTC",
              let zone = TimeZone(identifier: identifier) else { throw ZoneError(identifier: identifier) }
        return zone
    }

    /// The first fire strictly after `instant` (seconds since 1970, UTC); nil if there is
    /// none within 30 years.
    package func next(after instant: Int64) -> Int64? {
        let local = instant + Int64(WallClock.offset(zone, at: instant))
        let firstDay = Int(local.floorDiv(86_400)) - 1
        for dayNumber in firstDay...(firstDay + 366 * 30) {
            let day = CivilDate(daysSinceEpoch: dayNumber)
            guard expression.matches(day) else { continue }
            for hour in expression.sortedHours {
                for minute in expression.sortedMinutes {
                    let wall = Int64(dayNumber) * 86_400 + Int64(hour * 3_600 + minute * 60)
                    let fire = WallClock.instant(wall, in: zone)
                    if fire > instant { return fire }
                }
            }
        }
        return nil
    }

    /// The next `count` fires after `instant`.
    package func fires(after instant: Int64, count: Int) -> [Int64] {
        var fires: [Int64] = []
        var from = instant
        while fires.count < count, let fire = next(after: from) {
            fires.append(fire)
            from = fire
        }
        return fires
    }
}

/// Wall-clock time in a zone, as plain seconds: `wall` counts seconds since 1970-01-01T00:00
/// *on the local clock* (the instant plus the zone's offset).
package enum WallClock {
    package static func offset(_ zone: TimeZone, at instant: Int64) -> Int {
        zone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(instant)))
    }

    /// The date on the local calendar in `zone` at `instant` (seconds since 1970).
    package static func date(at instant: Int64, in zone: TimeZone) -> CivilDate {
        CivilDate(daysSinceEpoch: Int((instant + Int64(offset(zone, at: instant))).floorDiv(86_400)))
    }

    /// The instant a local wall time names: the earlier one when it occurs twice, and for a time
    /// that does not occur (a spring-forward gap) the first instant after the gap.
    package static func instant(_ wall: Int64, in zone: TimeZone) -> Int64 {
        // Offsets are at most a day apart from the answer; changes are months apart.
        let before = offset(zone, at: wall - 86_400)
        let after = offset(zone, at: wall + 86_400)
        let candidates = Set([wall - Int64(before), wall - Int64(after)]).sorted()
        if let valid = candidates.first(where: { $0 + Int64(offset(zone, at: $0)) == wall }) { return valid }
        // In a gap: the transition lies between the two candidates; find its first second.
        var low = candidates.first!, high = candidates.last!
        let newOffset = offset(zone, at: high)
        while low + 1 < high {
            let middle = low + (high - low) / 2
            if offset(zone, at: middle) == newOffset { high = middle } else { low = middle }
        }
        return high
    }

    /// `2026-03-08T03:00:00-04:00`: the instant on the zone's clock, with its offset.
    package static func iso8601(_ instant: Int64, in zone: TimeZone) -> String {
        let offset = offset(zone, at: instant)
        let wall = instant + Int64(offset)
        let day = CivilDate(daysSinceEpoch: Int(wall.floorDiv(86_400)))
        let seconds = Int(wall - Int64(day.daysSinceEpoch) * 86_400)
        func pad(_ value: Int) -> String { value < 10 ? "0\(value)" : String(value) }
        let sign = offset < 0 ? "-" : "+"
        let magnitude = abs(offset)
        return "\(day)T\(pad(seconds / 3_600)):\(pad(seconds / 60 % 60)):\(pad(seconds % 60))\(sign)\(pad(magnitude / 3_600)):\(pad(magnitude / 60 % 60))"
    }
}

extension Int64 {
    /// Division rounding toward minus infinity (for instants before 1970).
    package func floorDiv(_ divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }
}
