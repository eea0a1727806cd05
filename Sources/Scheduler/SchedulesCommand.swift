import ArgumentParser
import Foundation
import Logging
import WarrenConfig
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// `scheduler schedules add|list|rm`: cron schedules stored in Postgres.
struct SchedulesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schedules", abstract: "Manage cron schedules.", subcommands: [Add.self, List.self, Remove.self])

    /// A command that could not do what it was asked (not a usage error): `Error: <message>`,
    /// exit status 1.
    struct Failure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    static func withStore<T: Sendable>(_ body: (ScheduleStore) async throws -> T) async throws -> T {
        do {
            return try await PostgresPool.withMigrated(applicationName: "warren-schedules") { try await body(ScheduleStore(pool: $0)) }
        } catch let error as SettingsError {
            throw ValidationError("\(error)")
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a schedule, or replace the tenant's schedule of that name; prints its next fires.")

        @Option(help: "Tenant the jobs belong to.") var tenant: String
        @Option(help: "Schedule name, unique within the tenant.") var name: String
        @Option(help: "Five-field cron expression, e.g. \"0 9 * * MON-FRI\".") var cron: String
        @Option(help: "IANA time zone the expression is read in.") var tz: String
        @Option(help: "Job type to publish.") var type: String
        @Option(help: "Tier of the jobs: enterprise, premium or free.") var tier: String
        @Option(help: "Job payload (JSON).") var payload = "{}"
        @Option(help: "Seconds within which fires missed while no scheduler ran are still published (0 skips them).")
        var catchUp = 86_400
        @Flag(help: "Store it disabled.") var disabled = false

        /// Checks every argument before the database is touched: a bad one is a usage error
        /// naming it, and nothing is stored.
        func validate() throws {
            do { _ = try Tier.parse(tier) } catch { throw ValidationError("--tier: \(error.message)") }
            do { try JobEnvelope.validateType(type) } catch { throw ValidationError("--type: \(error.message)") }
            guard (try? JSONScanner.validate(Array(payload.utf8))) != nil else { throw ValidationError("--payload is not valid JSON") }
            guard catchUp >= 0 else { throw ValidationError("--catch-up must be 0 or more seconds") }
            do { _ = try CronSchedule(cron, zone: tz) } catch { throw ValidationError("\(error)") }
        }

        func run() async throws {
            let parsedTier = try Tier.parse(tier)
            let schedule = try CronSchedule(cron, zone: tz)
            guard let stored = try await SchedulesCommand.withStore({ store in
                try await store.put(tenant: tenant, name: name, cron: cron, timeZone: tz, jobType: type, tier: parsedTier,
                                    payload: payload, enabled: !disabled, catchUpSeconds: catchUp, now: .now())
            }) else { throw SchedulesCommand.Failure(message: "the schedule was not stored") }
            print("\(stored.tenant)/\(stored.name) \(stored.id.lowercasedString): next fires")
            for fire in schedule.fires(after: stored.nextFireAt.microseconds / 1_000_000 - 1, count: 3) {
                print("  \(WallClock.iso8601(fire, in: schedule.zone))")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List schedules (tab-separated); disabled_reason says why the scheduler disabled one, '-' if it did not.")

        @Option(help: "Only this tenant's.") var tenant: String?

        /// Tabs and line breaks in a stored expression's error would break the columns.
        static func oneLine(_ text: String) -> String {
            String(text.map { $0 == "\t" || $0.isNewline ? " " : $0 })
        }

        func run() async throws {
            let schedules = try await SchedulesCommand.withStore { try await $0.list(tenant: tenant) }
            print(["tenant", "name", "cron", "time_zone", "type", "tier", "enabled", "catch_up_s", "next_fire", "disabled_reason"]
                .joined(separator: "\t"))
            for schedule in schedules {
                let zone = (try? CronSchedule.zone(schedule.timeZone)) ?? TimeZone(identifier: "UTC")!
                // A schedule that no longer evaluates has no next fire; its reason says why.
                let next = schedule.disabledReason == nil ? WallClock.iso8601(schedule.nextFireAt.microseconds / 1_000_000, in: zone) : "-"
                print([schedule.tenant, schedule.name, schedule.cron, schedule.timeZone, schedule.jobType, schedule.tier.rawValue,
                       String(schedule.enabled), String(schedule.catchUpSeconds), next,
                       Self.oneLine(schedule.disabledReason ?? "-")].joined(separator: "\t"))
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a schedule (its fires stop).")

        @Option(help: "Tenant.") var tenant: String
        @Option(help: "Schedule name.") var name: String

        func run() async throws {
            let removed = try await SchedulesCommand.withStore { try await $0.remove(tenant: tenant, name: name) }
            guard removed else { throw SchedulesCommand.Failure(message: "no schedule '\(name)' for tenant '\(tenant)'") }
            print("removed \(tenant)/\(name)")
        }
    }
}
