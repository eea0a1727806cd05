import Foundation
import Hummingbird
import WarrenAuth
import WarrenJobs
import WarrenStore
import WarrenSupport

/// `/v1/dead`: the dead letters (``DeadLetterStore``): list them (`dead:read`), replay or discard
/// them (`dead:write`). A token sees its own tenant's; with the `admin` scope, every tenant's
/// and those of jobs published without one (`tenant` then filters).
extension JobsAPI {
    /// Most dead letters one replay or discard takes (call again for more).
    static let maxDeadSettle = 10_000

    func addDeadLetterRoutes(to router: Router<BasicRequestContext>) {
        router.get("v1/dead") { request, _ in
            await logged(request, route: "/v1/dead") { (_: String) async throws(APIError) -> (Response, String?) in
                try await rateLimited(request, scope: .deadRead) { (token) async throws(APIError) in
                    try await listDead(request, token: token)
                }
            }
        }
        router.post("v1/dead/replay") { request, _ in
            await logged(request, route: "/v1/dead/replay") { (_: String) async throws(APIError) -> (Response, String?) in
                try await rateLimited(request, scope: .deadWrite) { (token) async throws(APIError) in
                    try await settleDead(request, token: token, replay: true)
                }
            }
        }
        router.post("v1/dead/discard") { request, _ in
            await logged(request, route: "/v1/dead/discard") { (_: String) async throws(APIError) -> (Response, String?) in
                try await rateLimited(request, scope: .deadWrite) { (token) async throws(APIError) in
                    try await settleDead(request, token: token, replay: false)
                }
            }
        }
    }

    /// `?reason=&type=&tier=&tenant=&since=&until=&state=&after=&limit=`: a page in id order,
    /// the `after` of the next one, and the counts by reason of everything the filter matches.
    private func listDead(_ request: Request, token: APIToken) async throws(APIError) -> (Response, String?) {
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
        let next = rows.count > limit ? page.last.map { String($0.id) } ?? "null" : "null"
        let reasons = counts.map { #"{"reason":\#(JSONText.quoted($0.reason)),"count":\#($0.count)}"# }.joined(separator: ",")
        return (json(.ok, #"{"dead":[\#(page.map(Self.deadJSON).joined(separator: ","))],"next_after":\#(next),"by_reason":[\#(reasons)]}"#),
                token.tenant)
    }

    /// `POST /v1/dead/replay` and `/discard`: `{"ids": [...]}` or `{"filter": {...}}` (the list's
    /// filters), `"limit"` (1000, at most 10000); a replay also takes `"attempts": "reset"`
    /// (the default: a whole retry budget again) or `"keep"` (its next attempt).
    private func settleDead(_ request: Request, token: APIToken, replay: Bool) async throws(APIError) -> (Response, String?) {
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
            return (json(.ok, #"{"discarded":\#(discarded.count),"ids":[\#(discarded.map(String.init).joined(separator: ","))]}"#), token.tenant)
        }
        var reset = true
        if members.contains(where: { $0.key == "attempts" }) {
            switch fields?.string("attempts") {
            case "reset"?: reset = true
            case "keep"?: reset = false
            default: throw APIError(.unprocessableContent, "invalid_field", "'attempts' must be reset or keep", field: "attempts")
            }
        }
        let settled = try await database { try await store.replay(filter, resetAttempts: reset, by: by, limit: limit) }
        // Published now, with confirms; any not confirmed goes out with the outbox's dispatcher.
        let results = await Outbox(pool: pool).publish(settled.jobs, with: publisher)
        let confirmed = results.filter { (try? $0.get()) != nil }.count
        let jobs = settled.jobs.map { #""\#($0.id.lowercasedString)""# }.joined(separator: ",")
        return (json(.ok, #"{"replayed":\#(settled.ids.count),"ids":[\#(settled.ids.map(String.init).joined(separator: ","))],"jobs":[\#(jobs)],"published":\#(confirmed)}"#),
                token.tenant)
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

    static func deadJSON(_ dead: DeadLetterStore.DeadLetter) -> String {
        func text(_ value: String?) -> String { value.map(JSONText.quoted) ?? "null" }
        let payload = (try? JSONScanner.validate(Array(dead.payload.utf8))) != nil ? dead.payload : JSONText.quoted(dead.payload)
        return #"{"id":\#(dead.id),"job_id":\#(text(dead.jobID?.lowercasedString)),"type":\#(text(dead.type)),"tier":\#(text(dead.tier)),"tenant":\#(text(dead.tenant)),"reason":\#(JSONText.quoted(dead.reason)),"error":\#(text(dead.error)),"attempt":\#(dead.attempt.map(String.init) ?? "null"),"payload":\#(payload),"enqueued_at":\#(text(dead.enqueuedAt?.iso8601)),"dead_at":"\#(dead.deadAt.iso8601)","state":"\#(dead.state)","replayable":\#(dead.replayable),"settled_at":\#(text(dead.settledAt?.iso8601))}"#
    }
}
