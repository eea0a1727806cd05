import Foundation
import WarrenSupport

/// A request to enqueue one job, as scripts and API clients write it:
/// `{"type": "email.welcome", "tier": "premium", "payload": {...}, "idempotency_key": "...", "tenant": "...",
/// "concurrency_key": "...", "concurrency_limit": 1}`.
package struct JobRequest: Sendable, Equatable {
    package var type: String
    package var tier: Tier
    package var payload: [UInt8]
    package var idempotencyKey: String?
    package var tenant: String?
    /// At most `concurrencyLimit` (default 1) jobs of this key run at once, fleet-wide.
    package var concurrencyKey: String?
    package var concurrencyLimit: Int

    package init(type: String, tier: Tier, payload: [UInt8], idempotencyKey: String? = nil, tenant: String? = nil,
                 concurrencyKey: String? = nil, concurrencyLimit: Int? = nil) throws(JobError) {
        try self.init(type: type, tier: tier, payload: payload, idempotencyKey: idempotencyKey, tenant: tenant,
                      concurrencyKey: concurrencyKey, concurrencyLimit: concurrencyLimit, payloadValidated: false)
    }

    private init(type: String, tier: Tier, payload: [UInt8], idempotencyKey: String?, tenant: String?,
                 concurrencyKey: String?, concurrencyLimit: Int?, payloadValidated: Bool) throws(JobError) {
        try JobEnvelope.validateType(type)
        if !payloadValidated { try JobEnvelope.validatePayload(payload) }
        if let idempotencyKey { try Self.validateKey(idempotencyKey, field: "idempotency_key") }
        if let tenant { try Self.validateKey(tenant, field: "tenant") }
        if let concurrencyKey { try JobEnvelope.validateConcurrencyKey(concurrencyKey) }
        if let concurrencyLimit {
            guard concurrencyKey != nil else {
                throw JobError(field: "concurrency_limit", message: "concurrency_limit needs a concurrency_key")
            }
            try JobEnvelope.validateConcurrencyLimit(concurrencyLimit)
        }
        self.type = type
        self.tier = tier
        self.payload = payload
        self.idempotencyKey = idempotencyKey
        self.tenant = tenant
        self.concurrencyKey = concurrencyKey
        self.concurrencyLimit = concurrencyLimit ?? 1
    }

    /// A JSON number's value when it is a whole one (`192`, or `192.0` / `1.92e2`, which JSON
    /// Schema's `integer` also allows); nil for any other number or value.
    package static func integer(_ text: some Collection<UInt8>) -> Int? {
        let string = String(decoding: Array(text), as: UTF8.self)
        guard !string.isEmpty else { return nil }
        if string.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "-") }) {
            return Int(string)
        }
        guard string.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || "-+.eE".utf8.contains($0) }),
              let value = Double(string), value.rounded() == value, abs(value) < 9.0e18 else { return nil }
        return Int(value)
    }

    /// Parses one JSON object (a line of a `--jsonl` file). `defaultTier` applies when the
    /// object has no `tier`. Unknown and duplicate keys are rejected so typos do not pass
    /// silently. The payload is kept exactly as written (absent or `null` means `{}`).
    package init(jsonLine line: some Collection<UInt8>, defaultTier: Tier? = nil) throws(JobError) {
        let bytes = Array(line)
        let members: [JSONScanner.Member]
        do {
            members = try JSONScanner.objectMembers(bytes)
        } catch {
            throw JobError(message: error.reason == "expected a JSON object" ? "expected a JSON object" : "not valid JSON: \(error)")
        }
        if let unknown = members.first(where: { !Self.fields.contains($0.key) }) {
            throw JobError(field: unknown.key,
                           message: "unknown field '\(unknown.key)' (expected \(Self.fields.sorted().joined(separator: ", ")))")
        }
        func member(_ key: String) -> JSONScanner.Member? {
            members.first { $0.key == key && $0.kind != .null }
        }
        func string(_ key: String) throws(JobError) -> String? {
            guard let member = member(key) else { return nil }
            guard member.kind == .string else { throw JobError(field: key, message: "'\(key)' must be a string") }
            do {
                return try JSONScanner.string(bytes, at: member.value)
            } catch {
                throw JobError(field: key, message: "'\(key)' is not a valid string")
            }
        }
        guard let typeName = try string("type") else { throw JobError(field: "type", message: "missing field 'type'") }
        let tier: Tier
        if let tierName = try string("tier") {
            tier = try Tier.parse(tierName)
        } else if let defaultTier {
            tier = defaultTier
        } else {
            throw JobError(field: "tier", message: "missing field 'tier'")
        }
        let payload = member("payload").map { Array(bytes[$0.value]) } ?? Array("{}".utf8)
        let idempotencyKey = try string("idempotency_key")
        let tenant = try string("tenant")
        let concurrencyKey = try string("concurrency_key")
        var concurrencyLimit: Int?
        if let limit = member("concurrency_limit") {
            guard limit.kind == .number, let value = Self.integer(bytes[limit.value]) else {
                throw JobError(field: "concurrency_limit", message: "'concurrency_limit' must be an integer 1...\(JobEnvelope.maxConcurrencyLimit)")
            }
            concurrencyLimit = value
        }
        // The scanner has validated the payload as part of the line.
        try self.init(type: typeName, tier: tier, payload: payload, idempotencyKey: idempotencyKey, tenant: tenant,
                      concurrencyKey: concurrencyKey, concurrencyLimit: concurrencyLimit, payloadValidated: true)
    }

    private static let fields: Set<String> = ["type", "tier", "payload", "idempotency_key", "tenant", "concurrency_key", "concurrency_limit"]

    /// A new envelope for this request (fresh id, enqueued now).
    package func envelope(correlationID: String? = nil, enqueuedAt: Timestamp = .now()) -> JobEnvelope {
        JobEnvelope(type: type, tier: tier, payload: payload, tenant: tenant, idempotencyKey: idempotencyKey,
                    correlationID: correlationID, enqueuedAt: enqueuedAt, concurrencyKey: concurrencyKey, concurrencyLimit: concurrencyLimit)
    }

    private static func validateKey(_ value: String, field: String) throws(JobError) {
        guard !value.isEmpty, value.utf8.count <= 255 else {
            throw JobError(field: field, message: "'\(field)' must be 1 to 255 bytes")
        }
        guard !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw JobError(field: field, message: "'\(field)' must not contain control characters")
        }
    }
}
