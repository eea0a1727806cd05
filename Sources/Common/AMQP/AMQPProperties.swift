import CRabbitMQ
import WarrenSupport

/// The basic properties of a message (the AMQP content header), copied into Swift storage.
package struct AMQPProperties: Sendable, Hashable {
    package var contentType: String?
    package var contentEncoding: String?
    package var headers: AMQPTable = AMQPTable()
    /// 2 = persistent.
    package var deliveryMode: UInt8?
    package var priority: UInt8?
    package var correlationID: String?
    package var replyTo: String?
    package var expiration: String?
    package var messageID: String?
    /// Seconds since the Unix epoch.
    package var timestamp: UInt64?
    package var type: String?
    package var userID: String?
    package var appID: String?

    package init() {}
}

extension AMQPProperties {
    init(copying properties: amqp_basic_properties_t) {
        let flags = properties._flags
        func has(_ flag: Int32) -> Bool { flags & amqp_flags_t(flag) != 0 }
        if has(AMQP_BASIC_CONTENT_TYPE_FLAG) { contentType = String(amqpBytes: properties.content_type) }
        if has(AMQP_BASIC_CONTENT_ENCODING_FLAG) { contentEncoding = String(amqpBytes: properties.content_encoding) }
        if has(AMQP_BASIC_HEADERS_FLAG) { headers = AMQPTable(copying: properties.headers) }
        if has(AMQP_BASIC_DELIVERY_MODE_FLAG) { deliveryMode = properties.delivery_mode }
        if has(AMQP_BASIC_PRIORITY_FLAG) { priority = properties.priority }
        if has(AMQP_BASIC_CORRELATION_ID_FLAG) { correlationID = String(amqpBytes: properties.correlation_id) }
        if has(AMQP_BASIC_REPLY_TO_FLAG) { replyTo = String(amqpBytes: properties.reply_to) }
        if has(AMQP_BASIC_EXPIRATION_FLAG) { expiration = String(amqpBytes: properties.expiration) }
        if has(AMQP_BASIC_MESSAGE_ID_FLAG) { messageID = String(amqpBytes: properties.message_id) }
        if has(AMQP_BASIC_TIMESTAMP_FLAG) { timestamp = properties.timestamp }
        if has(AMQP_BASIC_TYPE_FLAG) { type = String(amqpBytes: properties.type) }
        if has(AMQP_BASIC_USER_ID_FLAG) { userID = String(amqpBytes: properties.user_id) }
        if has(AMQP_BASIC_APP_ID_FLAG) { appID = String(amqpBytes: properties.app_id) }
    }

    /// The C form, with every string copied into `arena`.
    func cProperties(in arena: CArena) -> amqp_basic_properties_t {
        var result = amqp_basic_properties_t()
        var flags: Int32 = 0
        if let contentType { flags |= AMQP_BASIC_CONTENT_TYPE_FLAG; result.content_type = arena.bytes(contentType) }
        if let contentEncoding { flags |= AMQP_BASIC_CONTENT_ENCODING_FLAG; result.content_encoding = arena.bytes(contentEncoding) }
        if !headers.isEmpty { flags |= AMQP_BASIC_HEADERS_FLAG; result.headers = arena.table(headers) }
        if let deliveryMode { flags |= AMQP_BASIC_DELIVERY_MODE_FLAG; result.delivery_mode = deliveryMode }
        if let priority { flags |= AMQP_BASIC_PRIORITY_FLAG; result.priority = priority }
        if let correlationID { flags |= AMQP_BASIC_CORRELATION_ID_FLAG; result.correlation_id = arena.bytes(correlationID) }
        if let replyTo { flags |= AMQP_BASIC_REPLY_TO_FLAG; result.reply_to = arena.bytes(replyTo) }
        if let expiration { flags |= AMQP_BASIC_EXPIRATION_FLAG; result.expiration = arena.bytes(expiration) }
        if let messageID { flags |= AMQP_BASIC_MESSAGE_ID_FLAG; result.message_id = arena.bytes(messageID) }
        if let timestamp { flags |= AMQP_BASIC_TIMESTAMP_FLAG; result.timestamp = timestamp }
        if let type { flags |= AMQP_BASIC_TYPE_FLAG; result.type = arena.bytes(type) }
        if let userID { flags |= AMQP_BASIC_USER_ID_FLAG; result.user_id = arena.bytes(userID) }
        if let appID { flags |= AMQP_BASIC_APP_ID_FLAG; result.app_id = arena.bytes(appID) }
        result._flags = amqp_flags_t(flags)
        return result
    }
}

/// A message to publish.
package struct AMQPOutgoingMessage: Sendable {
    package var exchange: String
    package var routingKey: String
    package var properties: AMQPProperties
    package var body: [UInt8]
    /// Ask the broker to return the message if no queue takes it (reported as `unroutable`).
    package var mandatory: Bool

    package init(exchange: String, routingKey: String, properties: AMQPProperties = AMQPProperties(), body: [UInt8], mandatory: Bool = true) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.properties = properties
        self.body = body
        self.mandatory = mandatory
    }
}

/// A message delivered to a consumer, copied out of librabbitmq's buffers.
///
/// Its delivery tag belongs to the channel and connection it came on (`generation`): acking
/// it after a reconnect is a no-op, because the broker has already requeued it.
package struct AMQPDelivery: Sendable {
    package var deliveryTag: UInt64
    package var redelivered: Bool
    package var exchange: String
    package var routingKey: String
    package var consumerTag: String
    package var properties: AMQPProperties
    package var body: [UInt8]
    package var channel: UInt16
    package var generation: UInt64
    /// When the connection's thread read it off the socket (wall clock, comparable with a
    /// job's enqueued-at): what came before is the publisher's, the broker's and the network's
    /// part of a wait, and that thread's own wait for a core.
    package var receivedAt = Timestamp(microseconds: 0)
}
