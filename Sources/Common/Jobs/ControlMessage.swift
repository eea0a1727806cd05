import Foundation

/// A message on the `warren.control` fanout exchange, which every consumer hears through a
/// queue of its own (exclusive, deleted with its connection).
///
/// Body: `{"action":"cancel","job_id":"<uuid>","tier":"<tier>"}`. Control messages are
/// hints for speed; what they say is also in Postgres, which consumers poll, so one lost
/// while a consumer reconnects is picked up a few seconds later.
package enum ControlMessage: Sendable, Equatable {
    case cancel(job: UUID, tier: Tier)

    package var outgoing: AMQPOutgoingMessage {
        switch self {
        case .cancel(let job, let tier):
            let body = JSONText.object(["action": "cancel", "job_id": job.lowercasedString, "tier": tier.rawValue])
            var properties = AMQPProperties()
            properties.contentType = "application/json"
            return AMQPOutgoingMessage(exchange: Topology.controlExchange, routingKey: "", properties: properties,
                                       body: Array(body.utf8), mandatory: false)
        }
    }

    /// Parses a control message body; nil for anything this version does not understand
    /// (a newer fleet may send more kinds).
    package init?(body: [UInt8]) {
        guard let fields = PayloadFields(body), fields.string("action") == "cancel",
              let id = fields.string("job_id").flatMap(UUID.init(uuidString:)),
              let tier = fields.string("tier").flatMap(Tier.init(rawValue:)) else { return nil }
        self = .cancel(job: id, tier: tier)
    }
}
