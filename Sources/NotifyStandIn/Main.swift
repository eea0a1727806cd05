import ArgumentParser
import Foundation
import Hummingbird
import Logging

/// `notify-standin`: a stand-in for the notification service `message.send` posts to, for local
/// runs and tests. It records every POST it receives and fails on demand.
///
/// - `POST /notify`: the message (a JSON object with string `to`, `subject`, `body`) and an
///   `Idempotency-Key` header. Answers 200 (`{"status":"sent"}`, or `"duplicate"` for a key it
///   already delivered, so a repeat sends nothing twice), 503 or 429 with `Retry-After` at the
///   configured rates, 400 for a malformed message or a missing key.
/// - `GET /received`: what it received, in order, with counts; `DELETE /received` forgets it.
/// - `GET /config`, `PUT /config`: the failure settings, changeable at run time (a JSON object
///   with any of `failure_rate`, `rate_429`, `retry_after_seconds`, `delay_ms`, and `next`: a
///   list of statuses to answer the next requests with, in order, before the rates apply).
/// - `GET /healthz`.
@main
struct NotifyStandInCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notify-standin",
        abstract: "A stand-in notification service: records what message.send posts; fails on demand.",
        discussion: "Every option also reads a WARREN_STANDIN_* variable (see README.md); flags win.")

    @Option(help: "Address to listen on (default: $WARREN_STANDIN_HOST or 127.0.0.1).")
    var host: String?

    @Option(help: "Port to listen on (default: $WARREN_STANDIN_PORT or 8025; 0 picks a free one, logged at start).")
    var port: Int?

    @Option(help: "Share of requests answered 503 with Retry-After, 0...1 (default: $WARREN_STANDIN_FAILURE_RATE or 0).")
    var failureRate: Double?

    @Option(name: .customLong("rate-429"),
            help: "Share of requests answered 429 with Retry-After, 0...1 (default: $WARREN_STANDIN_RATE_429 or 0).")
    var rate429: Double?

    @Option(help: "Retry-After seconds on a 503 or 429 (default: $WARREN_STANDIN_RETRY_AFTER or 1).")
    var retryAfter: Int?

    @Option(help: "Milliseconds to wait before answering (default: $WARREN_STANDIN_DELAY_MS or 0).")
    var delayMs: Int?

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        func value<T: LosslessStringConvertible>(_ flag: T?, _ key: String, _ fallback: T) throws -> T {
            if let flag { return flag }
            guard let text = environment[key]?.trimmingCharacters(in: .whitespaces), !text.isEmpty else { return fallback }
            guard let parsed = T(text) else { throw ValidationError("\(key): cannot read '\(text)'") }
            return parsed
        }
        var settings = StandInSettings()
        settings.failureRate = try value(failureRate, "WARREN_STANDIN_FAILURE_RATE", 0)
        settings.rate429 = try value(rate429, "WARREN_STANDIN_RATE_429", 0)
        settings.retryAfterSeconds = try value(retryAfter, "WARREN_STANDIN_RETRY_AFTER", 1)
        settings.delayMilliseconds = try value(delayMs, "WARREN_STANDIN_DELAY_MS", 0)
        if let problem = settings.problem { throw ValidationError(problem) }
        let listenPort = try value(port, "WARREN_STANDIN_PORT", 8025)
        guard (0...65_535).contains(listenPort) else { throw ValidationError("--port must be 0...65535") }
        let listenHost = try value(host, "WARREN_STANDIN_HOST", "127.0.0.1")

        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = environment["LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) } ?? .info
            return handler
        }
        let logger = Logger(label: "warren.notify-standin")
        let inbox = Inbox(settings: settings)
        let app = Application(
            router: StandInRoutes(inbox: inbox, logger: logger).router(),
            configuration: .init(address: .hostname(listenHost, port: listenPort), serverName: "warren-notify-standin"),
            onServerRunning: { channel in
                logger.info("notify stand-in listening", metadata: [
                    "port": "\(channel.localAddress?.port ?? listenPort)", "settings": "\(inbox.settings.json)",
                ])
            },
            logger: logger)
        try await app.runService()
    }
}
