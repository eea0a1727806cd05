import Foundation
import Logging
import Testing
@testable import WarrenConfig
@testable import WarrenJobs
@testable import WarrenNotify
@testable import WarrenResilience
@testable import WarrenSupport

@Suite struct MessageSendHandlerTests {
    let now = Timestamp(microseconds: 784_111_777 * 1_000_000)

    func outcome(_ delivery: Notifier.Delivery) -> JobOutcome { MessageSendHandler.outcome(for: delivery, now: now) }

    // MARK: - Payloads

    @Test func acceptsAMessageAndNamesWhatIsMissingOrWrong() {
        #expect(MessageSendHandler.validate(Array(#"{"to":"a@b.c","subject":"Hi","body":"Happy birthday","kind":"birthday"}"#.utf8)) == nil)
        #expect(MessageSendHandler.validate(Array(#"{"to":"a@b.c","subject":"","body":"x"}"#.utf8)) == nil, "an empty subject is allowed")
        let missing = MessageSendHandler.validate(Array(#"{"to":"a@b.c","subject":7}"#.utf8))
        #expect(missing?.contains(#"missing or not a string: "subject", "body""#) == true, "\(missing ?? "nil")")
        #expect(MessageSendHandler.validate(Array(#"{"to":"","subject":"s","body":"b"}"#.utf8))?.contains(#"empty "to""#) == true)
        for notAnObject in [#"["to"]"#, #""hello""#, "42", "{", ""] {
            #expect(MessageSendHandler.validate(Array(notAnObject.utf8))?.contains("needs a JSON object payload") == true, "\(notAnObject)")
        }
    }

    // MARK: - Answers

    @Test func twoHundredsSucceedWithTheStatus() {
        #expect(outcome(.answered(status: 200, retryAfter: nil, body: "{}")) == .success(result: Array(#"{"status":200}"#.utf8)))
        #expect(outcome(.answered(status: 202, retryAfter: nil, body: "")) == .success(result: Array(#"{"status":202}"#.utf8)))
    }

    @Test func throttledAndUnavailableRetryAfterWhatTheServiceSaid() {
        #expect(outcome(.answered(status: 429, retryAfter: "7", body: "slow down")) ==
            .retry(error: "notification service answered 429: slow down", retryAfter: .seconds(7)))
        #expect(outcome(.answered(status: 503, retryAfter: "Sun, 06 Nov 1994 08:50:37 GMT", body: "")) ==
            .retry(error: "notification service answered 503", retryAfter: .seconds(60)))
        #expect(outcome(.answered(status: 503, retryAfter: nil, body: "")) == .retry(error: "notification service answered 503", retryAfter: nil),
                "no Retry-After: the retry policy's backoff")
        #expect(outcome(.answered(status: 429, retryAfter: "whenever", body: "")) == .retry(error: "notification service answered 429", retryAfter: nil))
    }

    @Test func otherServerErrorsTimeoutsAndConnectionErrorsRetryWithBackoff() {
        #expect(outcome(.answered(status: 500, retryAfter: "5", body: "boom")) == .retry(error: "notification service answered 500: boom", retryAfter: nil))
        #expect(outcome(.answered(status: 502, retryAfter: nil, body: "")) == .retry(error: "notification service answered 502", retryAfter: nil))
        guard case .retry(let timeout, nil) = outcome(.timedOut("no answer within 10 seconds")) else {
            Issue.record("a timeout retries")
            return
        }
        #expect(timeout.contains("timed out"))
        guard case .retry(let refused, nil) = outcome(.unreachable("connection refused")) else {
            Issue.record("a connection error retries")
            return
        }
        #expect(refused.contains("connection refused"))
    }

    @Test func clientErrorsArePermanentWithTheStatusAndTheStartOfTheBody() {
        let long = String(repeating: "x", count: 500)
        guard case .permanentFailure(let error) = outcome(.answered(status: 422, retryAfter: nil, body: "bad address\nline 2 " + long)) else {
            Issue.record("a 422 is permanent")
            return
        }
        #expect(error.hasPrefix("refused: notification service answered 422: bad address line 2 xxx"))
        #expect(error.hasSuffix("..."))
        #expect(error.count < 300)
        #expect(outcome(.answered(status: 404, retryAfter: nil, body: "")) == .permanentFailure(error: "refused: notification service answered 404"))
        #expect(outcome(.answered(status: 301, retryAfter: nil, body: "")) == .permanentFailure(error: "unexpected answer: notification service answered 301"))
    }

    @Test func anOpenBreakerDefersWithTheTimeUntilItsTrial() {
        #expect(outcome(.breakerOpen(destination: "http://127.0.0.1:8025", retryAfter: .seconds(12))) ==
            .deferred(reason: "circuit breaker for http://127.0.0.1:8025 is open", retryAfter: .seconds(12)))
    }

    @Test func whatCountsAgainstTheDestination() {
        #expect(Notifier.Delivery.answered(status: 200, retryAfter: nil, body: "").isDestinationFailure == false)
        #expect(Notifier.Delivery.answered(status: 400, retryAfter: nil, body: "").isDestinationFailure == false, "it answered")
        #expect(Notifier.Delivery.answered(status: 429, retryAfter: nil, body: "").isDestinationFailure == true, "overloaded")
        #expect(Notifier.Delivery.answered(status: 500, retryAfter: nil, body: "").isDestinationFailure == true)
        #expect(Notifier.Delivery.answered(status: 503, retryAfter: nil, body: "").isDestinationFailure == true)
        #expect(Notifier.Delivery.timedOut("").isDestinationFailure == true)
        #expect(Notifier.Delivery.unreachable("").isDestinationFailure == true)
        #expect(Notifier.Delivery.cancelled.isDestinationFailure == nil, "released, not recorded")
        #expect(Notifier.Delivery.answered(status: 503, retryAfter: nil, body: "").metricOutcome == "unavailable")
        #expect(Notifier.Delivery.answered(status: 418, retryAfter: nil, body: "").metricOutcome == "refused")
    }

    // MARK: - Configuration

    @Test func readsTheNotifyVariables() throws {
        let configuration = try NotifyConfiguration(environment: [
            "WARREN_NOTIFY_URL": "http://127.0.0.1:8025/notify", "WARREN_NOTIFY_TIMEOUT_SECONDS": "2.5",
            "WARREN_NOTIFY_BREAKER_OPEN_SECONDS": "3",
        ])
        #expect(configuration.url?.absoluteString == "http://127.0.0.1:8025/notify")
        #expect(configuration.timeout == .milliseconds(2_500))
        #expect(configuration.breaker.openDuration == .seconds(3))
        #expect(configuration.breaker.window == 10)
        #expect(configuration.breaker.failureThreshold == 5)
        let defaults = try NotifyConfiguration(environment: ["WARREN_NOTIFY_URL": "  "])
        #expect(defaults == NotifyConfiguration(), "blank is unset")
        #expect(defaults.timeout == .seconds(10))
        #expect(defaults.breaker.openDuration == .seconds(30))
    }

    @Test func aBadVariableIsAnErrorNamingIt() {
        for (key, value) in [("WARREN_NOTIFY_URL", "ftp://x/notify"), ("WARREN_NOTIFY_URL", "127.0.0.1:8025"),
                             ("WARREN_NOTIFY_URL", "http:///notify"), ("WARREN_NOTIFY_TIMEOUT_SECONDS", "0"),
                             ("WARREN_NOTIFY_TIMEOUT_SECONDS", "ten"), ("WARREN_NOTIFY_BREAKER_OPEN_SECONDS", "-1")] {
            do {
                _ = try NotifyConfiguration(environment: [key: value])
                Issue.record("\(key)=\(value) was accepted")
            } catch {
                #expect(error.key == key)
            }
        }
    }

    @Test func theDestinationIsSchemeHostAndPort() throws {
        func destination(_ text: String) throws -> String { NotifyConfiguration.destination(of: try NotifyConfiguration.parseURL(text)) }
        #expect(try destination("http://127.0.0.1:8025/notify") == "http://127.0.0.1:8025")
        #expect(try destination("https://user:secret@Notify.Example.com/v1/send?x=1") == "https://notify.example.com:443")
        #expect(try destination("http://example.com/") == "http://example.com:80")
        #expect(try destination("http://[::1]:8025/notify") == "http://[::1]:8025")
    }

    // MARK: - Without a URL

    @Test func withoutAURLTheJobFailsPermanentlyNamingTheVariable() async {
        let notifier = Notifier(configuration: NotifyConfiguration(), logger: Logger(label: "test"))
        let handler = MessageSendHandler(notifier: notifier)
        #expect(handler.type == "message.send")
        #expect(handler.timeout == .seconds(15), "the call's 10 s and a margin")
        let job = JobEnvelope(type: "message.send", tier: .free, payload: Array(#"{"to":"a@b.c","subject":"s","body":"b"}"#.utf8))
        let context = JobContext(job: job, logger: Logger(label: "test"), deadline: .now + .seconds(5), consumerID: "test")
        guard case .permanentFailure(let error) = await handler.run(context) else {
            Issue.record("expected a permanent failure")
            return
        }
        #expect(error.contains("WARREN_NOTIFY_URL"))
        #expect(notifier.statusJSON() == #"{"configured":false,"timeout_ms":10000,"breaker_open_ms":30000,"destinations":{}}"#)
        await notifier.shutdown()
    }

    @Test func theRegistryRunsMessageSendAndTheProducerKnowsIt() async {
        let notifier = Notifier(configuration: NotifyConfiguration(), logger: Logger(label: "test"))
        #expect(HandlerRegistry.standard(notifier: notifier).types == ["fail", "message.send", "noop", "sleep"])
        #expect(HandlerRegistry.standardTypes == HandlerRegistry.standard(notifier: notifier).types)
        await notifier.shutdown()
    }
}
