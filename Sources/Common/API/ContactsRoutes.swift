import Foundation
import Hummingbird
import WarrenAuth
import WarrenJobs
import WarrenStore
import WarrenSupport

/// `/v1/contacts`: people whose birthday (and anniversary) messages the scheduler sends at
/// 09:00 in their own time zone, as `message.send` jobs in the token's tier. Scope
/// `contacts:write` for every route; a tenant sees only its own contacts.
extension HTTPAPI {
    static let contactFields: Set<String> = ["first_name", "last_name", "email", "birthday", "anniversary", "time_zone"]

    var contactRoutes: RouteCollection<APIRequestContext> {
        let collection = RouteCollection(context: APIRequestContext.self)
        let routes = guarded(collection, .contactsWrite)
        routes.post { request, context in
            var contact = try await parseContact(request, token: context.authenticated())
            contact.id = JobID.make()
            try await database { try await contacts.create(contact) }
            return try json(.created, ContactView(contact))
        }
        routes.get { request, context in
            try await listContacts(request, token: context.authenticated())
        }
        routes.get(":id") { _, context in
            let token = try context.authenticated()
            let id = try Self.contactID(context.parameters.get("id"))
            guard let contact = try await database({ try await contacts.get(id: id, tenant: token.tenant) }) else {
                throw APIError(.notFound, "not_found", "no such contact")
            }
            return try json(.ok, ContactView(contact))
        }
        routes.put(":id") { request, context in
            let id = try Self.contactID(context.parameters.get("id"))
            var contact = try await parseContact(request, token: context.authenticated())
            contact.id = id
            guard let stored = try await database({ try await contacts.replace(contact) }) else {
                throw APIError(.notFound, "not_found", "no such contact")
            }
            return try json(.ok, ContactView(stored))
        }
        routes.delete(":id") { _, context in
            let token = try context.authenticated()
            let id = try Self.contactID(context.parameters.get("id"))
            guard try await database({ try await contacts.delete(id: id, tenant: token.tenant) }) else {
                throw APIError(.notFound, "not_found", "no such contact")
            }
            return Response(status: .noContent)
        }
        return collection
    }

    /// A whole contact from the body (PUT replaces every field; a missing `anniversary` clears it).
    private func parseContact(_ request: Request, token: APIToken) async throws(APIError) -> Contact {
        let fields = try RequestFields(try await jsonBody(request), allowed: Self.contactFields)
        let email = try fields.required("email", maxLength: 320)
        // docs/openapi.yaml's pattern, exactly: one `@`, something before it, a dot after it,
        // no white space (Unicode's White_Space) or control character anywhere.
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        let blank = email.unicodeScalars.contains { $0.properties.isWhitespace || $0.properties.generalCategory == .control }
        guard parts.count == 2, !parts[0].isEmpty, parts[1].contains("."), !blank else {
            throw RequestFields.invalid("email", "'email' must be an address like ada@example.com")
        }
        let birthday = try fields.date("birthday", required: true)!
        let anniversary = try fields.date("anniversary", required: false)
        let today = CivilDate(daysSinceEpoch: Int(Timestamp.now().microseconds.floorDiv(86_400_000_000)))
        guard birthday <= today.adding(days: 1) else { throw RequestFields.invalid("birthday", "'birthday' is in the future") }
        if let anniversary, anniversary > today.adding(days: 1) {
            throw RequestFields.invalid("anniversary", "'anniversary' is in the future")
        }
        return Contact(tenant: token.tenant, tier: token.tier, firstName: try fields.required("first_name"),
                       lastName: try fields.required("last_name"), email: email, birthday: birthday, anniversary: anniversary,
                       timeZone: try fields.timeZone("time_zone"))
    }

    /// `?limit=100&after=<id>`: a page in id order, and the `after` for the next one.
    private func listContacts(_ request: Request, token: APIToken) async throws(APIError) -> Response {
        let query = request.uri.queryParameters
        var limit = 100
        if let text = query["limit"] {
            guard let value = Int(String(text)), (1...1_000).contains(value) else {
                throw APIError(.unprocessableContent, "invalid_field", "'limit' must be from 1 to 1000", field: "limit")
            }
            limit = value
        }
        var after: UUID?
        if let text = query["after"] {
            guard let id = UUID(uuidString: String(text)) else {
                throw APIError(.unprocessableContent, "invalid_field", "'after' must be a contact id", field: "after")
            }
            after = id
        }
        // One row more than the page tells whether another page follows: a last page that
        // happens to be full still answers `next_after: null`, as documented.
        let rows = try await database { try await contacts.list(tenant: token.tenant, after: after, limit: limit + 1) }
        let page = rows.prefix(limit)
        return try json(.ok, ContactList(contacts: page.map(ContactView.init),
                                         nextAfter: rows.count > limit ? page.last?.id.lowercasedString : nil))
    }

    private static func contactID(_ text: String?) throws(APIError) -> UUID {
        guard let text, let id = UUID(uuidString: text) else { throw APIError(.notFound, "not_found", "no such contact") }
        return id
    }
}

struct ContactList: Encodable, Sendable {
    var contacts: [ContactView]
    @Null var nextAfter: String?

    enum CodingKeys: String, CodingKey { case contacts, nextAfter = "next_after" }
}

struct ContactView: Encodable, Sendable {
    var id: String
    var firstName: String
    var lastName: String
    var email: String
    var birthday: String
    @Null var anniversary: String?
    var timeZone: String
    var tier: String

    enum CodingKeys: String, CodingKey {
        case id, email, birthday, anniversary, tier
        case firstName = "first_name", lastName = "last_name", timeZone = "time_zone"
    }

    init(_ contact: Contact) {
        id = contact.id.lowercasedString
        firstName = contact.firstName
        lastName = contact.lastName
        email = contact.email
        birthday = "\(contact.birthday)"
        anniversary = contact.anniversary.map { "\($0)" }
        timeZone = contact.timeZone
        tier = contact.tier.rawValue
    }
}
