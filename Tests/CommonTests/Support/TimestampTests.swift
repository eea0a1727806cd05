import Foundation
import Testing
@testable import WarrenSupport

@Suite struct TimestampTests {
    @Test func formatsWithMicroseconds() {
        let stamp = Timestamp(microseconds: 1_795_424_400_000_123)
        #expect(stamp.iso8601 == "2026-11-23T09:00:00.000123Z")
    }

    @Test func roundTripsThroughText() throws {
        for micros: Int64 in [0, 1, 999_999, 1_000_000, 951_782_400_123_456, 4_107_542_399_999_999, -1, -1_000_001] {
            let stamp = Timestamp(microseconds: micros)
            let parsed = try #require(Timestamp(iso8601: stamp.iso8601))
            #expect(parsed == stamp, "\(stamp.iso8601)")
        }
    }

    @Test func parsesPostgresAndOffsetForms() {
        #expect(Timestamp(iso8601: "2026-11-23 09:00:00.5+00")?.microseconds == 1_795_424_400_500_000)
        #expect(Timestamp(iso8601: "2026-11-23T10:30:00+05:30")?.iso8601 == "2026-11-23T05:00:00.000000Z")
        #expect(Timestamp(iso8601: "2026-11-23T00:00:00-05:00")?.iso8601 == "2026-11-23T05:00:00.000000Z")
    }

    @Test(arguments: ["", "2026-11-23", "2026-02-30T00:00:00Z", "2025-02-29T00:00:00Z", "2026-13-01T00:00:00Z",
                      "2026-11-23T24:00:00Z", "2026-11-23T00:00:00", "2026-11-23T00:00:00.Z", "2026-11-23T00:00:00Zjunk"])
    func rejectsInvalidText(_ text: String) {
        #expect(Timestamp(iso8601: text) == nil)
    }

    /// RFC 3339 offsets run from -23:59 to +23:59; `+99:99` once scheduled a job 4 days early.
    @Test(arguments: ["2026-12-24T09:00:00+99:99", "2026-12-24T09:00:00+24:00", "2026-12-24T09:00:00-24:00",
                      "2026-12-24T09:00:00+23:60", "2026-12-24T09:00:00-00:99", "2026-12-24 09:00:00+99"])
    func rejectsOutOfRangeOffsets(_ text: String) {
        #expect(Timestamp(iso8601: text) == nil)
    }

    @Test func acceptsTheWholeOffsetRange() {
        #expect(Timestamp(iso8601: "2026-12-24T09:00:00+23:59")?.iso8601 == "2026-12-23T09:01:00.000000Z")
        #expect(Timestamp(iso8601: "2026-12-24T09:00:00-23:59")?.iso8601 == "2026-12-25T08:59:00.000000Z")
        #expect(Timestamp(iso8601: "2026-12-24T09:00:00Z")?.iso8601 == "2026-12-24T09:00:00.000000Z")
        #expect(Timestamp(iso8601: "2026-12-24T09:00:00-00:00")?.iso8601 == "2026-12-24T09:00:00.000000Z")
        #expect(Timestamp(iso8601: "2026-12-24 09:00:00+23")?.iso8601 == "2026-12-23T10:00:00.000000Z")
    }

    @Test func leapDayIsValidInLeapYears() {
        #expect(Timestamp(iso8601: "2028-02-29T09:00:00Z") != nil)
        #expect(Timestamp(iso8601: "2000-02-29T09:00:00Z") != nil)
        #expect(Timestamp(iso8601: "2100-02-29T09:00:00Z") == nil)
    }

    @Test func agreesWithFoundation() {
        let date = Date(timeIntervalSince1970: 1_795_424_400.25)
        #expect(Timestamp(date).microseconds == 1_795_424_400_250_000)
        #expect(Timestamp(date).date == date)
    }
}

@Suite struct BackoffTests {
    @Test func ceilingDoublesUpToTheCap() {
        let backoff = Backoff(base: .milliseconds(100), cap: .seconds(2), floor: .zero)
        #expect(backoff.ceiling(attempt: 0) == .milliseconds(100))
        #expect(backoff.ceiling(attempt: 1) == .milliseconds(200))
        #expect(backoff.ceiling(attempt: 4) == .milliseconds(1600))
        #expect(backoff.ceiling(attempt: 5) == .seconds(2))
        #expect(backoff.ceiling(attempt: 500) == .seconds(2))
    }

    @Test func delaysStayWithinFloorAndCeiling() {
        let backoff = Backoff(base: .milliseconds(50), cap: .seconds(1), floor: .milliseconds(10))
        var generator = SystemRandomNumberGenerator()
        for attempt in 0..<20 {
            for _ in 0..<50 {
                let delay = backoff.delay(attempt: attempt, using: &generator)
                #expect(delay >= .milliseconds(10))
                #expect(delay <= max(backoff.ceiling(attempt: attempt), .milliseconds(10)))
            }
        }
    }

    @Test func jitterSpreadsDelays() {
        let backoff = Backoff(base: .seconds(1), cap: .seconds(1), floor: .zero)
        let delays = Set((0..<50).map { _ in backoff.delay(attempt: 3) })
        #expect(delays.count > 40)
    }
}
