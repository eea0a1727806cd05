import Foundation
import Logging
import WarrenSupport

/// The job types Warren itself knows by name.
package enum JobTypes {
    /// A message through the notification service (`MessageSendHandler`).
    package static let messageSend = "message.send"
}

/// What a job's handler decided.
///
/// Part of Warren's public API (see the README, "Writing jobs", for its versioning).
public enum JobOutcome: Sendable, Equatable {
    /// Done; `result` (JSON text, optional) is stored in `job_runs.result`.
    case success(result: [UInt8]?)
    /// Failed, worth another try: retried with backoff (or after `retryAfter`) until the
    /// retry policy's attempts are spent, then dead.
    case retry(error: String, retryAfter: Duration?)
    /// Failed for good (bad payload, refused by a downstream service): no retry; the row says
    /// `failed` and the job is copied to `warren.jobs.dead` for inspection.
    case permanentFailure(error: String)
    /// Stopped because the job was cancelled (`DELETE /v1/jobs/{id}`): recorded `cancelled`,
    /// never retried. The worker returns this itself when a cancellation reaches a running
    /// job; a handler may return it after noticing `Task.isCancelled`.
    case cancelled(reason: String)
    /// Not run now through no fault of the job (its destination's circuit breaker is open):
    /// put back on the retry delay queue nearest `retryAfter` with the **same** attempt number,
    /// so the attempt is not spent. Recorded as `retrying` with the reason; never dead.
    case deferred(reason: String, retryAfter: Duration)

    /// Done, with no result.
    public static var success: JobOutcome { .success(result: nil) }
    /// Failed, worth another try after the retry policy's backoff.
    public static func retry(_ error: String) -> JobOutcome { .retry(error: error, retryAfter: nil) }

    /// Done, with `result` encoded as JSON into `job_runs.result` (a result that does not
    /// encode is a success without one; the job's work is done either way).
    public static func success(_ result: some Encodable) -> JobOutcome {
        .success(result: (try? JSONEncoder().encode(result)).map(Array.init))
    }
}

/// What a handler gets besides the job: a logger carrying the job's metadata, the attempt,
/// the idempotency key to pass downstream, and the deadline. Cancellation (shutdown past its
/// deadline, a cancelled job) arrives as Swift task cancellation: check `Task.isCancelled`
/// or use cancellable awaits such as `Task.sleep`.
///
/// Part of Warren's public API.
public struct JobContext: Sendable {
    package var job: JobEnvelope
    /// A logger whose metadata names the job (`job_id`, `job_type`, `tier`, `attempt`, ...).
    public var logger: Logger
    /// When the worker cancels this run and counts it as a retryable failure (the handler's
    /// ``JobHandler/timeout`` from the start of the run).
    public var deadline: ContinuousClock.Instant
    /// The worker running the job (its `consumer_id`).
    public var consumerID: String
    /// Where ``progress(done:total:message:)`` and ``heartbeat()`` go (none: they do nothing).
    package var progressSink: (any JobProgressSink)?

    package init(job: JobEnvelope, logger: Logger, deadline: ContinuousClock.Instant, consumerID: String,
                 progressSink: (any JobProgressSink)? = nil) {
        self.job = job
        self.logger = logger
        self.deadline = deadline
        self.consumerID = consumerID
        self.progressSink = progressSink
    }

    /// Reports how far the job got: `done` of `total` (leave `total` nil when unknown), with an
    /// optional message (cut at 500 characters). Shown as `progress` by `GET /v1/jobs/{id}` and
    /// summed in its batch's view. Cheap and never blocking: the worker keeps the latest report
    /// of each job and writes them together about once a second, so call it as often as you
    /// like. A report is also a heartbeat.
    public func progress(done: Int, total: Int? = nil, message: String? = nil) {
        report(JobProgress(done: Int64(done), total: total.map(Int64.init), message: message))
    }

    /// Tells Warren the job is alive without reporting progress. A running job that neither
    /// reported nor heartbeat for `WARREN_STALL_SECONDS` (120) reads `stalled` in
    /// `GET /v1/jobs/{id}` and counts in `warren_consumer_jobs_stalled`.
    public func heartbeat() {
        report(nil)
    }

