import Foundation
import Testing
@testable import WarrenSupport

/// The cron parser and next-fire rules, across daylight-saving changes in both directions,
/// leap years and month ends. Expected overlaps were checked against Python's zoneinfo
/// (`fold=0` is the first occurrence); gaps fire at the transition instant.
@Suite struct CronTests {
    static func fires(_ expression: String, _ zone: String, from: String, count: Int = 3) throws -> [String] {
        let schedule = try CronSchedule(expression, zone: zone)
        let start = try #require(Timestamp(iso8601: from)).microseconds / 1_000_000
        return schedule.fires(after: start - 1, count: count).map { WallClock.iso8601($0, in: schedule.zone) }
    }

    struct Case: Sendable, CustomTestStringConvertible {
        var name: String
        var expression: String
        var zone: String
        var from: String
        var expected: [String]
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "issue example, New York across spring forward", expression: "0 9 * * *", zone: "America/New_York",
             from: "2026-03-07T00:00:00Z",
             expected: ["2026-03-07T09:00:00-05:00", "2026-03-08T09:00:00-04:00", "2026-03-09T09:00:00-04:00",
                        "2026-03-10T09:00:00-04:00", "2026-03-11T09:00:00-04:00"]),
        Case(name: "New York gap: 02:30 fires at 03:00", expression: "30 2 * * *", zone: "America/New_York",
             from: "2026-03-07T00:00:00Z",
             expected: ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
        Case(name: "New York gap: every minute of the gap fires once", expression: "*/20 2 * * *", zone: "America/New_York",
             from: "2026-03-08T06:00:00Z",
             expected: ["2026-03-08T03:00:00-04:00", "2026-03-09T02:00:00-04:00", "2026-03-09T02:20:00-04:00"]),
        Case(name: "New York overlap: 01:30 fires on its first occurrence", expression: "30 1 * * *", zone: "America/New_York",
             from: "2026-10-31T00:00:00Z",
             expected: ["2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
        Case(name: "New York overlap: hourly skips the repeated 01:30", expression: "30 * * * *", zone: "America/New_York",
             from: "2026-11-01T04:00:00Z",
             expected: ["2026-11-01T00:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T02:30:00-05:00",
                        "2026-11-01T03:30:00-05:00"]),
        Case(name: "London gap: 01:30 fires at 02:00 BST", expression: "30 1 * * *", zone: "Europe/London",
             from: "2026-03-28T00:00:00Z",
             expected: ["2026-03-28T01:30:00+00:00", "2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"]),
        Case(name: "London overlap", expression: "30 1 * * *", zone: "Europe/London", from: "2026-10-24T12:00:00Z",
             expected: ["2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00"]),
        Case(name: "Lord Howe half-hour overlap", expression: "45 1 * * *", zone: "Australia/Lord_Howe",
             from: "2026-04-03T12:00:00Z",
             expected: ["2026-04-04T01:45:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
        Case(name: "Lord Howe half-hour gap", expression: "15 2 * * *", zone: "Australia/Lord_Howe",
             from: "2026-10-02T12:00:00Z",
             expected: ["2026-10-03T02:15:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
        Case(name: "Santiago: midnight falls in the gap, the day starts at 01:00", expression: "0 0 * * *",
             zone: "America/Santiago", from: "2026-09-04T12:00:00Z",
             expected: ["2026-09-05T00:00:00-04:00", "2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"]),
        Case(name: "Santiago overlap before midnight", expression: "30 23 * * *", zone: "America/Santiago",
             from: "2026-04-03T12:00:00Z",
             expected: ["2026-04-03T23:30:00-03:00", "2026-04-04T23:30:00-03:00", "2026-04-05T23:30:00-04:00"]),
        Case(name: "Chatham +13:45 overlap", expression: "0 3 * * *", zone: "Pacific/Chatham", from: "2026-04-03T12:00:00Z",
             expected: ["2026-04-04T03:00:00+13:45", "2026-04-05T03:00:00+13:45", "2026-04-06T03:00:00+12:45"]),
        Case(name: "Chatham gap", expression: "0 3 * * *", zone: "Pacific/Chatham", from: "2026-09-25T12:00:00Z",
             expected: ["2026-09-26T03:00:00+12:45", "2026-09-27T03:45:00+13:45", "2026-09-28T03:00:00+13:45"]),
        Case(name: "Kolkata, no daylight saving, half-hour offset", expression: "0 9 * * MON-FRI", zone: "Asia/Kolkata",
             from: "2026-11-20T00:00:00Z",
             expected: ["2026-11-20T09:00:00+05:30", "2026-11-23T09:00:00+05:30", "2026-11-24T09:00:00+05:30"]),
        Case(name: "29 February yearly fires only on 29 February, in leap years", expression: "0 9 29 2 *",
             zone: "Asia/Kolkata", from: "2026-01-01T00:00:00Z",
             expected: ["2028-02-29T09:00:00+05:30", "2032-02-29T09:00:00+05:30", "2036-02-29T09:00:00+05:30"]),
        Case(name: "29 February yearly never fires on the 28th (nor on 1 March)", expression: "0 9 29 2 *",
             zone: "Europe/London", from: "2027-02-27T00:00:00Z",
             expected: ["2028-02-29T09:00:00+00:00", "2032-02-29T09:00:00+00:00"]),
        Case(name: "29 February every hour: a leap day's fires only", expression: "0 */12 29 2 *", zone: "America/New_York",
             from: "2028-02-28T00:00:00Z",
             expected: ["2028-02-29T00:00:00-05:00", "2028-02-29T12:00:00-05:00", "2032-02-29T00:00:00-05:00"]),
        Case(name: "century years are common: 2100 has no 29 February", expression: "0 9 29 2 *", zone: "UTC",
             from: "2097-01-01T00:00:00Z", expected: ["2104-02-29T09:00:00+00:00"]),
        Case(name: "month ends: the 31st skips shorter months", expression: "0 0 31 * *", zone: "UTC",
             from: "2026-01-31T00:00:01Z",
             expected: ["2026-03-31T00:00:00+00:00", "2026-05-31T00:00:00+00:00", "2026-07-31T00:00:00+00:00"]),
        Case(name: "month ends: the 29th skips a non-leap February", expression: "0 0 29 * *", zone: "UTC",
             from: "2027-01-30T00:00:00Z", expected: ["2027-03-29T00:00:00+00:00", "2027-04-29T00:00:00+00:00"]),
        Case(name: "month ends: the 29th in a leap February", expression: "0 0 29 * *", zone: "America/New_York",
             from: "2028-02-01T00:00:00Z", expected: ["2028-02-29T00:00:00-05:00", "2028-03-29T00:00:00-04:00"]),
        Case(name: "day of month or day of week (Vixie rule)", expression: "0 0 13 * FRI", zone: "UTC",
             from: "2026-03-01T00:00:00Z",
             expected: ["2026-03-06T00:00:00+00:00", "2026-03-13T00:00:00+00:00", "2026-03-20T00:00:00+00:00"]),
        Case(name: "names, lists, ranges and steps", expression: "0,30 8-10/2 * jan,Dec 7", zone: "Europe/London",
             from: "2026-12-05T00:00:00Z",
             expected: ["2026-12-06T08:00:00+00:00", "2026-12-06T08:30:00+00:00", "2026-12-06T10:00:00+00:00",
                        "2026-12-06T10:30:00+00:00", "2026-12-13T08:00:00+00:00"]),
        Case(name: "a step from a start value", expression: "5/20 0 1 1 *", zone: "UTC", from: "2027-01-01T00:00:00Z",
             expected: ["2027-01-01T00:05:00+00:00", "2027-01-01T00:25:00+00:00", "2027-01-01T00:45:00+00:00",
                        "2028-01-01T00:05:00+00:00"]),
    ]

    @Test(arguments: cases)
    func nextFires(_ example: Case) throws {
        #expect(try Self.fires(example.expression, example.zone, from: example.from, count: example.expected.count) == example.expected)
    }

    @Test(arguments: [
        ("61 * * * *", "minute"), ("* 24 * * *", "hour"), ("* * 0 * *", "day_of_month"), ("* * * 13 *", "month"),
        ("* * * * 8", "day_of_week"), ("* * * FOO *", "month"), ("*/0 * * * *", "minute"), ("5-1 * * * *", "minute"),
        ("* * * *", "expression"), ("* * * * * *", "expression"), ("0 0 30 2 *", "day_of_month"), ("1,,2 * * * *", "minute"),
        ("a * * * *", "minute"), ("* * * * MON-", "day_of_week"),
    ])
    func invalidExpressionsNameTheirField(_ text: String, _ field: String) {
        #expect { try CronExpression(text) } throws: { ($0 as? CronExpression.ParseError)?.field == field }
    }

    @Test(arguments: ["Mars/Olympus", "EST", "GMT+1", "Europe/Londn", ""])
    func unknownZonesAreRefused(_ zone: String) {
        #expect(throws: CronSchedule.ZoneError.self) { try CronSchedule.zone(zone) }
    }

    /// Across a year of every zone above, fires strictly increase, and every fire is at one of
    /// the expression's times on the local clock, unless it is the first instant after a gap.
    @Test(arguments: ["America/New_York", "Europe/London", "Australia/Lord_Howe", "America/Santiago", "Pacific/Chatham", "Asia/Kolkata"])
    func aYearOfFiresIsOrderedAndOnTheLocalClock(_ zone: String) throws {
        let schedule = try CronSchedule("15,45 0-3 * * *", zone: zone)
        let start = try #require(Timestamp(iso8601: "2026-01-01T00:00:00Z")).microseconds / 1_000_000
        let fires = schedule.fires(after: start, count: 365 * 8)
        #expect(fires.count == 365 * 8)
        var gapFires = 0
        for (previous, fire) in zip(fires, fires.dropFirst()) { #expect(fire > previous) }
        for fire in fires {
            let wall = fire + Int64(WallClock.offset(schedule.zone, at: fire))
            let minute = Int((wall % 3_600) / 60), hour = Int((wall % 86_400) / 3_600)
            if [15, 45].contains(minute) && (0...3).contains(hour) { continue }
            // Otherwise it must be a transition instant: the offset just changed.
            #expect(WallClock.offset(schedule.zone, at: fire - 1) != WallClock.offset(schedule.zone, at: fire), "\(WallClock.iso8601(fire, in: schedule.zone))")
            gapFires += 1
        }
        #expect(gapFires <= 2, "at most one gap a year, fired once")
    }

    @Test func civilDatesRoundTrip() {
        for days in stride(from: -800_000, through: 800_000, by: 997) {
            #expect(CivilDate(daysSinceEpoch: days).daysSinceEpoch == days)
        }
        #expect(CivilDate(daysSinceEpoch: 0) == CivilDate(year: 1970, month: 1, day: 1))
        #expect(CivilDate(year: 2026, month: 11, day: 23).weekday == 1, "a Monday")
        #expect(CivilDate(validating: 2025, 2, 29) == nil && CivilDate(validating: 2024, 2, 29) != nil)
        #expect(CivilDate.isLeap(2000) && !CivilDate.isLeap(2100))
    }
}
