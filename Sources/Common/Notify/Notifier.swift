import AsyncHTTPClient
import CoreMetrics
import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import Synchronization
import WarrenObservability
import WarrenResilience
import WarrenSupport

/// Posts messages to the notification service (`WARREN_NOTIFY_URL`): one shared HTTP client
/// per consumer process and one ``CircuitBreaker`` per destination (scheme, host and port).
///
/// AsyncHTTPClient runs on NIO's event loops, never blocking Swift's cooperative pool. Call
/// ``shutdown()`` once, after the last job that may use it has finished (the consumer's
/// service group does that in reverse start order).
package final class Notifier: Sendable {
    /// How one attempt to deliver went.
    package enum Delivery: Sendable, Equatable {
        /// The service answered: its status, its `Retry-After` (if any) and the start of its body.
        case answered(status: Int, retryAfter: String?, body: String)
        /// No complete answer within the call's deadline (connecting included).
        case timedOut(String)
        /// Could not connect, or the connection broke.
        case unreachable(String)
        /// The job was cancelled while the call ran (shutdown, timeout, a cancellation request).
        case cancelled
        /// The destination's breaker is open: no call was made.
        case breakerOpen(destination: String, retryAfter: Duration)

        /// Whether the breaker counts it against the destination: no answer, a 5xx, a 429.
        /// Other answers (2xx, 4xx, ...) show the destination is up, so they count as successes.
        package var isDestinationFailure: Bool? {
            switch self {
            case .answered(let status, _, _): status == 429 || (500...599).contains(status)
            case .timedOut, .unreachable: true
            case .cancelled, .breakerOpen: nil
            }
        }

        /// The `outcome` label of `warren_notify_calls_total`.
        package var metricOutcome: String {
            switch self {
            case .answered(let status, _, _):
                switch status {
                case 200...299: "delivered"
                case 429: "throttled"
                case 503: "unavailable"
                case 500...599: "server_error"
                default: "refused"
                }
            case .timedOut: "timeout"
            case .unreachable: "connection_error"
            case .cancelled: "cancelled"
            case .breakerOpen: "deferred"
            }
        }
    }

    /// One destination's breaker and metric handles (made once: swift-metrics lookups are not free).
    private struct Destination: Sendable {
        let breaker: CircuitBreaker
        let state: Gauge
        let calls: [String: Counter]
        let deferred: Counter

        static let outcomes = ["delivered", "refused", "throttled", "unavailable", "server_error", "timeout", "connection_error", "cancelled"]

        init(name: String, breaker: CircuitBreaker) {
            self.breaker = breaker
            let dimension = ("destination", name)
            state = Gauge(label: "warren_notify_breaker_state", dimensions: [dimension])
            var calls: [String: Counter] = [:]
            for outcome in Self.outcomes {
                calls[outcome] = Counter(label: "warren_notify_calls_total", dimensions: [dimension, ("outcome", outcome)])
            }
            self.calls = calls
            deferred = Counter(label: "warren_notify_deferred_total", dimensions: [dimension])
            state.record(breaker.snapshot.state.gaugeValue)
            BreakerBoard.shared.register(breaker, as: name)
        }

        func showState() { state.record(breaker.snapshot.state.gaugeValue) }
    }

    package let configuration: NotifyConfiguration
    /// Nil without `WARREN_NOTIFY_URL`: nothing to call.
    private let client: HTTPClient?
    private let destinations = Mutex([String: Destination]())
    private let now: @Sendable () -> ContinuousClock.Instant
    /// The answer's body is read to its end (so the connection can be reused) but only this
    /// much is kept, for error messages.
    private static let bodySnippetBytes = 512

    /// - Parameters:
    ///   - concurrency: calls that may run at once (the consumer's), so the client's pool keeps
    ///     that many connections instead of queueing calls behind its default eight.
    ///   - now: the breakers' clock.
    ///   - needsClient: make the HTTP client even without `WARREN_NOTIFY_URL` (HTTP handlers call
    ///     their own URLs through it, under the same breakers).
    package init(configuration: NotifyConfiguration, concurrency: Int = 8, needsClient: Bool = false, logger: Logger,
                 now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }) {
        self.configuration = configuration
        self.now = now
        if configuration.url != nil || needsClient {
            let connect = TimeAmount.nanoseconds(min(configuration.timeout, .seconds(10)).nanoseconds)
            let client = HTTPClient(
                eventLoopGroup: HTTPClient.defaultEventLoopGroup,
                configuration: HTTPClient.Configuration(
                    redirectConfiguration: .disallow,
                    timeout: .init(connect: connect),
                    connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: max(8, concurrency))),
                backgroundActivityLogger: logger)
            self.client = client
        } else {
            client = nil
        }
        // The configured destination shows on /status (closed) before its first call.
        if let url = configuration.url { _ = destination(NotifyConfiguration.destination(of: url)) }
    }

    private func destination(_ name: String) -> Destination {
        destinations.withLock { destinations in
            if let existing = destinations[name] { return existing }
            let made = Destination(name: name, breaker: CircuitBreaker(configuration: configuration.breaker, now: now))
            destinations[name] = made
            return made
        }
    }

    /// The breaker of `destination` (`http://host:port`).
    package func breaker(for destination: String) -> CircuitBreaker { self.destination(destination).breaker }

    /// POSTs `body` (a JSON object, as it is) to `WARREN_NOTIFY_URL` with the job's
    /// `Idempotency-Key`, unless the destination's breaker is open. Never throws: every way it
    /// can end is a ``Delivery``.
    package func post(_ body: [UInt8], idempotencyKey: String, logger: Logger) async -> Delivery {
        guard let url = configuration.url else {
            return .unreachable("\(NotifyConfiguration.Key.url) is not set")
        }
        // The sending job's span, when traces are exported: the notification service's spans nest under it.
        let traceparent = Traces.traceparent().map { [("traceparent", $0)] } ?? []
        return await post(body, to: url, headers: [("Idempotency-Key", idempotencyKey)] + traceparent, keepBody: Self.bodySnippetBytes,
                          timeout: configuration.timeout, logger: logger)
    }

    /// POSTs `body` (JSON) to `url` with `headers`, unless the breaker of the URL's destination
    /// is open; keeps up to `keepBody` bytes of the answer. Never throws.
    package func post(_ body: [UInt8], to url: URL, headers: [(String, String)], keepBody: Int, timeout: Duration,
                      logger: Logger) async -> Delivery {
        guard let client else { return .unreachable("this consumer has no HTTP client") }
        let name = NotifyConfiguration.destination(of: url)
        let destination = destination(name)
        let permit: CircuitBreaker.Permit
        switch destination.breaker.acquire() {
        case .rejected(let retryAfter):
            destination.deferred.increment()
            destination.showState()
            return .breakerOpen(destination: name, retryAfter: retryAfter)
        case .allowed(let granted):
            permit = granted
        }
        if permit.isTrial { logger.info("circuit breaker half-open: trial call", metadata: ["destination": "\(name)"]) }

        let delivery = await call(client, url: url, body: body, headers: headers, keepBody: keepBody, timeout: timeout, logger: logger)
        if let failed = delivery.isDestinationFailure {
            let before = destination.breaker.snapshot.state
            destination.breaker.record(permit, succeeded: !failed)
            let after = destination.breaker.snapshot.state
            if before != after {
                logger.warning("circuit breaker \(after == .open ? "opened" : "closed")", metadata: [
                    "destination": "\(name)", "state": "\(after.rawValue)",
                    "open_seconds": "\(configuration.breaker.openDuration.milliseconds / 1_000)",
                ])
            }
        } else {
            destination.breaker.release(permit)
        }
        destination.calls[delivery.metricOutcome]?.increment()
        destination.showState()
        return delivery
    }

    private func call(_ client: HTTPClient, url: URL, body: [UInt8], headers: [(String, String)], keepBody: Int, timeout: Duration,
                      logger: Logger) async -> Delivery {
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "warren-consumer")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = .bytes(ByteBuffer(bytes: body))
        let deadline = NIODeadline.now() + .nanoseconds(timeout.nanoseconds)
        do {
            let response = try await client.execute(request, deadline: deadline, logger: logger)
            var snippet: [UInt8] = []
            for try await chunk in response.body where snippet.count < keepBody {
                snippet += chunk.readableBytesView.prefix(keepBody - snippet.count)
            }
            return .answered(status: Int(response.status.code), retryAfter: response.headers.first(name: "Retry-After"),
                             body: String(decoding: snippet, as: UTF8.self))
        } catch {
            if Task.isCancelled { return .cancelled }
            if let error = error as? HTTPClientError,
               [.deadlineExceeded, .readTimeout, .writeTimeout, .connectTimeout].contains(error) {
                return .timedOut("no answer within \(timeout) (\(error))")
            }
            return .unreachable("\(error)")
        }
    }

    /// `/status`: each destination's breaker (`"notify":{...}` in the consumer's status).
    package func statusJSON() -> String {
        let all = destinations.withLock { $0 }
        let entries = all.keys.sorted().map { name -> String in
            let destination = all[name]!
            destination.showState()
            let snapshot = destination.breaker.snapshot
            var fields = [
                #""state":"\#(snapshot.state.rawValue)""#,
                #""recent_calls":\#(snapshot.recentCalls)"#,
                #""recent_failures":\#(snapshot.recentFailures)"#,
                #""times_opened":\#(snapshot.timesOpened)"#,
            ]
            if let wait = snapshot.halfOpensIn { fields.append(#""half_open_in_ms":\#(wait.milliseconds)"#) }
            return JSONText.quoted(name) + ":{" + fields.joined(separator: ",") + "}"
        }
        return #"{"configured":\#(configuration.url != nil),"timeout_ms":\#(configuration.timeout.milliseconds),"#
            + #""breaker_open_ms":\#(configuration.breaker.openDuration.milliseconds),"destinations":{\#(entries.joined(separator: ","))}}"#
    }

    /// Closes the HTTP client's connections. Call once, after the last ``post(_:idempotencyKey:logger:)``.
    package func shutdown() async {
        try? await client?.shutdown()
    }
}
