import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import WarrenAMQP
import WarrenAuth
import WarrenJobs
import WarrenObservability
import WarrenPostgres
import WarrenResilience
import WarrenStore
import WarrenSupport

/// The HTTP API (Hummingbird 2): what its routes need, and its router. Each resource is one
/// `RouteCollection` (`jobRoutes`, `batchRoutes`, `scheduleRoutes`, `contactRoutes`,
/// `deadLetterRoutes`, in their own files; the web console's `consoleRoutes` in `Console/`); the middleware does what every route shares
/// (``RequestLogMiddleware``, ``AuthenticationMiddleware``, ``RateLimitMiddleware``). Errors
/// are JSON: `{"error": {"code", "message", "field"?}}`.
package struct HTTPAPI: Sendable {
    let publisher: JobPublisher
    let pool: PostgresPool
    let tokens: TokenCache
    let recorder: APIJobRecorder
    let jobs: APIJobStore
    let batches: APIBatchStore
    let contacts: ContactStore
    let schedules: ScheduleStore
    let rateLimiter: SharedRateLimiter
    /// Which tiers' new work is shed (503 `shed`); nil sheds nothing.
    let pressure: TierPressure?
    let knownTypes: Set<String>
    let maxBodyBytes: Int
    /// A running job quiet this long reads `stalled` (`WARREN_STALL_SECONDS`).
    var stallSeconds = 120
    /// A request answered slower than this is logged as a warning and counted in
    /// `warren_http_slow_requests_total{route}` (`WARREN_SLOW_REQUEST_MS`, 1000; nil: never).
    var slowRequest: Duration? = .seconds(1)
    /// The web console at `/console` (nil: not served).
    var console: ConsoleSettings?
    let logger: Logger

    package func router() -> Router<APIRequestContext> {
        let router = Router(context: APIRequestContext.self)
        AdminServer.addHealthRoutes(to: router) { await ready() }
        // Outermost, so that the request's log line carries its trace id; only when traces are
        // exported (``Traces``): a fleet without a collector pays nothing for it.
        if Traces.enabled { router.add(middleware: TracingMiddleware()) }
        router.add(middleware: RequestLogMiddleware(logger: logger, slowRequest: slowRequest))
        router.addRoutes(jobRoutes, atPath: "/v1/jobs")
        router.addRoutes(batchRoutes, atPath: "/v1/batches")
        router.addRoutes(contactRoutes, atPath: "/v1/contacts")
        router.addRoutes(scheduleRoutes, atPath: "/v1/schedules")
        router.addRoutes(deadLetterRoutes, atPath: "/v1/dead")
        if let console { router.addRoutes(consoleRoutes(console), atPath: "/console") }
        // Last, so that it wraps only the not-found answer (see UnmatchedRouteMiddleware).
        router.add(middleware: UnmatchedRouteMiddleware(routes: router.routes))
        return router
    }

    /// The routes of a resource behind authentication with `scope`, and the token's rate limit
    /// when `limited` (reads of one job or batch are not: clients poll them).
    func guarded(_ routes: RouteCollection<APIRequestContext>, _ scope: Scope, limited: Bool = true) -> RouterGroup<APIRequestContext> {
        let group = routes.group().add(middleware: AuthenticationMiddleware(tokens: tokens, scope: scope))
        return limited ? group.add(middleware: RateLimitMiddleware(limiter: rateLimiter)) : group
    }

    /// What `/readyz` reports down: the broker (connection lost) or the database (no answer).
    private func ready() async -> [String] { await Readiness.unreachable(broker: publisher.connection, database: pool) }

    // MARK: - What several routes share

    func jsonBody(_ request: Request) async throws(APIError) -> [UInt8] {
        let contentType = request.headers[.contentType]?.lowercased() ?? ""
        guard contentType == "application/json" || contentType.hasPrefix("application/json;") else {
            throw APIError(.unsupportedMediaType, "unsupported_media_type", "Content-Type must be application/json")
        }
        do {
            let buffer = try await request.body.collect(upTo: maxBodyBytes)
            return Array(buffer.readableBytesView)
        } catch {
            throw APIError(.contentTooLarge, "body_too_large", "the body is larger than \(maxBodyBytes) bytes")
        }
    }

    /// Runs a database call; a failure is a 503 `database_unavailable` the client can retry,
    /// unless Postgres refused the values themselves (see ``storeError(_:message:)``).
    func database<T>(message: String = "the database is unavailable right now; retry later",
                     _ body: () async throws -> T) async throws(APIError) -> T {
        do {
            return try await body()
        } catch {
            throw storeError(error, message: message)
        }
    }

    /// What a failed database call answers. Values Postgres can never store (a parameter
    /// holding NUL, `PostgresError.invalidParameter`, or any other data error) are the
    /// request's fault and fail the same way on every retry: 422, not a 503 inviting one.
    /// Intake refuses such values first; this is the net under it.
    func storeError(_ error: any Error, message: String) -> APIError {
        if let error = error as? PostgresError, error.isDataError {
            logger.info("database refused the request's values", metadata: ["error": "\(error)"])
            return APIError(.unprocessableContent, "invalid_value", "a value in the request cannot be stored: \(error.message)")
        }
        logger.warning("database call failed", metadata: ["error": "\(error)"])
        return APIError(.serviceUnavailable, "database_unavailable", message, retryAfter: 2)
    }

    /// How long a shed client is asked to wait.
    static let shedRetryAfter = 5

    /// Refuses new work of `tier` with 503 `shed` while the tier pressure sheds it (see
    /// ``ShedPolicy``); counted in `warren_http_shed_total{tier}`. Jobs for later are not
    /// shed: they add nothing to a queue now.
    func admit(_ tier: Tier) throws(APIError) {
        guard let reason = pressure?.shedReason(tier) else { return }
        Counter(label: "warren_http_shed_total", dimensions: [("tier", tier.rawValue), ("reason", reason.rawValue)]).increment()
        let why = switch reason {
        case .backlog: "the queues are backed up"
        case .latency: "a higher tier is behind its start-latency target"
        }
        throw APIError(.serviceUnavailable, "shed", "\(why) and new \(tier.rawValue) work is being shed; retry after \(Self.shedRetryAfter) s",
                       retryAfter: Self.shedRetryAfter)
    }

    func publishError(_ error: any Error, job: JobEnvelope, requestID: String) -> APIError {
        if let error = error as? AMQPError, error.code == .nacked {
            return APIError(.serviceUnavailable, "queue_full", "the \(job.tier.rawValue) queue is full; retry later", retryAfter: 5)
        }
        logger.warning("publish failed", metadata: ["error": "\(error)", "request_id": "\(requestID)"])
        return APIError(.serviceUnavailable, "broker_unavailable", "the job could not be confirmed by the broker; retry later",
                        retryAfter: 2)
    }

    /// Parses one job object (`{"type", "payload", ...}`) into a request in the token's tier.
    /// `field` prefixes the names in errors (`jobs[3].` in a batch).
    func parseJob(_ body: [UInt8], token: APIToken, allowed: Set<String>, field prefix: String = "") throws(APIError) -> JobRequest {
        let members: [JSONScanner.Member]
        do {
            members = try JSONScanner.objectMembers(body)
        } catch {
            if prefix.isEmpty { throw APIError(.badRequest, "invalid_json", "the body is not a JSON object: \(error)") }
            throw APIError(.unprocessableContent, "invalid_field", "'\(prefix.dropLast())' must be a JSON object",
                           field: String(prefix.dropLast()))
        }
        if let unknown = members.first(where: { !allowed.contains($0.key) }) {
            throw APIError(.unprocessableContent, "unknown_field", "unknown field '\(prefix)\(unknown.key)'", field: prefix + unknown.key)
        }
        func member(_ key: String) -> JSONScanner.Member? { members.first { $0.key == key && $0.kind != .null } }
        func string(_ key: String) throws(APIError) -> String? {
            guard let member = member(key) else { return nil }
            guard member.kind == .string, let value = try? JSONScanner.string(body, at: member.value) else {
                throw APIError(.unprocessableContent, "invalid_field", "'\(prefix)\(key)' must be a string", field: prefix + key)
            }
            try RequestFields.refuseNUL(value, prefix + key)
            return value
        }
        guard let type = try string("type") else {
            throw APIError(.unprocessableContent, "missing_field", "missing field '\(prefix)type'", field: prefix + "type")
        }
        do {
            try JobEnvelope.validateType(type)
        } catch {
            throw APIError(.unprocessableContent, "invalid_field", error.message, field: prefix + "type")
        }
        guard knownTypes.contains(type) else {
            throw APIError(.unprocessableContent, "unknown_type", "unknown job type '\(type)' (known: \(knownTypes.sorted().joined(separator: ", ")))",
                           field: prefix + "type")
        }
        let payload = member("payload").map { Array(body[$0.value]) } ?? Array("{}".utf8)
        let idempotencyKey = try string("idempotency_key")
        let concurrencyKey = try string("concurrency_key")
        var concurrencyLimit: Int?
        if let limit = member("concurrency_limit") {
            guard limit.kind == .number, let value = JobRequest.integer(body[limit.value]) else {
                throw APIError(.unprocessableContent, "invalid_field",
                               "'\(prefix)concurrency_limit' must be an integer 1...\(JobEnvelope.maxConcurrencyLimit)", field: prefix + "concurrency_limit")
            }
            concurrencyLimit = value
        }
        do throws(JobError) {
            return try JobRequest(type: type, tier: token.tier, payload: payload, idempotencyKey: idempotencyKey, tenant: token.tenant,
                                  concurrencyKey: concurrencyKey, concurrencyLimit: concurrencyLimit)
        } catch {
            throw APIError(.unprocessableContent, "invalid_field", error.message, field: error.field.map { prefix + $0 })
        }
    }
}

extension HTTPAPI {
    /// The API over one pool: every store is made from it.
    package init(publisher: JobPublisher, pool: PostgresPool, tokenCacheTTL: Duration, rateLimiter: SharedRateLimiter, pressure: TierPressure? = nil,
                 knownTypes: Set<String>, maxBodyBytes: Int, stallSeconds: Int = 120, slowRequest: Duration? = .seconds(1),
                 console: ConsoleSettings? = nil, logger: Logger) {
        self.init(publisher: publisher, pool: pool, tokens: TokenCache(store: APITokenStore(pool: pool), ttl: tokenCacheTTL),
                  recorder: APIJobRecorder(pool: pool), jobs: APIJobStore(pool: pool), batches: APIBatchStore(pool: pool),
                  contacts: ContactStore(pool: pool), schedules: ScheduleStore(pool: pool), rateLimiter: rateLimiter,
                  pressure: pressure, knownTypes: knownTypes, maxBodyBytes: maxBodyBytes, stallSeconds: stallSeconds, slowRequest: slowRequest,
                  console: console, logger: logger)
    }
}