    /// A report (nil: a heartbeat alone) to the worker's tracker.
    package func report(_ progress: JobProgress?) {
        progressSink?.report(job: job.id, attempt: job.attempt, progress)
    }

    /// A URL this run's code outside the worker (an HTTP or command handler) may POST reports
    /// to; nil when the worker serves none.
    package var progressURL: String? { progressSink?.progressURL(job: job.id) }

    /// The job's id (a UUIDv7, lowercase): the same across retries and redeliveries.
    public var jobID: String { job.id.lowercasedString }
    /// The job's type (`email.welcome`): what chose this handler.
    public var type: String { job.type }
    /// The tier the job was published to.
    public var tier: Tier { job.tier }
    /// The tenant the job belongs to, if the producer named one.
    public var tenant: String? { job.tenant }
    /// The payload as published: JSON text.
    public var payload: [UInt8] { job.payload }
    /// 1 on the first run, 2 on the first retry, and so on.
    public var attempt: Int { job.attempt }
    /// The key to hand to downstream services so a re-run does not repeat an effect: the
    /// job's own idempotency key when the producer gave one, else its id.
    public var idempotencyKey: String { job.idempotencyKey ?? job.id.lowercasedString }
}

/// Runs one type of job. Implementations are values shared by every concurrent job of that
/// type, so they must be `Sendable` and keep no per-job state.
///
/// ```swift
/// struct SendEmail: JobHandler {
///     let type = "email.send"
///     func run(_ context: JobContext) async -> JobOutcome {
///         guard let message = try? JSONDecoder().decode(Email.self, from: Data(context.payload)) else {
///             return .permanentFailure(error: "payload is not an email")
///         }
///         do {
///             try await mailer.send(message, idempotencyKey: context.idempotencyKey)
///             return .success
///         } catch {
///             return .retry("mailer: \(error)")
///         }
///     }
/// }
/// ```
///
/// Part of Warren's public API. ``TypedJobHandler`` decodes a `Decodable` payload for you.
public protocol JobHandler: Sendable {
    /// The job type this handler runs.
    var type: String { get }
    /// How long one run may take before it is cancelled and counted as a retryable failure
    /// (5 minutes unless the handler says otherwise).
    var timeout: Duration { get }
    /// Runs one job. Called concurrently, up to the worker's concurrency.
    func run(_ context: JobContext) async -> JobOutcome
}

extension JobHandler {
    public var timeout: Duration { .seconds(300) }
}

/// The handlers a worker knows, by job type. A job whose type is not here fails
/// permanently with a reason that names the type.
///
/// Part of Warren's public API.
public struct HandlerRegistry: Sendable {
    private var handlers: [String: any JobHandler] = [:]

    /// A type listed twice is a programming error: two handlers for one type is never meant
    /// (use ``register(_:)`` to get an error instead).
    public init(_ handlers: [any JobHandler] = []) {
        for handler in handlers {
            precondition(self.handlers[handler.type] == nil, "two handlers for job type '\(handler.type)'")
            self.handlers[handler.type] = handler
        }
    }

    /// A second handler for a type already registered.
    public struct DuplicateType: Error, CustomStringConvertible {
        /// The job type registered twice.
        public var type: String
        public var description: String { "a handler for job type '\(type)' is already registered" }
    }

    /// `noop`, `sleep` and `fail`: for demos, tests and benchmarks.
    package static var builtIn: HandlerRegistry { HandlerRegistry(builtInHandlers) }

    package static var builtInHandlers: [any JobHandler] { [NoopHandler(), SleepHandler(), FailHandler()] }

    /// The job types the `consumer` command runs (the built-ins and `message.send`, see
    /// `HandlerRegistry.standard(notifier:)`), for the producer to accept.
    package static var standardTypes: [String] { (builtIn.types + [JobTypes.messageSend]).sorted() }

