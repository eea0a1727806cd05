import Foundation
import Hummingbird
import WarrenAuth
import WarrenJobs
import WarrenStore
import WarrenSupport

/// `/v1/dead`: the dead letters (``DeadLetterStore``): list them (`dead:read`), replay or discard
/// them (`dead:write`). A token sees its own tenant's; with the `admin` scope, every tenant's
/// and those of jobs published without one (`tenant` then filters).
extension HTTPAPI {
    /// Most dead letters one replay or discard takes (call again for more).
    static let maxDeadSettle = 10_000

    var deadLetterRoutes: RouteCollection<APIRequestContext> {
        let routes = RouteCollection(context: APIRequestContext.self)
        guarded(routes, .deadRead).get { request, context in
            try await listDead(request, token: context.authenticated())
        }
        let writes = guarded(routes, .deadWrite)
        writes.post("replay") { request, context in
            try await settleDead(request, token: context.authenticated(), replay: true)
        }
        writes.post("discard") { request, context in
            try await settleDead(request, token: context.authenticated(), replay: false)
        }
        return routes
    }

    /// `?reason=&type=&tier=&tenant=&since=&until=&state=&after=&limit=`: a page in id order,
    /// the `after` of the next one, and the counts by reason of everything the filter matches.
    private func listDead(_ request: Request, token: APIToken) async throws(APIError) -> Response {
        let query = request.uri.queryParameters
        var values: [String: String] = [:]
        for key in ["reason", "type", "tier", "tenant", "since", "until", "state", "after", "limit"] {
            if let value = query[Substring(key)] { values[key] = String(value) }
        }
        var filter = try Self.deadFilter(values, token: token)
        if let state = values["state"] {
            guard ["dead", "replayed", "discarded"].contains(state) else {
                throw APIError(.unprocessableContent, "invalid_field", "'state' must be dead, replayed or discarded", field: "state")
            }
            filter.state = state
        }
        var limit = 100
        if let text = values["limit"] {
            guard let value = Int(text), (1...1_000).contains(value) else {
                throw APIError(.unprocessableContent, "invalid_field", "'limit' must be from 1 to 1000", field: "limit")
            }
            limit = value
        }
        var after: Int64?
        if let text = values["after"] {
            guard let value = Int64(text), value >= 0 else {
                throw APIError(.unprocessableContent, "invalid_field", "'after' must be a dead letter's id", field: "after")
            }
            after = value
        }
        let store = DeadLetterStore(pool: pool)
        let rows = try await database { try await store.list(filter, after: after, limit: limit + 1) }
        let counts = try await database { try await store.countByReason(filter) }
        let page = rows.prefix(limit)
        return try json(.ok, DeadLetterList(dead: page.map(DeadLetterView.init), nextAfter: rows.count > limit ? page.last?.id : nil,
                                            byReason: counts.map { .init(reason: $0.reason, count: $0.count) }))
    }

    /// `POST /v1/dead/replay` and `/discard`: `{"ids": [...]}` or `{"filter": {...}}` (the list's
    /// filters), `"limit"` (1000, at most 10000); a replay also takes `"attempts": "reset"`
    /// (the default: a whole retry budget again) or `"keep"` (its next attempt).
    private func settleDead(_ request: Request, token: APIToken, replay: Bool) async throws(APIError) -> Response {
        let body = try await jsonBody(request)
        guard let members = try? JSONScanner.objectMembers(body) else {
            throw APIError(.badRequest, "invalid_json", "the body must be a JSON object")
        }
        let known: Set<String> = replay ? ["ids", "filter", "limit", "attempts"] : ["ids", "filter", "limit"]
        if let unknown = members.first(where: { !known.contains($0.key) }) {
            throw APIError(.unprocessableContent, "invalid_field", "unknown field '\(unknown.key)'", field: unknown.key)
        }
        let ids = members.first { $0.key == "ids" }
        let filterMember = members.first { $0.key == "filter" }
        var filter: DeadLetterStore.Filter
        switch (ids, filterMember) {
        case (.some(let member), nil):
            let bytes = Array(body[member.value])
            guard member.kind == .array, let elements = try? JSONScanner.arrayElements(bytes), !elements.isEmpty,
                  elements.count <= Self.maxDeadSettle else {
                throw APIError(.unprocessableContent, "invalid_field", "'ids' must be a list of 1 to \(Self.maxDeadSettle) dead letter ids",
                               field: "ids")
            }
            var list: [Int64] = []
            for element in elements {
                guard element.kind == .number, let id = JobRequest.integer(bytes[element.value]).map(Int64.init) else {
                    throw APIError(.unprocessableContent, "invalid_field", "'ids' must hold whole numbers", field: "ids")
                }
                list.append(id)
            }
            filter = try Self.deadFilter([:], token: token)
            filter.ids = list
        case (nil, .some(let member)):
            let bytes = Array(body[member.value])
            guard member.kind == .object, let fields = try? JSONScanner.objectMembers(bytes) else {
                throw APIError(.unprocessableContent, "invalid_field", "'filter' must be an object", field: "filter")
            }
            var values: [String: String] = [:]
            for field in fields {
                guard ["reason", "type", "tier", "tenant", "since", "until"].contains(field.key) else {
                    throw APIError(.unprocessableContent, "invalid_field", "unknown filter '\(field.key)'", field: "filter.\(field.key)")
                }
                guard field.kind == .string, let text = try? JSONScanner.string(bytes, at: field.value) else {
                    throw APIError(.unprocessableContent, "invalid_field", "filter '\(field.key)' must be a string", field: "filter.\(field.key)")
                }
                values[field.key] = text
            }
            filter = try Self.deadFilter(values, token: token)
        default:
            throw APIError(.unprocessableContent, "invalid_field", "give 'ids' or 'filter' (one of them)", field: "ids")
        }
        let fields = PayloadFields(body)
        var limit = 1_000
        if let member = members.first(where: { $0.key == "limit" }) {
            guard member.kind == .number, let value = JobRequest.integer(body[member.value]), (1...Self.maxDeadSettle).contains(value) else {
                throw APIError(.unprocessableContent, "invalid_field", "'limit' must be from 1 to \(Self.maxDeadSettle)", field: "limit")
            }
            limit = value
        }
        let by = "token \(token.prefix)"
        let store = DeadLetterStore(pool: pool)
        guard replay else {
            let discarded = try await database { try await store.discard(filter, by: by, limit: limit) }
            return try json(.ok, DeadDiscarded(discarded: discarded.count, ids: discarded))
        }
        var reset = true
        if members.contains(where: { $0.key == "attempts" }) {
            switch fields?.string("attempts") {
            case "reset"?: reset = true
            case "keep"?: reset = false
            default: throw APIError(.unprocessableContent, "invalid_field", "'attempts' must be reset or keep", field: "attempts")
            }
        }
        return try json(.ok, try await replayDead(filter, resetAttempts: reset, by: by, limit: limit))
    }

