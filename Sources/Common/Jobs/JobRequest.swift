import Foundation

/// A request to enqueue one job, as scripts and API clients write it:
/// `{"type": "email.welcome", "tier": "premium", "payload": {...}, "idempotency_key": "...", "tenant": "..."}`.
package struct JobRequest: Sendable, Equatable {
    package var type: String
    package var tier: Tier
    package var payload: [UInt8]
    package var idempotencyKey: String?
    package var tenant: String?

    package init(type: String, tier: Tier, payload: [UInt8], idempotencyKey: String? = nil, tenant: String? = nil) throws(JobError) {
        try JobEnvelope.validateType(type)
        try JobEnvelope.validatePayload(payload)
        if let idempotencyKey { try Self.validateKey(idempotencyKey, field: "idempotency_key") }
        if let tenant { try Self.validateKey(tenant, field: "tenant") }
        self.type = type
        self.tier = tier
        self.payload = payload
        self.idempotencyKey = idempotencyKey
        self.tenant = tenant
    }

    /// Parses one JSON object (a line of a `--jsonl` file). `defaultTier` applies when the
    /// object has no `tier`. Unknown keys are rejected so typos do not pass silently.
    package init(jsonLine line: some Collection<UInt8>, defaultTier: Tier? = nil) throws(JobError) {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(line), options: [])
        } catch {
            throw JobError(message: "not valid JSON")
        }
        guard let fields = object as? [String: Any] else { throw JobError(message: "expected a JSON object") }
        let known: Set<String> = ["type", "tier", "payload", "idempotency_key", "tenant"]
        if let unknown = fields.keys.filter({ !known.contains($0) }).sorted().first {
            throw JobError(field: unknown, message: "unknown field '\(unknown)' (expected \(known.sorted().joined(separator: ", ")))")
        }
        guard let type = fields["type"] else { throw JobError(field: "type", message: "missing field 'type'") }
        guard let typeName = type as? String else { throw JobError(field: "type", message: "'type' must be a string") }
        let tier: Tier
        if let tierValue = fields["tier"] {
            guard let tierName = tierValue as? String else { throw JobError(field: "tier", message: "'tier' must be a string") }
            tier = try Tier.parse(tierName)
        } else if let defaultTier {
            tier = defaultTier
        } else {
            throw JobError(field: "tier", message: "missing field 'tier'")
        }
        let payload: [UInt8]
        if let value = fields["payload"], !(value is NSNull) {
            do {
                payload = [UInt8](try JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys]))
            } catch {
                throw JobError(field: "payload", message: "'payload' cannot be encoded as JSON")
            }
        } else {
            payload = Array("{}".utf8)
        }
        func optionalString(_ key: String) throws(JobError) -> String? {
            guard let value = fields[key], !(value is NSNull) else { return nil }
            guard let string = value as? String else { throw JobError(field: key, message: "'\(key)' must be a string") }
            return string
        }
        try self.init(type: typeName, tier: tier, payload: payload,
                      idempotencyKey: try optionalString("idempotency_key"), tenant: try optionalString("tenant"))
    }

    /// A new envelope for this request (fresh id, enqueued now).
    package func envelope(correlationID: String? = nil, enqueuedAt: Timestamp = .now()) -> JobEnvelope {
        JobEnvelope(type: type, tier: tier, payload: payload, tenant: tenant, idempotencyKey: idempotencyKey,
                    correlationID: correlationID, enqueuedAt: enqueuedAt)
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
