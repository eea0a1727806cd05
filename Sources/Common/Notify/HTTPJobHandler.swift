import Crypto
import Foundation
import WarrenConfig
import WarrenJobs
import WarrenObservability
import WarrenSupport

/// Runs a job by calling the user's service (`WARREN_HTTP_HANDLERS=report.build=http://127.0.0.1:9000/jobs/report`),
/// the Cloud Tasks model: a worker in any language is an HTTP endpoint.
///
/// The consumer POSTs the payload as it is, with the job in headers (``headers(for:body:timestamp:)``)
/// and signed: `X-Warren-Signature: v1=<hex HMAC-SHA256(secret, "<X-Warren-Timestamp>.<body>")>`,
/// so the receiver can refuse a forgery (wrong signature) and a replay (an old timestamp).
///
/// - 2xx: success; a JSON body (up to ``Settings/maxResultBytes``) is the result;
/// - 429 or 503: retry, after its `Retry-After` when it has one;
/// - other 5xx, no answer within the timeout, no connection: retry with backoff;
/// - other 4xx (and anything else): permanent failure, with the start of the body.
///
/// Calls go through the consumer's one HTTP client and the per-destination circuit breakers of
/// `message.send` (``Notifier``): while a destination's breaker is open its jobs are deferred
/// without a call and without spending an attempt. Fleet-wide rate limits apply by job type
/// (`WARREN_RATE_LIMITED_TYPES`), as for any job.
package struct HTTPJobHandler: JobHandler {
    package struct Settings: Sendable, Equatable {
        /// The shared secret of the signature (`WARREN_HTTP_HANDLER_SECRET`).
        package var secret: [UInt8]
        /// One call's deadline (`WARREN_HTTP_HANDLER_TIMEOUT_SECONDS`, 30).
        package var callTimeout: Duration = .seconds(30)
        /// Most of a 2xx body kept as the result (`WARREN_HTTP_HANDLER_MAX_RESULT_BYTES`, 65536).
        package var maxResultBytes = 65_536

        package init(secret: [UInt8]) { self.secret = secret }
    }

    package enum Key {
        package static let handlers = "WARREN_HTTP_HANDLERS"
        package static let secret = "WARREN_HTTP_HANDLER_SECRET"
        package static let timeout = "WARREN_HTTP_HANDLER_TIMEOUT_SECONDS"
        package static let maxResult = "WARREN_HTTP_HANDLER_MAX_RESULT_BYTES"
    }

    package let type: String
    package let url: URL
    package let settings: Settings
    private let notifier: Notifier

    package init(type: String, url: URL, settings: Settings, notifier: Notifier) {
        self.type = type
        self.url = url
        self.settings = settings
        self.notifier = notifier
    }

    /// The call's deadline plus a margin, so a slow call ends as the call's timeout (which the
    /// breaker counts) rather than as the worker cancelling the handler.
    package var timeout: Duration { settings.callTimeout + .seconds(5) }

    package func run(_ context: JobContext) async -> JobOutcome {
        let body = context.payload
        let headers = Self.headers(for: context, body: body, timestamp: Timestamp.now().microseconds / 1_000_000,
                                   secret: settings.secret, callTimeout: settings.callTimeout)
        let delivery = await notifier.post(body, to: url, headers: headers, keepBody: settings.maxResultBytes + 1,
                                           timeout: settings.callTimeout, logger: context.logger)
        return outcome(for: delivery, now: .now())
    }

    /// What the receiver gets besides the body.
    package static func headers(for context: JobContext, body: [UInt8], timestamp: Int64, secret: [UInt8],
                                callTimeout: Duration) -> [(String, String)] {
        let deadline = Timestamp(microseconds: Timestamp.now().microseconds + callTimeout.nanoseconds / 1_000)
        var headers = [
            ("X-Warren-Job-Id", context.jobID),
            ("X-Warren-Job-Type", context.type),
            ("X-Warren-Tier", context.tier.rawValue),
            ("X-Warren-Attempt", String(context.attempt)),
            ("Idempotency-Key", context.idempotencyKey),
            ("X-Warren-Deadline", deadline.iso8601),
            ("X-Warren-Timestamp", String(timestamp)),
            ("X-Warren-Signature", signature(body: body, timestamp: timestamp, secret: secret)),
        ]
        if let tenant = context.tenant { headers.append(("X-Warren-Tenant", tenant)) }
        // The handler's span when traces are exported (the receiver's spans nest under it), else the job's own.
        if let traceparent = Traces.traceparent() ?? context.job.traceparent { headers.append(("traceparent", traceparent)) }
        // POST {"done": 3, "total": 10, "message": "..."} (or nothing, a heartbeat) to it while the job runs.
        if let progressURL = context.progressURL { headers.append(("X-Warren-Progress-URL", progressURL)) }
        return headers
    }

    /// `v1=` and the hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
    package static func signature(body: [UInt8], timestamp: Int64, secret: [UInt8]) -> String {
        var message = Array("\(timestamp).".utf8)
        message += body
        let code = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: secret))
        // By hand: `String(format:)` per byte cost more than the HMAC itself.
        let digits = Array("0123456789abcdef".utf8)
        var hex: [UInt8] = Array("v1=".utf8)
        hex.reserveCapacity(3 + 64)
        for byte in code {
            hex.append(digits[Int(byte >> 4)])
            hex.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: hex, as: UTF8.self)
    }

    /// The job's outcome for how the call went (`now` reads a `Retry-After` date).
    package func outcome(for delivery: Notifier.Delivery, now: Timestamp) -> JobOutcome {
        switch delivery {
        case .answered(let status, let retryAfter, let body):
            let answer = "\(url.absoluteString) answered \(status)" + (body.isEmpty ? "" : ": \(Self.snippet(body))")
            switch status {
            case 200...299:
                return .success(result: Self.result(Array(body.utf8), limit: settings.maxResultBytes))
            case 429, 503:
                return .retry(error: answer, retryAfter: retryAfter.flatMap { RetryAfter.parse($0, now: now) })
            case 500...599:
                return .retry(error: answer, retryAfter: nil)
            default:
                return .permanentFailure(error: answer)
            }
        case .timedOut(let detail):
            return .retry("\(url.absoluteString) timed out: \(detail)")
        case .unreachable(let detail):
            return .retry("cannot reach \(url.absoluteString): \(detail)")
        case .cancelled:
            return .retry("cancelled during the call to \(url.absoluteString)")
        case .breakerOpen(let destination, let retryAfter):
            return .deferred(reason: "circuit breaker for \(destination) is open", retryAfter: retryAfter)
        }
    }

    /// A 2xx body as the result: itself when it is one JSON value within `limit`, else none.
    package static func result(_ body: [UInt8], limit: Int) -> [UInt8]? {
        guard !body.isEmpty, body.count <= limit, (try? JSONScanner.validate(body)) != nil else { return nil }
        return body
    }

    /// At most 200 characters of an answer's body, on one line.
    private static func snippet(_ body: String) -> String {
        let line = body.split(whereSeparator: \.isNewline).joined(separator: " ")
        return line.count > 200 ? String(line.prefix(200)) + "..." : line
    }

    /// What `environment` asks for: `WARREN_HTTP_HANDLERS` as `type=http://host:port/path[,...]`,
    /// signed with `WARREN_HTTP_HANDLER_SECRET` (required with any handler: an unsigned call could
    /// not be told from a forgery). A malformed entry, a type named twice or a URL that is not
    /// http(s) is an error naming the variable. Empty without handlers.
    package static func configured(_ environment: [String: String]) throws(SettingsError)
        -> (entries: [(type: String, url: URL)], settings: Settings) {
        let reader = EnvironmentReader(environment)
        guard let list = reader.string(Key.handlers), !list.isEmpty else { return ([], Settings(secret: [])) }
        guard let secret = reader.string(Key.secret), secret.utf8.count >= 16 else {
            throw SettingsError(key: Key.secret, message: "is required with \(Key.handlers): at least 16 bytes, shared with the receivers")
        }
        var settings = Settings(secret: Array(secret.utf8))
        if let timeout = try reader.seconds(Key.timeout, 0.001...3_600) { settings.callTimeout = timeout }
        if let bytes = try reader.integer(Key.maxResult, 0...16_777_216) { settings.maxResultBytes = bytes }
        return (try parse(list), settings)
    }

    /// `type=url` pairs of `WARREN_HTTP_HANDLERS`, checked.
    package static func parse(_ list: String) throws(SettingsError) -> [(type: String, url: URL)] {
        var entries: [(type: String, url: URL)] = []
        for (type, text) in try HandlerList.entries(list, key: Key.handlers, expected: "http://host/path") {
            guard let url = URL(string: text), ["http", "https"].contains(url.scheme?.lowercased() ?? ""), url.host != nil else {
                throw SettingsError(key: Key.handlers, message: "'\(type)': expected an http:// or https:// URL, got '\(text)'")
            }
            entries.append((type, url))
        }
        return entries
    }
}