    /// Adds `handler` for its type. Throws ``DuplicateType`` if that type has one already
    /// (it is never silently replaced).
    public mutating func register(_ handler: any JobHandler) throws(DuplicateType) {
        guard handlers[handler.type] == nil else { throw DuplicateType(type: handler.type) }
        handlers[handler.type] = handler
    }

    /// The handler of `type`, if one is registered.
    public func handler(for type: String) -> (any JobHandler)? { handlers[type] }

    /// The registered job types, sorted.
    public var types: [String] { handlers.keys.sorted() }
}

// MARK: - Built-in handlers

/// `noop`: succeeds at once. The benchmark's job.
package struct NoopHandler: JobHandler {
    package let type = "noop"
    package init() {}
    package func run(_ context: JobContext) async -> JobOutcome { .success }
}

/// `sleep` with `{"ms": 50}`: sleeps that long (cancellable), then succeeds.
package struct SleepHandler: JobHandler {
    package let type = "sleep"
    package init() {}
    package func run(_ context: JobContext) async -> JobOutcome {
        guard let milliseconds = PayloadFields(context.job.payload)?.int("ms"), milliseconds >= 0 else {
            return .permanentFailure(error: #"sleep needs a payload like {"ms": 50}"#)
        }
        do {
            try await Task.sleep(for: .milliseconds(milliseconds))
        } catch {
            return .retry("cancelled while sleeping")
        }
        return .success(result: Array(#"{"slept_ms":\#(milliseconds)}"#.utf8))
    }
}

/// `fail` with `{"times": 2}` fails that many attempts (retryable) then succeeds;
/// `{"always": true}` always fails (retryable); `{"permanent": true}` fails permanently.
package struct FailHandler: JobHandler {
    package let type = "fail"
    package init() {}
    package func run(_ context: JobContext) async -> JobOutcome {
        let fields = PayloadFields(context.job.payload)
        if fields?.bool("permanent") == true { return .permanentFailure(error: "failed permanently, as asked") }
        if fields?.bool("always") == true { return .retry("failed on attempt \(context.attempt), as asked (always)") }
        let times = fields?.int("times") ?? 1
        if context.attempt <= times { return .retry("failed on attempt \(context.attempt) of \(times), as asked") }
        return .success(result: Array(#"{"attempts":\#(context.attempt)}"#.utf8))
    }
}

/// Top-level fields of a JSON object payload, for handlers that read one or two. (A JSON
/// `1` is a number here, never a boolean, unlike Foundation's bridged `NSNumber`.)
package struct PayloadFields {
    private let bytes: [UInt8]
    private let members: [JSONScanner.Member]

    package init?(_ payload: [UInt8]) {
        guard let members = try? JSONScanner.objectMembers(payload) else { return nil }
        self.bytes = payload
        self.members = members
    }

    private func member(_ key: String, _ kind: JSONScanner.Kind) -> JSONScanner.Member? {
        members.first { $0.key == key && $0.kind == kind }
    }

    /// An integer field (`{"ms": 50}`); nil when absent, not a number, or not a whole one.
    package func int(_ key: String) -> Int? {
        guard let member = member(key, .number) else { return nil }
        return Int(String(decoding: bytes[member.value], as: UTF8.self))
    }

    package func bool(_ key: String) -> Bool? {
        guard let member = member(key, .bool) else { return nil }
        return bytes[member.value.lowerBound] == UInt8(ascii: "t")
    }

    package func string(_ key: String) -> String? {
        guard let member = member(key, .string) else { return nil }
        return try? JSONScanner.string(bytes, at: member.value)
    }

    /// An array of strings (`{"keys": ["a", "b"]}`); nil when absent, or not all strings.
    package func strings(_ key: String) -> [String]? {
        guard let member = member(key, .array) else { return nil }
        let array = Array(bytes[member.value])
        guard let elements = try? JSONScanner.arrayElements(array) else { return nil }
        var strings: [String] = []
        for element in elements {
            guard element.kind == .string, let string = try? JSONScanner.string(array, at: element.value) else { return nil }
            strings.append(string)
        }
        return strings
    }
}