    /// Replays the dead letters `filter` selects (the API's replay, and the console's buttons):
    /// each job is entered in the outbox in the transaction that marks its dead letter, then
    /// published now, with confirms; any not confirmed goes out with the outbox's dispatcher.
    func replayDead(_ filter: DeadLetterStore.Filter, resetAttempts: Bool = true, by: String, limit: Int) async throws(APIError) -> DeadReplayed {
        let settled = try await database { try await DeadLetterStore(pool: pool).replay(filter, resetAttempts: resetAttempts, by: by, limit: limit) }
        let results = await Outbox(pool: pool).publish(settled.jobs, with: publisher)
        let confirmed = results.filter { (try? $0.get()) != nil }.count
        return DeadReplayed(replayed: settled.ids.count, ids: settled.ids, jobs: settled.jobs.map(\.id.lowercasedString), published: confirmed)
    }

    /// The filter from query or body values; a token without `admin` sees only its tenant.
    static func deadFilter(_ values: [String: String], token: APIToken) throws(APIError) -> DeadLetterStore.Filter {
        var filter = DeadLetterStore.Filter(reason: values["reason"], type: values["type"])
        if let tier = values["tier"] {
            guard let parsed = Tier(rawValue: tier) else {
                throw APIError(.unprocessableContent, "invalid_field", "'tier' must be enterprise, premium or free", field: "tier")
            }
            filter.tier = parsed
        }
        for key in ["since", "until"] {
            guard let text = values[key] else { continue }
            guard let instant = Timestamp(iso8601: text) else {
                throw APIError(.unprocessableContent, "invalid_field", "'\(key)' must be an ISO 8601 instant with its offset", field: key)
            }
            if key == "since" { filter.since = instant } else { filter.until = instant }
        }
        if token.allows(.admin) {
            filter.tenant = values["tenant"]
        } else {
            if let tenant = values["tenant"], tenant != token.tenant {
                throw APIError(.forbidden, "forbidden", "this token sees only tenant '\(token.tenant)' (another needs the admin scope)")
            }
            filter.tenant = token.tenant
        }
        return filter
    }
}

struct DeadLetterList: Encodable, Sendable {
    var dead: [DeadLetterView]
    @Null var nextAfter: Int64?
    var byReason: [ReasonCount]

    struct ReasonCount: Encodable, Sendable {
        var reason: String
        var count: Int
    }

    enum CodingKeys: String, CodingKey { case dead, nextAfter = "next_after", byReason = "by_reason" }
}

struct DeadDiscarded: Encodable, Sendable {
    var discarded: Int
    var ids: [Int64]
}

struct DeadReplayed: Encodable, Sendable {
    var replayed: Int
    var ids: [Int64]
    var jobs: [String]
    var published: Int
}

/// One dead letter; `payload` is its JSON, or the body as a string when it was not JSON.
struct DeadLetterView: Encodable, Sendable {
    var id: Int64
    @Null var jobID: String?
    @Null var type: String?
    @Null var tier: String?
    @Null var tenant: String?
    var reason: String
    @Null var error: String?
    @Null var attempt: Int?
    var payload: JSONFragment
    @Null var enqueuedAt: String?
    var deadAt: String
    var state: String
    var replayable: Bool
    @Null var settledAt: String?

    enum CodingKeys: String, CodingKey {
        case id, type, tier, tenant, reason, error, attempt, payload, state, replayable
        case jobID = "job_id", enqueuedAt = "enqueued_at", deadAt = "dead_at", settledAt = "settled_at"
    }

    init(_ dead: DeadLetterStore.DeadLetter) {
        id = dead.id
        jobID = dead.jobID?.lowercasedString
        type = dead.type
        tier = dead.tier
        tenant = dead.tenant
        reason = dead.reason
        error = dead.error
        attempt = dead.attempt.map { Int($0) }
        payload = JSONFragment(dead.payload)
        enqueuedAt = dead.enqueuedAt?.iso8601
        deadAt = dead.deadAt.iso8601
        state = dead.state
        replayable = dead.replayable
        settledAt = dead.settledAt?.iso8601
    }
}
