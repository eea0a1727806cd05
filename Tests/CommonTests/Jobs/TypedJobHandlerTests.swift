import Foundation
import Logging
import Testing
@testable import WarrenJobs
import WarrenSupport

/// The typed handler form: decoding, the reason a payload that does not decode gets, and how
/// a thrown error becomes an outcome.
@Suite struct TypedJobHandlerTests {
    struct Order: Codable, Sendable {
        struct Customer: Codable, Sendable { var email: String }
        struct Line: Codable, Sendable { var sku: String; var quantity: Int }
        var customer: Customer
        var lines: [Line]
    }

    struct Recorder: TypedJobHandler {
        let type = "order.confirm"
        var fail: (@Sendable (Order) throws -> Void)?

        func run(_ payload: Order, context: JobContext) async throws -> JobOutcome {
            try fail?(payload)
            return .success(["lines": payload.lines.count])
        }
    }

    struct Flaky: Error, CustomStringConvertible {
        var description: String { "the mail service answered 503" }
    }

    func context(_ payload: String) -> JobContext {
        JobContext(job: JobEnvelope(type: "order.confirm", tier: .free, payload: Array(payload.utf8)),
                   logger: Logger(label: "test"), deadline: .now + .seconds(5), consumerID: "test")
    }

    let good = #"{"customer": {"email": "ada@example.com"}, "lines": [{"sku": "A-1", "quantity": 2}]}"#

    @Test func aPayloadThatDecodesReachesTheHandlerAndItsResultIsEncoded() async {
        let outcome = await Recorder().run(context(good))
        #expect(outcome == .success(result: Array(#"{"lines":1}"#.utf8)))
    }

    @Test(arguments: [
        (#"{"lines": []}"#, "payload does not decode as Order: field 'customer': missing"),
        (#"{"customer": {}, "lines": []}"#, "payload does not decode as Order: field 'customer.email': missing"),
        (#"{"customer": {"email": 5}, "lines": []}"#, "payload does not decode as Order: field 'customer.email': expected a String"),
        (#"{"customer": {"email": "a@b.c"}, "lines": [{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": "two"}]}"#,
         "payload does not decode as Order: field 'lines[1].quantity': expected a Int"),
        (#"{"customer": null, "lines": []}"#, "payload does not decode as Order: field 'customer': null, a value is required"),
        (#"[1, 2]"#, "payload does not decode as Order: field '(root)': expected a Dictionary<String, Any>"),
        (#"{"customer": "#, "payload does not decode as Order: not valid JSON"),
    ])
    func aPayloadThatDoesNotDecodeFailsPermanentlyNamingTheField(payload: String, reason: String) async {
        let outcome = await Recorder(fail: { _ in Issue.record("the handler ran on a payload that did not decode") }).run(context(payload))
        #expect(outcome == .permanentFailure(error: reason))
    }

    @Test func aThrownErrorIsRetriedAndAPermanentJobFailureIsNot() async {
        let retried = await Recorder(fail: { _ in throw Flaky() }).run(context(good))
        #expect(retried == .retry(error: "the mail service answered 503", retryAfter: nil))
        let refused = await Recorder(fail: { _ in throw PermanentJobFailure("no such customer") }).run(context(good))
        #expect(refused == .permanentFailure(error: "no such customer"))
    }

    @Test func theContextShowsTheJobWithoutItsEnvelope() {
        var job = JobEnvelope(type: "order.confirm", tier: .premium, payload: Array("{}".utf8), tenant: "acme", idempotencyKey: "k-1")
        job.attempt = 2
        let context = JobContext(job: job, logger: Logger(label: "test"), deadline: .now, consumerID: "c")
        #expect(context.jobID == job.id.lowercasedString)
        #expect(context.type == "order.confirm" && context.tier == .premium && context.tenant == "acme")
        #expect(context.attempt == 2 && context.idempotencyKey == "k-1" && context.payload == Array("{}".utf8))
        let anonymous = JobContext(job: JobEnvelope(type: "t", tier: .free, payload: []), logger: Logger(label: "test"),
                                   deadline: .now, consumerID: "c")
        #expect(anonymous.idempotencyKey == anonymous.jobID, "without a key of its own, the job's id")
    }

    @Test func aSecondHandlerForATypeIsRefusedByRegister() throws {
        var registry = HandlerRegistry([Recorder()])
        #expect(throws: HandlerRegistry.DuplicateType.self) { try registry.register(Recorder()) }
        #expect(registry.types == ["order.confirm"])
    }
}
