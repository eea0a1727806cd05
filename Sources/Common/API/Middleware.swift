import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import Synchronization
import WarrenAuth
import WarrenJobs
import WarrenResilience
import WarrenSupport

/// Outermost on every route (and on the not-found answer): gives the request its id (the
/// caller's `X-Request-Id`, or a new one), turns a thrown ``APIError`` into its JSON response,
/// sets `X-Request-Id` on the answer, counts it in `warren_http_requests_total{route,status}`
/// and `warren_http_request_duration_seconds{route}`, and logs one line per request (a warning
/// past the slow-request threshold, counted in `warren_http_slow_requests_total{route}`).
struct RequestLogMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext

    static let requestID = HTTPField.Name("X-Request-Id")!

    let logger: Logger
    /// `WARREN_SLOW_REQUEST_MS` (1000); nil: never slow.
    let slowRequest: Duration?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let started = ContinuousClock.now
        var context = context
        let requestID = request.headers[Self.requestID].flatMap { $0.isEmpty || $0.count > 200 ? nil : $0 } ?? JobID.make().lowercasedString
        context.requestID = requestID
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as APIError {
            response = error.response
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        } catch {
            logger.error("request failed", metadata: ["request_id": "\(requestID)", "error": "\(error)"])
            response = APIError(.internalServerError, "internal", "the request failed on the server").response
        }
        response.headers[Self.requestID] = requestID
        let route = Self.route(context.endpointPath)
        let elapsed = ContinuousClock.now - started
        HTTPMetrics.shared.record(route: route, status: response.status.code, nanoseconds: elapsed.nanoseconds)
        let slow = slowRequest.map { elapsed > $0 } ?? false
        if slow { HTTPMetrics.shared.countSlow(route: route) }
        logger.log(level: slow ? .warning : .info, slow ? "slow request" : "request", metadata: [
            "request_id": "\(requestID)", "method": "\(request.method.rawValue)", "route": "\(route)",
            "status": "\(response.status.code)", "tenant": "\(context.trail.tenantName ?? "-")",
            "duration_ms": "\(String(format: "%.2f", Double(elapsed.nanoseconds) / 1e6))",
        ])
        return response
    }

    /// The route's pattern (`/v1/jobs/{id}`), or `unmatched` for a request no route took.
    static func route(_ endpoint: String?) -> String {
        guard let endpoint, endpoint.hasPrefix("/") else { return "unmatched" }
        return endpoint
    }
}

/// Checks the request's `Authorization: Bearer <token>` (401 when missing, malformed, unknown,
/// expired or revoked; 403 without `scope`) and puts the token in the context.
struct AuthenticationMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext

    let tokens: TokenCache
    let scope: Scope

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let token = try await authenticate(request)
        context.token = token
        context.trail.set(tenant: token.tenant)
        return try await next(request, context)
    }

    func authenticate(_ request: Request) async throws(APIError) -> APIToken {
        guard let header = request.headers[.authorization] else {
            throw APIError(.unauthorized, "unauthorized", "missing Authorization: Bearer <token>")
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer", !parts[1].isEmpty else {
            throw APIError(.unauthorized, "unauthorized", "malformed Authorization header; expected Bearer <token>")
        }
        let result: Result<APIToken, TokenRejection>
        do {
            result = try await tokens.check(String(parts[1]))  // TokenCache: valid tokens kept a few seconds
        } catch {
            throw APIError(.serviceUnavailable, "database_unavailable", "cannot check the token right now", retryAfter: 2)
        }
        switch result {
        case .failure(.unknown): throw APIError(.unauthorized, "unauthorized", "unknown token")
        case .failure(.expired): throw APIError(.unauthorized, "unauthorized", "token expired")
        case .failure(.revoked): throw APIError(.unauthorized, "unauthorized", "token revoked")
        case .success(let token):
            guard token.allows(scope) else {
                throw APIError(.forbidden, "forbidden", "this token lacks the '\(scope.rawValue)' scope")
            }
            return token
        }
    }
}

/// Inside authentication: takes one request from the token's bucket (fleet-wide, see
/// ``SharedRateLimiter``) and answers 429 with `Retry-After` when it is empty; every answer,
/// the route's errors included, carries `RateLimit-Limit`, `-Remaining` and `-Reset`.
struct RateLimitMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext

    static let limitHeader = HTTPField.Name("RateLimit-Limit")!
    static let remainingHeader = HTTPField.Name("RateLimit-Remaining")!
    static let resetHeader = HTTPField.Name("RateLimit-Reset")!

    let limiter: SharedRateLimiter

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let token = try context.authenticated()
        let decision = await limiter.take(key: token.id.lowercasedString, tier: token.tier)
        var response: Response
        if decision.allowed {
            do {
                response = try await next(request, context)
            } catch let error as APIError {
                response = error.response
            }
        } else {
            response = APIError(.tooManyRequests, "rate_limited",
                                "rate limit of the \(token.tier.rawValue) tier reached; retry after \(decision.retryAfter) s",
                                retryAfter: decision.retryAfter).response
        }
        response.headers[Self.limitHeader] = String(Int(limiter.limits[token.tier]?.burst ?? 0))
        response.headers[Self.remainingHeader] = String(decision.remaining)
        response.headers[Self.resetHeader] = String(decision.reset)
        return response
    }
}

/// The request metrics, created once per route and status (a swift-metrics lookup per request
/// costs a registry lock and label hashing).
final class HTTPMetrics: Sendable {
    static let shared = HTTPMetrics()

    private let handles = Mutex<(counters: [String: Counter], timers: [String: Metrics.Timer])>(([:], [:]))

    func record(route: String, status: Int, nanoseconds: Int64) {
        let (counter, timer) = handles.withLock { handles -> (Counter, Metrics.Timer) in
            let key = "\(route) \(status)"
            let counter = handles.counters[key] ?? Counter(label: "warren_http_requests_total",
                                                           dimensions: [("route", route), ("status", String(status))])
            handles.counters[key] = counter
            let timer = handles.timers[route] ?? Metrics.Timer(label: "warren_http_request_duration_seconds",
                                                               dimensions: [("route", route)], preferredDisplayUnit: .seconds)
            handles.timers[route] = timer
            return (counter, timer)
        }
        counter.increment()
        timer.recordNanoseconds(nanoseconds)
    }

    private let slow = Mutex<[String: Counter]>([:])

    func countSlow(route: String) {
        slow.withLock { counters in
            if let counter = counters[route] { return counter }
            let counter = Counter(label: "warren_http_slow_requests_total", dimensions: [("route", route)])
            counters[route] = counter
            return counter
        }.increment()
    }
}
