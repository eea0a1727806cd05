import Foundation
import Hummingbird
import WarrenAuth
import WarrenJobs
import WarrenStore
import WarrenSupport

/// `/v1/schedules`: cron schedules in IANA time zones, by name within the tenant, publishing a
/// job in the token's tier at each fire. Scope `schedules:write` for every route.
extension HTTPAPI {
    static let scheduleFields: Set<String> = ["name", "cron", "time_zone", "type", "payload", "enabled", "catch_up_seconds"]

    var scheduleRoutes: RouteCollection<APIRequestContext> {
        let collection = RouteCollection(context: APIRequestContext.self)
        let routes = guarded(collection, .schedulesWrite)
        routes.post { request, context in
            let token = try context.authenticated()
            let fields = try RequestFields(try await jsonBody(request), allowed: Self.scheduleFields)
            let name = try Self.scheduleName(try fields.required("name", maxLength: 100))
            guard let created = try await putSchedule(fields, name: name, token: token, replace: false) else {
                throw APIError(.conflict, "schedule_exists", "a schedule named '\(name)' exists; PUT /v1/schedules/\(name) changes it",
                               field: "name")
            }
            return try json(.created, created)
        }
        routes.get { _, context in
            let token = try context.authenticated()
            let all = try await database { try await schedules.list(tenant: token.tenant) }
            return try json(.ok, ScheduleList(schedules: all.map(ScheduleView.init)))
        }
        routes.get(":name") { _, context in
            let token = try context.authenticated()
            let name = context.parameters.get("name") ?? ""
            guard let schedule = try await database({ try await schedules.get(tenant: token.tenant, name: name) }) else {
                throw APIError(.notFound, "not_found", "no such schedule")
            }
            return try json(.ok, ScheduleView(schedule))
        }
        routes.put(":name") { request, context in
            let token = try context.authenticated()
            let name = try Self.scheduleName(context.parameters.get("name") ?? "")
            let fields = try RequestFields(try await jsonBody(request), allowed: Self.scheduleFields)
            if let inBody = try fields.string("name", maxLength: 100), inBody != name {
                throw RequestFields.invalid("name", "'name' differs from the name in the path")
            }
            guard let stored = try await putSchedule(fields, name: name, token: token, replace: true) else {
                throw APIError(.internalServerError, "internal", "the schedule was not stored")
            }
            return try json(.ok, stored)
        }
        routes.delete(":name") { _, context in
            let token = try context.authenticated()
            let name = context.parameters.get("name") ?? ""
            guard try await database({ try await schedules.remove(tenant: token.tenant, name: name) }) else {
                throw APIError(.notFound, "not_found", "no such schedule")
            }
            return Response(status: .noContent)
        }
        return collection
    }

    /// Validates every field, then stores the schedule (created, or replaced whole); its
    /// first fire is the first after now. Returns the stored schedule as JSON (nil: it exists
    /// and `replace` is false).
    private func putSchedule(_ fields: RequestFields, name: String, token: APIToken, replace: Bool) async throws(APIError) -> ScheduleView? {
        let cron = try fields.required("cron", maxLength: 200)
        let zone = try fields.timeZone("time_zone")
        let now = Timestamp.now()
        do {
            guard try CronSchedule(cron, zone: zone).next(after: now.microseconds.floorDiv(1_000_000)) != nil else {
                throw RequestFields.invalid("cron", "'cron': no fire within the next 30 years")
            }
        } catch let error as APIError {
            throw error
        } catch {
            throw RequestFields.invalid("cron", "'cron': \(error)")
        }
        let type = try fields.required("type", maxLength: 100)
        guard knownTypes.contains(type) else {
            throw APIError(.unprocessableContent, "unknown_type",
                           "unknown job type '\(type)' (known: \(knownTypes.sorted().joined(separator: ", ")))", field: "type")
        }
        let payload = try fields.object("payload") ?? "{}"
        let enabled = try fields.bool("enabled") ?? true
        let catchUp = try fields.int("catch_up_seconds", in: 0...(366 * 86_400)) ?? 86_400
        let stored = try await database {
            try await schedules.put(tenant: token.tenant, name: name, cron: cron, timeZone: zone, jobType: type, tier: token.tier,
                                    payload: payload, enabled: enabled, catchUpSeconds: catchUp, replace: replace, now: now)
        }
        return stored.map(ScheduleView.init)
    }

    /// Names go in paths: letters, digits, `.`, `_` and `-`, 1 to 100 of them.
    private static func scheduleName(_ name: String) throws(APIError) -> String {
        guard (1...100).contains(name.count),
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
            throw RequestFields.invalid("name", "'name' must be 1 to 100 letters, digits, '.', '_' or '-'")
        }
        return name
    }

}

struct ScheduleList: Encodable, Sendable {
    var schedules: [ScheduleView]
}

/// A schedule, with its next three fires in its zone. One the leader disabled because it no
/// longer evaluates has `enabled: false`, no `next_fires`, and its error in `disabled_reason`
/// (null otherwise) until it is written again.
struct ScheduleView: Encodable, Sendable {
    var id: String
    var name: String
    var cron: String
    var timeZone: String
    var type: String
    var tier: String
    var payload: JSONFragment
    var enabled: Bool
    var catchUpSeconds: Int
    var nextFires: [String]
    @Null var disabledReason: String?
    @Null var disabledAt: String?

    enum CodingKeys: String, CodingKey {
        case id, name, cron, type, tier, payload, enabled
        case timeZone = "time_zone", catchUpSeconds = "catch_up_seconds", nextFires = "next_fires", disabledReason = "disabled_reason"
        case disabledAt = "disabled_at"
    }

    init(_ schedule: ScheduleStore.Schedule) {
        var next: [String] = []
        if let cron = try? CronSchedule(schedule.cron, zone: schedule.timeZone) {
            var instant = schedule.nextFireAt.microseconds.floorDiv(1_000_000)
            for _ in 0..<3 {
                next.append(WallClock.iso8601(instant, in: cron.zone))
                guard let following = cron.next(after: instant) else { break }
                instant = following
            }
        }
        id = schedule.id.lowercasedString
        name = schedule.name
        cron = schedule.cron
        timeZone = schedule.timeZone
        type = schedule.jobType
        tier = schedule.tier.rawValue
        payload = JSONFragment(schedule.payload)
        enabled = schedule.enabled
        catchUpSeconds = schedule.catchUpSeconds
        nextFires = next
        disabledReason = schedule.disabledReason
        disabledAt = schedule.disabledAt?.iso8601
    }
}
