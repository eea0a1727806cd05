import ArgumentParser
import Foundation
import WarrenSupport

/// `scheduler cron next "0 9 * * *" --tz America/New_York --from 2026-03-07T00:00:00Z --count 5`:
/// the next fire instants, one per line, in ISO 8601 with the zone's offset, to check a
/// schedule by eye before creating it.
struct CronCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cron", abstract: "Check cron expressions.", subcommands: [NextCommand.self])

    struct NextCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "next", abstract: "Print the next fire instants.")

        @Argument(help: "Five fields: minute hour day-of-month month day-of-week, e.g. \"0 9 * * MON-FRI\".")
        var expression: String

        @Option(help: "IANA time zone the expression is read in.")
        var tz = "UTC"

        @Option(help: "Start after this instant (ISO 8601, e.g. 2026-03-07T00:00:00Z; default: now).")
        var from: String?

        @Option(help: "How many fires to print.")
        var count = 5

        /// Checks every argument before anything runs, so a bad one is a usage error naming it
        /// (with this command's usage).
        func validate() throws {
            guard (1...10_000).contains(count) else { throw ValidationError("--count must be 1...10000") }
            do { _ = try CronSchedule(expression, zone: tz) } catch { throw ValidationError("\(error)") }
            if let from, Timestamp(iso8601: from) == nil {
                throw ValidationError("--from: expected an ISO 8601 instant such as 2026-03-07T00:00:00Z, got '\(from)'")
            }
        }

        func run() async throws {
            let schedule = try CronSchedule(expression, zone: tz)
            let start = (from.flatMap { Timestamp(iso8601: $0) } ?? Timestamp.now()).microseconds.floorDiv(1_000_000)
            // Fires are whole minutes; starting at one (or between) the search starts after it.
            let fires = schedule.fires(after: start - 1, count: count)
            for fire in fires { print(WallClock.iso8601(fire, in: schedule.zone)) }
            if fires.count < count { FileHandle.standardError.write(Data("no further fires within 30 years\n".utf8)) }
        }
    }
}
