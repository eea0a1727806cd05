import WarrenJobs
import WarrenSupport

/// `message.send`: delivers `{"to": "...", "subject": "...", "body": "...", "kind": "..."}` by
/// POSTing the payload as it is to the notification service (`WARREN_NOTIFY_URL`) with the
/// job's idempotency key as `Idempotency-Key`, so a re-run never sends twice.
///
/// The answer decides the outcome: 2xx succeeds (`{"status": 200}`); 429 and 503 retry after
/// their `Retry-After` (else with backoff); other 5xx, timeouts and connection errors retry
/// with backoff; other 4xx fail permanently, naming the status and the start of the body.
/// While the destination's circuit breaker is open no call is made and the job is deferred
/// (``JobOutcome/deferred(reason:retryAfter:)``: back after the open period, attempt unspent).
///
/// Always registered: a consumer without `WARREN_NOTIFY_URL` fails these jobs permanently with
/// a reason naming the variable, rather than as an unknown type.
package struct MessageSendHandler: JobHandler {
    package static let jobType = JobTypes.messageSend

    package let type = MessageSendHandler.jobType
    /// The call's own deadline plus a margin, so a slow call ends as the call's timeout (which
    /// the breaker counts) rather than as the consumer cancelling the handler.
    package let timeout: Duration
    private let notifier: Notifier

    package init(notifier: Notifier) {
        self.notifier = notifier
        timeout = notifier.configuration.timeout + .seconds(5)
    }

    package func run(_ context: JobContext) async -> JobOutcome {
        if let problem = Self.validate(context.job.payload) { return .permanentFailure(error: problem) }
        guard notifier.configuration.url != nil else {
            return .permanentFailure(error: "message.send: \(NotifyConfiguration.Key.url) is not set on this consumer, so there is no notification service to deliver to")
        }
        let delivery = await notifier.post(context.job.payload, idempotencyKey: context.idempotencyKey, logger: context.logger)
        return Self.outcome(for: delivery, now: .now())
    }

    /// Why `payload` cannot be sent, or nil when it can: it must be a JSON object with string
    /// fields `to` (not empty), `subject` and `body`.
    package static func validate(_ payload: [UInt8]) -> String? {
        guard let fields = PayloadFields(payload) else {
            return #"message.send needs a JSON object payload like {"to": "...", "subject": "...", "body": "..."}"#
        }
        let missing = ["to", "subject", "body"].filter { fields.string($0) == nil }
        if !missing.isEmpty {
            return "message.send payload needs string fields \"to\", \"subject\" and \"body\"; missing or not a string: "
                + missing.map { "\"\($0)\"" }.joined(separator: ", ")
        }
        if fields.string("to")?.isEmpty == true { return "message.send payload has an empty \"to\"" }
        return nil
    }

    /// The job's outcome for how the delivery went (`now` reads a `Retry-After` date).
    package static func outcome(for delivery: Notifier.Delivery, now: Timestamp) -> JobOutcome {
        switch delivery {
        case .answered(let status, let retryAfter, let body):
            let answer = "notification service answered \(status)" + (body.isEmpty ? "" : ": \(snippet(body))")
            switch status {
            case 200...299:
                return .success(result: Array(#"{"status":\#(status)}"#.utf8))
            case 429, 503:
                return .retry(error: answer, retryAfter: retryAfter.flatMap { RetryAfter.parse($0, now: now) })
            case 500...599:
                return .retry(error: answer, retryAfter: nil)
            case 400...499:
                return .permanentFailure(error: "refused: " + answer)
            default:
                return .permanentFailure(error: "unexpected answer: " + answer)
            }
        case .timedOut(let detail):
            return .retry("notification service timed out: \(detail)")
        case .unreachable(let detail):
            return .retry("cannot reach the notification service: \(detail)")
        case .cancelled:
            return .retry("cancelled during the call to the notification service")
        case .breakerOpen(let destination, let retryAfter):
            return .deferred(reason: "circuit breaker for \(destination) is open", retryAfter: retryAfter)
        }
    }

    /// At most 200 characters of an answer's body, on one line.
    private static func snippet(_ body: String) -> String {
        let line = body.split(whereSeparator: \.isNewline).joined(separator: " ")
        return line.count > 200 ? String(line.prefix(200)) + "..." : line
    }
}

extension HandlerRegistry {
    /// What the `consumer` command runs: the built-ins and `message.send` (delivered through
    /// `notifier`).
    package static func standard(notifier: Notifier) -> HandlerRegistry {
        HandlerRegistry(builtInHandlers + [MessageSendHandler(notifier: notifier)])
    }
}
