import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import WarrenAMQP
import WarrenJobs

/// What RabbitMQ's management API says of the tier queues, for the console: each tier's ready
/// and unacked messages, its consumers and their prefetch, its publish and ack rates, and the
/// broker's own samples of them over the last hour (kept by the broker at one a minute, so the
/// console's charts survive a producer restart). A tier's figures add up its lanes.
///
/// `WARREN_RABBITMQ_MANAGEMENT_URL` (default `http://<the AMQP host>:15672`), with the AMQP URL's
/// user, password and virtual host.
package struct BrokerStats: Sendable {
    package let base: String
    let vhost: String
    let authorization: String

    package init(managementURL: String?, amqp: AMQPConfiguration) {
        let endpoint = amqp.endpoints.first
        var base = managementURL ?? "http://\(endpoint?.host ?? "127.0.0.1"):15672"
        while base.hasSuffix("/") { base.removeLast() }
        self.base = base
        vhost = endpoint?.vhost ?? "/"
        let credentials = "\(endpoint?.user ?? "guest"):\(endpoint?.password ?? "guest")"
        authorization = "Basic " + Data(credentials.utf8).base64EncodedString()
    }

    package struct Sample: Sendable, Equatable {
        /// Unix milliseconds.
        package var time: Int64
        package var ready: Int
        package var unacked: Int
        /// Per second, over the minute before `time`.
        package var publishRate: Double
        package var ackRate: Double
    }

    package struct TierFigures: Sendable, Equatable {
        package var ready = 0
        package var unacked = 0
        /// The fewest consumers any of its lanes has (every consumer of a tier takes from all).
        package var consumers = Int.max
        package var publishRate = 0.0
        package var ackRate = 0.0
        /// Oldest first.
        package var samples: [Sample] = []
    }

    package struct ConsumerFigure: Sendable, Equatable {
        package var connection: String
        package var tier: Tier
        package var lanes: Int
        package var prefetch: Int
        package var active: Bool
    }

    /// The three tiers' figures; with `history`, the last hour's samples too.
    package func tiers(history: Bool) async throws -> [Tier: TierFigures] {
        var query = "columns=name,messages_ready,messages_unacknowledged,consumers,message_stats"
        if history {
            query += ",messages_ready_details,messages_unacknowledged_details"
            query += "&lengths_age=3600&lengths_incr=60&msg_rates_age=3600&msg_rates_incr=60"
        }
        let queues = try await get([QueueJSON].self, "/api/queues/\(Self.escaped(vhost))?\(query)")
        let tierOf = Dictionary(uniqueKeysWithValues: Tier.allCases.flatMap { tier in tier.queueNames.map { ($0, tier) } })
        var figures: [Tier: TierFigures] = [:]
        var series: [Tier: [Int64: Sample]] = [:]
        for queue in queues {
            guard let tier = tierOf[queue.name] else { continue }
            var figure = figures[tier] ?? TierFigures()
            figure.ready += queue.messages_ready ?? 0
            figure.unacked += queue.messages_unacknowledged ?? 0
            figure.consumers = min(figure.consumers, queue.consumers ?? 0)
            figure.publishRate += queue.message_stats?.publish_details?.rate ?? 0
            figure.ackRate += queue.message_stats?.ack_details?.rate ?? 0
            figures[tier] = figure
            guard history else { continue }
            func add(_ samples: [SampleJSON]?, _ apply: (inout Sample, Double) -> Void) {
                for sample in samples ?? [] {
                    var entry = series[tier, default: [:]][sample.timestamp]
                        ?? Sample(time: sample.timestamp, ready: 0, unacked: 0, publishRate: 0, ackRate: 0)
                    apply(&entry, sample.sample)
                    series[tier, default: [:]][sample.timestamp] = entry
                }
            }
            add(queue.messages_ready_details?.samples) { $0.ready += Int($1) }
            add(queue.messages_unacknowledged_details?.samples) { $0.unacked += Int($1) }
            for (samples, apply) in [(queue.message_stats?.publish_details?.samples, { (s: inout Sample, rate: Double) in s.publishRate += rate }),
                                     (queue.message_stats?.ack_details?.samples, { (s: inout Sample, rate: Double) in s.ackRate += rate })] {
                add(Self.rates(samples), apply)
            }
        }
        for tier in Tier.allCases {
            var figure = figures[tier] ?? TierFigures()
            if figure.consumers == .max { figure.consumers = 0 }
            figure.samples = (series[tier] ?? [:]).values.sorted { $0.time < $1.time }
            figures[tier] = figure
        }
        return figures
    }

    /// Every consumer of the tier queues, one entry per connection and tier.
    package func consumers() async throws -> [ConsumerFigure] {
        async let listed = get([ConsumerJSON].self, "/api/consumers/\(Self.escaped(vhost))")
        // A consumer's channel names its connection by address; the name the client gave it
        // ("consumer <id>") is on the connection.
        async let connections = get([ConnectionJSON].self, "/api/vhosts/\(Self.escaped(vhost))/connections?columns=name,client_properties.connection_name")
        let (consumers, named) = try await (listed, connections)
        let given = Dictionary(named.compactMap { connection in connection.client_properties?.connection_name.map { (connection.name, $0) } }) { first, _ in first }
        let tierOf = Dictionary(uniqueKeysWithValues: Tier.allCases.flatMap { tier in tier.queueNames.map { ($0, tier) } })
        var merged: [String: ConsumerFigure] = [:]
        for consumer in consumers {
            guard let name = consumer.queue?.name, let tier = tierOf[name] else { continue }
            let address = consumer.channel_details?.connection_name ?? "?"
            let connection = given[address] ?? address
            let key = "\(connection)/\(tier.rawValue)"
            var figure = merged[key] ?? ConsumerFigure(connection: connection, tier: tier, lanes: 0, prefetch: 0, active: false)
            figure.lanes += 1
            figure.prefetch = max(figure.prefetch, consumer.prefetch_count ?? 0)
            figure.active = figure.active || (consumer.active ?? true)
            merged[key] = figure
        }
        return merged.values.sorted { ($0.tier.rank, $0.connection) < ($1.tier.rank, $1.connection) }
    }

    /// Cumulative counts (what the broker samples for message stats) as rates per second
    /// between consecutive samples, stamped with the later one.
    static func rates(_ samples: [SampleJSON]?) -> [SampleJSON] {
        let sorted = (samples ?? []).sorted { $0.timestamp < $1.timestamp }
        return zip(sorted, sorted.dropFirst()).compactMap { earlier, later in
            let seconds = Double(later.timestamp - earlier.timestamp) / 1_000
            guard seconds > 0 else { return nil }
            return SampleJSON(sample: max(0, later.sample - earlier.sample) / seconds, timestamp: later.timestamp)
        }
    }

    private func get<T: Decodable>(_ type: T.Type, _ path: String) async throws -> T {
        var request = HTTPClientRequest(url: base + path)
        request.headers.add(name: "Authorization", value: authorization)
        let response = try await Self.client.execute(request, timeout: .seconds(3))
        let body = try await response.body.collect(upTo: 16 << 20)
        guard response.status == .ok else {
            throw BrokerStatsError(message: "the management API answered \(response.status.code) to \(path.prefix(40))")
        }
        return try JSONDecoder().decode(T.self, from: Data(body.readableBytesView))
    }

    /// One client for the process's life (never shut down). Without decompression, so no
    /// `Accept-Encoding`: `HTTPClient.shared`'s decompression ratio limit refused the management
    /// API's gzipped samples, which compress better than that.
    private static let client = HTTPClient(eventLoopGroupProvider: .singleton,
                                           configuration: HTTPClient.Configuration(decompression: .disabled))

    static func escaped(_ vhost: String) -> String {
        vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? vhost
    }

    // The management API's JSON, as far as the console reads it.
    struct SampleJSON: Decodable, Equatable {
        var sample: Double
        var timestamp: Int64
    }

    struct DetailsJSON: Decodable {
        var rate: Double?
        var samples: [SampleJSON]?
    }

    struct QueueJSON: Decodable {
        struct Stats: Decodable {
            var publish_details: DetailsJSON?
            var ack_details: DetailsJSON?
        }

        var name: String
        var messages_ready: Int?
        var messages_unacknowledged: Int?
        var consumers: Int?
        var message_stats: Stats?
        var messages_ready_details: DetailsJSON?
        var messages_unacknowledged_details: DetailsJSON?
    }

    struct ConnectionJSON: Decodable {
        struct Properties: Decodable { var connection_name: String? }

        var name: String
        var client_properties: Properties?
    }

    struct ConsumerJSON: Decodable {
        struct Queue: Decodable { var name: String? }
        struct Channel: Decodable { var connection_name: String? }

        var queue: Queue?
        var channel_details: Channel?
        var prefetch_count: Int?
        var active: Bool?

        enum CodingKeys: String, CodingKey { case queue, channel_details, prefetch_count, active }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            queue = try? container.decodeIfPresent(Queue.self, forKey: .queue)
            // An empty `[]` (not an object) while the channel is closing.
            channel_details = try? container.decodeIfPresent(Channel.self, forKey: .channel_details)
            prefetch_count = try? container.decodeIfPresent(Int.self, forKey: .prefetch_count)
            active = try? container.decodeIfPresent(Bool.self, forKey: .active)
        }
    }
}

package struct BrokerStatsError: Error, CustomStringConvertible {
    package var message: String
    package var description: String { message }
}
