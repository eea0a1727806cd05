import Foundation
import WarrenAMQP
import WarrenSupport

/// A message on the `warren.control` fanout exchange, which every consumer hears through a
/// queue of its own (exclusive, deleted with its connection).
///
/// Bodies:
/// - `{"action":"cancel","job_id":"<uuid>","tier":"<tier>"}`: a cancellation request. Control
///   messages are hints for speed; a cancellation is also in Postgres, which consumers poll,
///   so one lost while a consumer reconnects is picked up a few seconds later.
/// - `{"action":"pressure","tier":"<tier>","consumer_id":"...","p99_ms":12,"p50_ms":3,"jobs":40,"saturated":false}`:
///   a consumer's start-latency p99 (and p50, absent from older consumers) of one tier over its
///   last report window, and whether its own capacity held the tier back (see ``AdmissionControl``). Lost ones only age the picture: the next comes within a second.
/// - `{"action":"status","consumer_id":"...","tiers":["free"],"concurrency":8,"configured_concurrency":16,"prefetch":500,"in_flight":3,"open_breakers":["smtp"]}`:
///   a consumer's ``ConsumerStatus``, every two seconds, for the producers' console.
/// - `{"action":"keys_free","keys":["ingest:acme",...],"consumer_id":"..."}`: a slot of each of
///   these concurrency keys was given back by that consumer, so a job waiting for one elsewhere
///   asks now instead of at its next poll. Lost ones only cost a poll's wait.
package enum ControlMessage: Sendable, Equatable {
    case cancel(job: UUID, tier: Tier)
    case pressure(PressureReport)
    case keysFree([String], from: String)
    case status(ConsumerStatus)

    package var outgoing: AMQPOutgoingMessage {
        let body: String
        switch self {
        case .cancel(let job, let tier):
            body = JSONText.object(["action": "cancel", "job_id": job.lowercasedString, "tier": tier.rawValue])
        case .pressure(let report):
            body = #"{"action":"pressure","tier":"\#(report.tier.rawValue)","consumer_id":\#(JSONText.quoted(report.consumerID)),"p99_ms":\#(report.p99Milliseconds),\#(report.p50Milliseconds.map { #""p50_ms":\#($0),"# } ?? "")"jobs":\#(report.jobs),"saturated":\#(report.saturated)}"#
        case .keysFree(let keys, let consumer):
            body = #"{"action":"keys_free","keys":[\#(keys.map(JSONText.quoted).joined(separator: ","))],"consumer_id":\#(JSONText.quoted(consumer))}"#
        case .status(let status):
            body = #"{"action":"status","consumer_id":\#(JSONText.quoted(status.consumerID)),"tiers":[\#(status.tiers.map { JSONText.quoted($0.rawValue) }.joined(separator: ","))],"concurrency":\#(status.concurrency),"configured_concurrency":\#(status.configuredConcurrency),"prefetch":\#(status.prefetch),"in_flight":\#(status.inFlight),"open_breakers":[\#(status.openBreakers.map(JSONText.quoted).joined(separator: ","))]}"#
        }
        var properties = AMQPProperties()
        properties.contentType = "application/json"
        switch self {
        // A report older than a board keeps one is of no use: a lagging control queue drops it.
        case .pressure: properties.expiration = "2000"
        // Past a poll's longest pause the waiters have asked anyway.
        case .keysFree: properties.expiration = "2000"
        // Two statuses later, a newer one is there.
        case .status: properties.expiration = "4000"
        case .cancel: break
        }
        return AMQPOutgoingMessage(exchange: Topology.controlExchange, routingKey: "", properties: properties,
                                   body: Array(body.utf8), mandatory: false)
    }

    /// Parses a control message body; nil for anything this version does not understand
    /// (a newer fleet may send more kinds).
    package init?(body: [UInt8]) {
        guard let fields = PayloadFields(body) else { return nil }
        if fields.string("action") == "keys_free" {
            guard let keys = fields.strings("keys"), let consumer = fields.string("consumer_id") else { return nil }
            self = .keysFree(keys, from: consumer)
            return
        }
        if fields.string("action") == "status" {
            guard let consumer = fields.string("consumer_id"), let tiers = fields.strings("tiers")?.compactMap(Tier.init(rawValue:)),
                  let concurrency = fields.int("concurrency"), let configured = fields.int("configured_concurrency"),
                  let prefetch = fields.int("prefetch"), let inFlight = fields.int("in_flight") else { return nil }
            self = .status(ConsumerStatus(consumerID: consumer, tiers: tiers, concurrency: concurrency, configuredConcurrency: configured,
                                          prefetch: prefetch, inFlight: inFlight, openBreakers: fields.strings("open_breakers") ?? []))
            return
        }
        guard let tier = fields.string("tier").flatMap(Tier.init(rawValue:)) else { return nil }
        switch fields.string("action") {
        case "cancel":
            guard let id = fields.string("job_id").flatMap(UUID.init(uuidString:)) else { return nil }
            self = .cancel(job: id, tier: tier)
        case "pressure":
            guard let consumer = fields.string("consumer_id"), let p99 = fields.int("p99_ms"), p99 >= 0,
                  let jobs = fields.int("jobs"), jobs >= 0 else { return nil }
            self = .pressure(PressureReport(tier: tier, consumerID: consumer, p99Milliseconds: p99, jobs: jobs,
                                            saturated: fields.bool("saturated") ?? false,
                                            p50Milliseconds: fields.int("p50_ms").flatMap { $0 >= 0 ? $0 : nil }))
        default:
            return nil
        }
    }
}
