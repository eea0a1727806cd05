import Foundation
import WarrenAMQP
import WarrenSupport

/// A job as it travels through RabbitMQ: identity and routing in AMQP properties and
/// `x-warren-*` headers (so `rabbitmqadmin get` and the management UI show what it is), the
/// JSON payload as the body.
///
/// | field | AMQP |
/// | --- | --- |
/// | id (UUIDv7) | `message_id` |
/// | type | `type` |
/// | correlation id | `correlation_id` |
/// | enqueued at | `timestamp` (seconds) and `x-warren-enqueued-at` (ISO 8601, microseconds) |
/// | tier | routing key (`<tier>`, or `<tier>.<lane>` for a tenant's lane: ``Tier/lane(tenant:)``) and `x-warren-tier` |
/// | attempt | `x-warren-attempt` (1 for the first run) |
/// | lineage | `x-warren-seq`: 0 as published, +1 each time a consumer republishes it (retry or deferral); absent = 0 |
/// | idempotency key | `x-warren-idempotency-key` |
/// | tenant | `x-warren-tenant` |
/// | concurrency key and limit | `x-warren-concurrency-key`, `x-warren-concurrency-limit` (absent: 1) |
/// | trace context | `traceparent` |
/// | payload | body, `content_type: application/json`, `delivery_mode: 2` |
package struct JobEnvelope: Sendable, Equatable {
    package var id: UUID
    package var type: String
    package var tier: Tier
    /// The payload as JSON text (an object, array or scalar), kept byte for byte.
    package var payload: [UInt8]
    package var tenant: String?
    package var idempotencyKey: String?
    /// At most ``concurrencyLimit`` jobs with this key run at once across every consumer
    /// (see ``ConcurrencyLeases``).
    package var concurrencyKey: String?
    /// 1 when absent; meaningful only with a key.
    package var concurrencyLimit: Int = 1
    package var enqueuedAt: Timestamp
    package var attempt: Int
    /// Its place in the job's one lineage: 0 as published, +1 at every retry or deferral. A
    /// delivery whose job has a later message out (a retry confirmed, a row at a higher seq)
    /// is superseded and never runs.
    package var seq: Int
    package var correlationID: String?
    package var traceparent: String?

    package static let exchange = "warren.jobs"
    package static let contentType = "application/json"

    package enum Header {
        package static let tier = "x-warren-tier"
        package static let attempt = "x-warren-attempt"
        package static let seq = "x-warren-seq"
        package static let enqueuedAt = "x-warren-enqueued-at"
        package static let idempotencyKey = "x-warren-idempotency-key"
        package static let tenant = "x-warren-tenant"
        package static let concurrencyKey = "x-warren-concurrency-key"
        package static let concurrencyLimit = "x-warren-concurrency-limit"
        package static let traceparent = "traceparent"
        /// Routes a retry to its delay queue through the `warren.retry` headers exchange. Not
        /// `x-` prefixed: a headers exchange ignores binding arguments starting with `x-`, so
        /// such a binding would match every message.
        package static let retryDelay = "warren-retry-delay"
        package static let deadReason = "x-warren-dead-reason"
        package static let lastError = "x-warren-last-error"
        /// Why a job was deferred (put back without spending an attempt), on its way through a
        /// retry delay queue.
        package static let deferredReason = "x-warren-deferred-reason"
    }

    /// A new job: fresh UUIDv7, attempt 1, enqueued now.
    package init(type: String, tier: Tier, payload: [UInt8], tenant: String? = nil, idempotencyKey: String? = nil,
                 correlationID: String? = nil, enqueuedAt: Timestamp = .now(), id: UUID? = nil,
                 concurrencyKey: String? = nil, concurrencyLimit: Int = 1) {
        self.concurrencyKey = concurrencyKey
        self.concurrencyLimit = concurrencyLimit
        self.id = id ?? JobID.make(at: enqueuedAt)
        self.type = type
        self.tier = tier
        self.payload = payload
        self.tenant = tenant
        self.idempotencyKey = idempotencyKey
        self.enqueuedAt = enqueuedAt
        self.attempt = 1
        self.seq = 0
        self.correlationID = correlationID
    }

    /// Validates a job type name: 1-200 characters of letters, digits, `.`, `_`, `-`, `:`.
    package static func validateType(_ type: String) throws(JobError) {
        guard !type.isEmpty else { throw JobError(field: "type", message: "missing job type") }
        guard type.utf8.count <= 200 else { throw JobError(field: "type", message: "job type is longer than 200 bytes") }
        let allowed = type.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: ":"):
                true
            default:
                false
            }
        }
        guard allowed else {
            throw JobError(field: "type", message: "job type '\(type)' may only contain letters, digits, '.', '-', '_' and ':'")
        }
    }

    /// The largest `concurrency_limit` a job may carry.
    package static let maxConcurrencyLimit = 1_000

    /// Validates a concurrency key: 1-255 characters (Unicode scalars, as JSON Schema's
    /// `maxLength` counts them in docs/openapi.yaml), no control characters.
    package static func validateConcurrencyKey(_ key: String, field: String = "concurrency_key") throws(JobError) {
        guard !key.isEmpty, key.unicodeScalars.count <= 255 else { throw JobError(field: field, message: "\(field) must be 1 to 255 characters") }
        guard !key.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw JobError(field: field, message: "\(field) must not contain control characters")
        }
    }

    /// Validates a concurrency limit: 1...``maxConcurrencyLimit``.
    package static func validateConcurrencyLimit(_ limit: Int, field: String = "concurrency_limit") throws(JobError) {
        guard (1...maxConcurrencyLimit).contains(limit) else {
            throw JobError(field: field, message: "\(field) must be an integer 1...\(maxConcurrencyLimit)")
        }
    }

    /// Checks that `payload` is one complete JSON value.
    package static func validatePayload(_ payload: [UInt8]) throws(JobError) {
        do {
            try JSONScanner.validate(payload)
        } catch {
            throw JobError(field: "payload", message: "payload is not valid JSON: \(error)")
        }
    }

    /// The message to publish: to `warren.jobs`, routed to its tier's lane for its tenant.
    package var outgoingMessage: AMQPOutgoingMessage {
        AMQPOutgoingMessage(exchange: Self.exchange, routingKey: tier.routingKey(lane: Tier.lane(tenant: tenant)), properties: properties,
                            body: payload, mandatory: true)
    }

    /// This job as a copy for `warren.dead`, with why it died and its last error (each cut to
    /// 1,000 characters) in the headers.
    package func deadLetterMessage(reason: String, lastError: String) -> AMQPOutgoingMessage {
        var message = outgoingMessage
        message.exchange = Topology.deadExchange
        message.properties.headers[Header.deadReason] = .string(String(reason.prefix(1_000)))
        message.properties.headers[Header.lastError] = .string(String(lastError.prefix(1_000)))
        return message
    }

    package var properties: AMQPProperties {
        var properties = AMQPProperties()
        properties.contentType = Self.contentType
        properties.deliveryMode = 2
        properties.messageID = id.lowercasedString
        properties.type = type
        properties.timestamp = UInt64(max(0, enqueuedAt.unixSeconds))
        properties.correlationID = correlationID
        var headers = AMQPTable()
        headers[Header.tier] = .string(tier.rawValue)
        headers[Header.attempt] = .int(Int64(attempt))
        if seq > 0 { headers[Header.seq] = .int(Int64(seq)) }
        headers[Header.enqueuedAt] = .string(enqueuedAt.iso8601)
        if let idempotencyKey { headers[Header.idempotencyKey] = .string(idempotencyKey) }
        if let tenant { headers[Header.tenant] = .string(tenant) }
        if let concurrencyKey {
            headers[Header.concurrencyKey] = .string(concurrencyKey)
            if concurrencyLimit != 1 { headers[Header.concurrencyLimit] = .int(Int64(concurrencyLimit)) }
        }
        if let traceparent { headers[Header.traceparent] = .string(traceparent) }
        properties.headers = headers
        return properties
    }

    /// Decodes a delivered job. Throws ``JobError`` naming what is malformed; the consumer
    /// dead-letters such messages with that reason.
    package init(properties: AMQPProperties, body: [UInt8]) throws(JobError) {
        guard let messageID = properties.messageID, let id = UUID(uuidString: messageID) else {
            throw JobError(field: "message_id", message: "message_id is missing or not a UUID")
        }
        guard let type = properties.type else { throw JobError(field: "type", message: "type property is missing") }
        try Self.validateType(type)
        let headers = properties.headers
        guard let tierName = headers[Header.tier]?.stringValue else {
            throw JobError(field: Header.tier, message: "\(Header.tier) header is missing")
        }
        let tier: Tier
        do {
            tier = try Tier.parse(tierName)
        } catch {
            throw JobError(field: Header.tier, message: error.message)
        }
        guard let enqueuedText = headers[Header.enqueuedAt]?.stringValue, let enqueuedAt = Timestamp(iso8601: enqueuedText) else {
            throw JobError(field: Header.enqueuedAt, message: "\(Header.enqueuedAt) header is missing or not ISO 8601")
        }
        /// An integer header within `range`, `absent` when it is missing.
        func integer(_ name: String, _ range: ClosedRange<Int64>, absent: Int, _ what: String) throws(JobError) -> Int {
            guard let value = headers[name] else { return absent }
            guard let number = value.intValue, range.contains(number) else {
                throw JobError(field: name, message: "\(name) header must be \(what)")
            }
            return Int(number)
        }
        let attempt = try integer(Header.attempt, 1...10_000, absent: 1, "a positive integer")
        let seq = try integer(Header.seq, 0...1_000_000, absent: 0, "an integer 0...1000000")
        let concurrencyLimit = try integer(Header.concurrencyLimit, 1...Int64(Self.maxConcurrencyLimit), absent: 1,
                                           "an integer 1...\(Self.maxConcurrencyLimit)")
        var concurrencyKey: String?
        if let value = headers[Header.concurrencyKey] {
            guard let key = value.stringValue else { throw JobError(field: Header.concurrencyKey, message: "\(Header.concurrencyKey) header must be a string") }
            try Self.validateConcurrencyKey(key, field: Header.concurrencyKey)
            concurrencyKey = key
        }
        if let contentType = properties.contentType, !contentType.lowercased().hasPrefix(Self.contentType) {
            throw JobError(field: "content_type", message: "content_type must be application/json, not '\(contentType)'")
        }
        try Self.validatePayload(body)
        self.id = id
        self.type = type
        self.tier = tier
        self.payload = body
        self.tenant = headers[Header.tenant]?.stringValue
        self.idempotencyKey = headers[Header.idempotencyKey]?.stringValue
        self.enqueuedAt = enqueuedAt
        self.attempt = attempt
        self.seq = seq
        self.concurrencyKey = concurrencyKey
        self.concurrencyLimit = concurrencyLimit
        self.correlationID = properties.correlationID
        self.traceparent = headers[Header.traceparent]?.stringValue
    }
}
