import Foundation
import Testing
@testable import WarrenAMQP
@testable import WarrenJobs
@testable import WarrenSupport

@Suite struct JobEnvelopeTests {
    func sample() -> JobEnvelope {
        var job = JobEnvelope(type: "email.welcome", tier: .premium, payload: Array(#"{"to":"a@b.c"}"#.utf8), tenant: "acme",
                              idempotencyKey: "welcome-42", correlationID: "req-1",
                              enqueuedAt: Timestamp(microseconds: 1_795_424_400_123_456))
        job.attempt = 3
        job.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        return job
    }

    @Test func mapsOntoAMQPPropertiesAndHeaders() {
        let job = sample()
        let message = job.outgoingMessage
        #expect(message.exchange == "warren.jobs")
        #expect(message.routingKey == "premium.\(Tier.lane(tenant: job.tenant))", "the tenant's lane")
        #expect(Tier.lane(tenant: job.tenant) != 0)
        #expect(message.mandatory)
        #expect(message.body == job.payload)
        let properties = message.properties
        #expect(properties.messageID == job.id.uuidString.lowercased())
        #expect(properties.type == "email.welcome")
        #expect(properties.contentType == "application/json")
        #expect(properties.deliveryMode == 2)
        #expect(properties.correlationID == "req-1")
        #expect(properties.timestamp == 1_795_424_400)
        #expect(properties.headers["x-warren-tier"] == .string("premium"))
        #expect(properties.headers["x-warren-attempt"] == .int(3))
        #expect(properties.headers["x-warren-enqueued-at"] == .string("2026-11-23T09:00:00.123456Z"))
        #expect(properties.headers["x-warren-idempotency-key"] == .string("welcome-42"))
        #expect(properties.headers["x-warren-tenant"] == .string("acme"))
        #expect(properties.headers["traceparent"] == .string(job.traceparent!))
    }

    @Test func decodesWhatItEncodes() throws {
        let job = sample()
        let decoded = try JobEnvelope(properties: job.properties, body: job.payload)
        #expect(decoded == job)
    }

    @Test func carriesItsLineageSeqOnlyOnceRepublished() throws {
        var job = sample()
        #expect(job.properties.headers["x-warren-seq"] == nil, "a first publish stays as it was")
        job.seq = 2
        #expect(job.properties.headers["x-warren-seq"] == .int(2))
        #expect(try JobEnvelope(properties: job.properties, body: job.payload).seq == 2)
        for bad: AMQPFieldValue in [.int(-1), .string("two"), .int(2_000_000)] {
            var properties = job.properties
            properties.headers["x-warren-seq"] = bad
            #expect(throws: JobError.self) { try JobEnvelope(properties: properties, body: job.payload) }
        }
    }

    @Test func newJobsGetUUIDv7IdsAtTheirEnqueueTime() throws {
        let stamp = Timestamp(microseconds: 1_795_424_400_123_456)
        let job = JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8), enqueuedAt: stamp)
        #expect(job.attempt == 1)
        let idTime = try #require(JobID.timestamp(of: job.id))
        #expect(idTime.microseconds == 1_795_424_400_123_000)
    }

    @Test func lowercasedStringMatchesFoundation() {
        for _ in 0..<100 {
            let id = UUID()
            #expect(id.lowercasedString == id.uuidString.lowercased())
        }
        #expect(JobID.make().lowercasedString.count == 36)
    }

    @Test func uuidv7IdsSortByTime() {
        let ids = (0..<100).map { JobID.make(at: Timestamp(microseconds: Int64($0) * 1_000 + 1_700_000_000_000_000)) }
        #expect(ids.map { $0.uuidString } == ids.map { $0.uuidString }.sorted())
        #expect(Set(ids).count == 100)
        #expect(ids.allSatisfy { $0.uuidString.dropFirst(14).first == "7" })
    }

    @Test func malformedMessagesAreRejectedWithTheirReason() {
        let job = sample()
        func reason(_ mutate: (inout AMQPProperties, inout [UInt8]) -> Void) -> String? {
            var properties = job.properties
            var body = job.payload
            mutate(&properties, &body)
            do {
                _ = try JobEnvelope(properties: properties, body: body)
                return nil
            } catch {
                return error.field
            }
        }
        #expect(reason { _, body in body = Array("not json".utf8) } == "payload")
        #expect(reason { properties, _ in properties.messageID = nil } == "message_id")
        #expect(reason { properties, _ in properties.messageID = "42" } == "message_id")
        #expect(reason { properties, _ in properties.type = nil } == "type")
        #expect(reason { properties, _ in properties.headers["x-warren-tier"] = nil } == "x-warren-tier")
        #expect(reason { properties, _ in properties.headers["x-warren-tier"] = .string("gold") } == "x-warren-tier")
        #expect(reason { properties, _ in properties.headers["x-warren-enqueued-at"] = .string("yesterday") } == "x-warren-enqueued-at")
        #expect(reason { properties, _ in properties.headers["x-warren-attempt"] = .int(0) } == "x-warren-attempt")
        #expect(reason { properties, _ in properties.contentType = "text/plain" } == "content_type")
    }
}

