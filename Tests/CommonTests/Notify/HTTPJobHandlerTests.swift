import Foundation
import Logging
import Testing
@testable import WarrenConfig
@testable import WarrenJobs
@testable import WarrenNotify
@testable import WarrenSupport

/// HTTP handlers' pure parts: the signature, the headers, each answer's outcome, configuration.
@Suite struct HTTPJobHandlerTests {
    let notifier = Notifier(configuration: try! NotifyConfiguration(environment: [:]), logger: Logger(label: "test"))

    func handler() -> HTTPJobHandler {
        HTTPJobHandler(type: "report.build", url: URL(string: "http://127.0.0.1:9000/jobs/report")!,
                       settings: .init(secret: Array("0123456789abcdef".utf8)), notifier: notifier)
    }

    @Test func theSignatureIsHMACSHA256OfTimestampDotBody() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"0123456789abcdef", b"1765000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        let signature = HTTPJobHandler.signature(body: Array(#"{"a":1}"#.utf8), timestamp: 1_765_000_000,
                                                 secret: Array("0123456789abcdef".utf8))
        #expect(signature == "v1=" + Self.pythonHMAC)
    }

    static let pythonHMAC: String = {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c",
                             #"import hmac,hashlib; print(hmac.new(b"0123456789abcdef", b'1765000000.{"a":1}', hashlib.sha256).hexdigest())"#]
        let out = Pipe()
        process.standardOutput = out
        try? process.run()
        process.waitUntilExit()
        return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }()

    @Test func theReceiverGetsTheJobInHeaders() {
        var job = JobEnvelope(type: "report.build", tier: .premium, payload: Array("{}".utf8), tenant: "acme", idempotencyKey: "r-1")
        job.attempt = 2
        job.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let context = JobContext(job: job, logger: Logger(label: "test"), deadline: .now, consumerID: "c")
        let headers = Dictionary(uniqueKeysWithValues: HTTPJobHandler.headers(for: context, body: job.payload, timestamp: 1_765_000_000,
                                                                               secret: Array("0123456789abcdef".utf8), callTimeout: .seconds(30)))
        #expect(headers["X-Warren-Job-Id"] == context.jobID && headers["X-Warren-Job-Type"] == "report.build")
        #expect(headers["X-Warren-Attempt"] == "2" && headers["Idempotency-Key"] == "r-1" && headers["X-Warren-Tenant"] == "acme")
        #expect(headers["X-Warren-Tier"] == "premium" && headers["traceparent"] == job.traceparent)
        #expect(headers["X-Warren-Timestamp"] == "1765000000")
        #expect(headers["X-Warren-Signature"] == HTTPJobHandler.signature(body: job.payload, timestamp: 1_765_000_000,
                                                                          secret: Array("0123456789abcdef".utf8)))
        #expect(headers["X-Warren-Deadline"].flatMap { Timestamp(iso8601: $0) } != nil)
    }

    @Test func eachAnswerHasItsOutcome() {
        let handler = handler()
        let now = Timestamp.now()
        let url = "http://127.0.0.1:9000/jobs/report"
        #expect(handler.outcome(for: .answered(status: 200, retryAfter: nil, body: #"{"rows": 3}"#), now: now)
                == .success(result: Array(#"{"rows": 3}"#.utf8)))
        #expect(handler.outcome(for: .answered(status: 204, retryAfter: nil, body: ""), now: now) == .success(result: nil))
        #expect(handler.outcome(for: .answered(status: 200, retryAfter: nil, body: "done"), now: now) == .success(result: nil),
                "a body that is not JSON is no result")
        #expect(handler.outcome(for: .answered(status: 429, retryAfter: "7", body: ""), now: now)
                == .retry(error: "\(url) answered 429", retryAfter: .seconds(7)))
        #expect(handler.outcome(for: .answered(status: 503, retryAfter: nil, body: "down"), now: now)
                == .retry(error: "\(url) answered 503: down", retryAfter: nil))
        #expect(handler.outcome(for: .answered(status: 500, retryAfter: "7", body: ""), now: now)
                == .retry(error: "\(url) answered 500", retryAfter: nil), "only 429 and 503 name their time")
        #expect(handler.outcome(for: .answered(status: 422, retryAfter: nil, body: #"{"error":"no such report"}"#), now: now)
                == .permanentFailure(error: #"\#(url) answered 422: {"error":"no such report"}"#))
        #expect(handler.outcome(for: .answered(status: 301, retryAfter: nil, body: ""), now: now)
                == .permanentFailure(error: "\(url) answered 301"))
        #expect(handler.outcome(for: .timedOut("no answer within 30 s"), now: now) == .retry("\(url) timed out: no answer within 30 s"))
        #expect(handler.outcome(for: .unreachable("connection refused"), now: now) == .retry("cannot reach \(url): connection refused"))
        #expect(handler.outcome(for: .breakerOpen(destination: "http://127.0.0.1:9000", retryAfter: .seconds(30)), now: now)
                == .deferred(reason: "circuit breaker for http://127.0.0.1:9000 is open", retryAfter: .seconds(30)))
        let big = Array(("[" + String(repeating: "1,", count: 40_000) + "1]").utf8)
        #expect(HTTPJobHandler.result(big, limit: 65_536) == nil, "over the limit: no result")
    }

    @Test func configurationNamesWhatIsWrong() throws {
        let secret = "0123456789abcdef"
        let (entries, settings) = try HTTPJobHandler.configured([
            "WARREN_HTTP_HANDLERS": "report.build=http://127.0.0.1:9000/jobs/report, resize=https://images.internal/resize?size=64",
            "WARREN_HTTP_HANDLER_SECRET": secret, "WARREN_HTTP_HANDLER_TIMEOUT_SECONDS": "5",
        ])
        #expect(entries.map(\.type) == ["report.build", "resize"])
        #expect(entries.map(\.url.absoluteString) == ["http://127.0.0.1:9000/jobs/report", "https://images.internal/resize?size=64"])
        #expect(settings.callTimeout == .seconds(5) && settings.secret == Array(secret.utf8))
        #expect(try HTTPJobHandler.configured([:]).entries.isEmpty)
        for (environment, key, message) in [
            (["WARREN_HTTP_HANDLERS": "a=http://h/x"], "WARREN_HTTP_HANDLER_SECRET", "is required"),
            (["WARREN_HTTP_HANDLERS": "a=http://h/x", "WARREN_HTTP_HANDLER_SECRET": "short"], "WARREN_HTTP_HANDLER_SECRET", "is required"),
            (["WARREN_HTTP_HANDLERS": "report", "WARREN_HTTP_HANDLER_SECRET": secret], "WARREN_HTTP_HANDLERS", "expected type=http"),
            (["WARREN_HTTP_HANDLERS": "a=ftp://h/x", "WARREN_HTTP_HANDLER_SECRET": secret], "WARREN_HTTP_HANDLERS", "'a': expected an http"),
            (["WARREN_HTTP_HANDLERS": "a=http://h/x,a=http://h/y", "WARREN_HTTP_HANDLER_SECRET": secret], "WARREN_HTTP_HANDLERS",
             "job type 'a' is named twice"),
        ] {
            #expect {
                try HTTPJobHandler.configured(environment)
            } throws: { error in
                let error = error as? SettingsError
                return error?.key == key && error?.message.hasPrefix(message) == true
            }
        }
    }
}
