import Foundation
import Testing
import WarrenJobs
import WarrenWorker

/// A tier's start latency on `/metrics`, and its first part (to the delivery read off the
/// connection): where a slow start spent its time, the broker's side or the consumer's.
@Suite(.enabled(if: TestServices.enabled))
struct LatencyMetricsTests {
    /// The value of the sample `name{labels}` in Prometheus text, nil when absent.
    static func sample(_ text: String, _ name: String, _ labels: String) -> Double? {
        let prefix = "\(name){\(labels)} "
        return text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.dropFirst(prefix.count)) }
    }

    /// First deliveries only: a job that fails once is counted at its first start, not at its
    /// retry's (whose wait is the backoff's).
    @Test func firstStartsAreCountedWithTheirDeliveryPart() async throws {
        try await ConsumerIntegrationTests().withWorld { world in
            let jobs = (0..<200).map { _ in JobEnvelope(type: "noop", tier: .enterprise, payload: Array("{}".utf8)) }
                + [JobEnvelope(type: "fail", tier: .enterprise, payload: Array(#"{"times": 1}"#.utf8))]
            try await OverflowPoolTests().withConsumerAdmin(world, id: "enterprise", ["--tier", "enterprise"]) { port, _ in
                // Published once it consumes: the delivery part is the broker's ms, not a startup.
                try await world.publish(jobs)
                try await TestServices.waitUntil(timeout: .seconds(60), "every job succeeded") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 201
                }
                let (_, _, text) = try await HTTP.request("GET", "http://127.0.0.1:\(port)/metrics")
                let tier = #"tier="enterprise""#
                for name in [ConsumerMetrics.startLatencyLabel, ConsumerMetrics.deliveryLatencyLabel] {
                    #expect(Self.sample(text, name + "_count", tier) == 201, "\(name): one per first delivery")
                    #expect(Self.sample(text, name + "_bucket", tier + #",le="+Inf""#) == 201)
                    #expect(Self.sample(text, name + "_bucket", tier + #",le="0.001""#) != nil, "ms buckets: \(name)")
                }
                let start = try #require(Self.sample(text, ConsumerMetrics.startLatencyLabel + "_sum", tier))
                let delivery = try #require(Self.sample(text, ConsumerMetrics.deliveryLatencyLabel + "_sum", tier))
                #expect(delivery > 0 && delivery < start, "the delivery part of the wait is within it: \(delivery) of \(start) s")
            }
        }
    }
}