@Suite struct JobRequestTests {
    @Test func parsesALine() throws {
        let request = try JobRequest(jsonLine: Array(#"{"type":"noop","tier":"free","payload":{"b":1,"a":"x"},"idempotency_key":"k","tenant":"t"}"#.utf8))
        #expect(request.type == "noop")
        #expect(request.tier == .free)
        #expect(String(decoding: request.payload, as: UTF8.self) == #"{"b":1,"a":"x"}"#, "kept byte for byte")
        #expect(request.idempotencyKey == "k")
        #expect(request.tenant == "t")
    }

    @Test func aLinesConcurrencyKeyAndLimitReachTheEnvelopeAndBackFromItsHeaders() throws {
        let request = try JobRequest(jsonLine: Array(#"{"type":"noop","tier":"free","concurrency_key":"ingest:t","concurrency_limit":5}"#.utf8))
        let job = request.envelope()
        #expect(job.concurrencyKey == "ingest:t" && job.concurrencyLimit == 5)
        let decoded = try JobEnvelope(properties: job.outgoingMessage.properties, body: job.payload)
        #expect(decoded.concurrencyKey == "ingest:t" && decoded.concurrencyLimit == 5)
        for bad in [#"{"type":"noop","tier":"free","concurrency_limit":2}"#, #"{"type":"noop","tier":"free","concurrency_key":"k","concurrency_limit":1.5}"#,
                    #"{"type":"noop","tier":"free","concurrency_key":"k","concurrency_limit":1001}"#] {
            #expect(throws: JobError.self, "\(bad)") { try JobRequest(jsonLine: Array(bad.utf8)) }
        }
        var properties = job.outgoingMessage.properties
        properties.headers[JobEnvelope.Header.concurrencyLimit] = .int(0)
        #expect(throws: JobError.self) { try JobEnvelope(properties: properties, body: job.payload) }
    }

    @Test func escapedStringsAreDecodedAndNullMeansAbsent() throws {
        let line = #"{"type":"no\u006fp","tier":"fr\u0065e","payload":null,"tenant":"caf\u00e9 \ud83d\ude00","idempotency_key":null}"#
        let request = try JobRequest(jsonLine: Array(line.utf8))
        #expect(request.type == "noop")
        #expect(request.tier == .free)
        #expect(request.payload == Array("{}".utf8))
        #expect(request.tenant == "café 😀")
        #expect(request.idempotencyKey == nil)
    }

    @Test func defaultTierAppliesOnlyWhenMissing() throws {
        #expect(try JobRequest(jsonLine: Array(#"{"type":"noop"}"#.utf8), defaultTier: .premium).tier == .premium)
        #expect(try JobRequest(jsonLine: Array(#"{"type":"noop","tier":"free"}"#.utf8), defaultTier: .premium).tier == .free)
    }

    @Test(arguments: [
        (#"{"type":"noop""#, nil as String?),
        (#"[1,2]"#, nil),
        (#"{"tier":"free"}"#, "type"),
        (#"{"type":"noop"}"#, "tier"),
        (#"{"type":"noop","tier":"gold"}"#, "tier"),
        (#"{"type":"","tier":"free"}"#, "type"),
        (#"{"type":"a b","tier":"free"}"#, "type"),
        (#"{"type":7,"tier":"free"}"#, "type"),
        (#"{"type":"noop","tier":"free","payload":{},"extra":1}"#, "extra"),
        (#"{"type":"noop","tier":"free","tenant":5}"#, "tenant"),
        (#"{"type":"noop","tier":"free","payload":{"a":01}}"#, nil),
        (#"{"type":"noop","type":"noop","tier":"free"}"#, nil),
        (#"{"type":"noop","tier":"free"} x"#, nil),
    ])
    func rejectsBadLines(_ line: String, _ field: String?) {
        let error = #expect(throws: JobError.self) { _ = try JobRequest(jsonLine: Array(line.utf8)) }
        #expect(error?.field == field)
    }

    @Test func hostileTextStaysData() throws {
        let request = try JobRequest(type: "noop", tier: .free, payload: Array(#"{"note":"'); DROP TABLE job_runs; --"}"#.utf8))
        #expect(String(decoding: request.payload, as: UTF8.self).contains("DROP TABLE"))
    }
}
