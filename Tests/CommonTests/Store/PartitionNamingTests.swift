import Testing
@testable import WarrenPostgres
@testable import WarrenStore
@testable import WarrenSupport

@Suite struct PartitionNamingTests {
    @Test func namesCarryTheUTCDay() throws {
        let day = PartitionManager.Day(try #require(Timestamp(iso8601: "2026-11-22T23:59:59.999999Z")))
        #expect(PartitionManager.partitionName(.jobRuns, day) == "job_runs_p20261122")
        #expect(PartitionManager.partitionName(.messageLogs, day.adding(days: 1)) == "message_logs_p20261123")
    }

    @Test func dayBoundariesAreMidnightUTC() throws {
        let day = try #require(PartitionManager.Day(year: 2026, month: 11, day: 22))
        #expect(day.start.iso8601 == "2026-11-22T00:00:00.000000Z")
        #expect(day.adding(days: 1).start.iso8601 == "2026-11-23T00:00:00.000000Z")
        #expect(PartitionManager.Day(try #require(Timestamp(iso8601: "2026-11-23T00:00:00Z"))) == day.adding(days: 1))
        #expect(PartitionManager.Day(Timestamp(microseconds: -1)).description == "1969-12-31")
    }

    @Test func arithmeticCrossesMonthsYearsAndLeapDays() throws {
        let feb28 = try #require(PartitionManager.Day(year: 2028, month: 2, day: 28))
        #expect(feb28.adding(days: 1).description == "2028-02-29")
        #expect(feb28.adding(days: 2).description == "2028-03-01")
        let feb28NonLeap = try #require(PartitionManager.Day(year: 2027, month: 2, day: 28))
        #expect(feb28NonLeap.adding(days: 1).description == "2027-03-01")
        let newYearsEve = try #require(PartitionManager.Day(year: 2026, month: 12, day: 31))
        #expect(newYearsEve.adding(days: 1).compact == "20270101")
        #expect(PartitionManager.Day(year: 2027, month: 2, day: 29) == nil)
        #expect(PartitionManager.Day(year: 2100, month: 2, day: 29) == nil)
        #expect(PartitionManager.Day(year: 2000, month: 2, day: 29) != nil)
    }

    @Test func civilDatesRoundTripOverFourCenturies() throws {
        var day = try #require(PartitionManager.Day(year: 1900, month: 1, day: 1))
        for _ in 0..<(400 * 366) {
            let (year, month, date) = day.civil
            #expect(PartitionManager.Day(year: year, month: month, day: date) == day)
            day = day.adding(days: 1)
        }
    }

    @Test func partitionNamesParseBack() throws {
        let day = try #require(PartitionManager.Day(year: 2026, month: 3, day: 8))
        #expect(PartitionManager.day(ofPartition: "job_runs_p20260308", table: .jobRuns) == day)
        #expect(PartitionManager.day(ofPartition: "job_runs_p20260308", table: .messageLogs) == nil)
        #expect(PartitionManager.day(ofPartition: "job_runs_p2026030", table: .jobRuns) == nil)
        #expect(PartitionManager.day(ofPartition: "job_runs_p20260230", table: .jobRuns) == nil)
        #expect(PartitionManager.day(ofPartition: "job_runs_default", table: .jobRuns) == nil)
    }
}

@Suite struct PostgresArrayTests {
    @Test func quotesAndEscapesElements() {
        let array = PostgresArray([#"plain"#, #"with "quote""#, #"back\slash"#, nil, "{brace},comma"])
        #expect(array.postgresText == #"{"plain","with \"quote\"","back\\slash",NULL,"{brace},comma"}"#)
        #expect(PostgresArray([String?]()).postgresText == "{}")
    }
}
