import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import Synchronization
import WarrenAMQP
import WarrenAuth
import WarrenJobs
import WarrenObservability
import WarrenPostgres
import WarrenResilience
import WarrenStore
import WarrenSupport

/// The HTTP API's routes (Hummingbird 2). Errors are JSON: `{"error": {"code", "message", "field"?}}`.
package struct JobsAPI: Sendable {
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
    /// Most jobs in one `POST /v1/batches`.
    static let maxBatchJobs = 1_000
    let logger: Logger

    static let requestID = HTTPField.Name("X-Request-Id")!
    static let rateLimitLimit = HTTPField.Name("RateLimit-Limit")!
    static let rateLimitRemaining = HTTPField.Name("RateLimit-Remaining")!
    static let rateLimitReset = HTTPField.Name("RateLimit-Reset")!

    package func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        AdminServer.addHealthRoutes(to: router) { await ready() }
        router.get("v1/jobs/:id") { request, context in
            await logged(request, route: "/v1/jobs/{id}") { (_: String) async throws(APIError) -> (Response, String?) in
                try await jobStatus(request, id: context.parameters.get("id") ?? "")
            }
        }
        router.delete("v1/jobs/:id") { request, context in
            await logged(request, route: "/v1/jobs/{id}") { (_: String) async throws(APIError) -> (Response, String?) in
                try await cancelJob(request, id: context.parameters.get("id") ?? "")
            }
        }
        router.post("v1/batches") { request, _ in
            await logged(request, route: "/v1/batches") { (id: String) async throws(APIError) -> (Response, String?) in
                try await rateLimited(request, scope: .jobsWrite) { (token) async throws(APIError) in
                    try await createBatch(request, token: token, requestID: id)
                }
            }
        }
        router.get("v1/batches/:id") { request, context in
            await logged(request, route: "/v1/batches/{id}") { (_: String) async throws(APIError) -> (Response, String?) in
                try await batchStatus(request, id: context.parameters.get("id") ?? "")
            }
        }
        addContactRoutes(to: router)
        addScheduleRoutes(to: router)
        addDeadLetterRoutes(to: router)
        router.post("v1/jobs") { request, _ in
            await logged(request, route: "/v1/jobs") { (id: String) async throws(APIError) -> (Response, String?) in
                try await createJob(request, requestID: id)
            }
        }
        // Last, so that it wraps only the not-found answer (see UnmatchedRouteMiddleware).
        router.add(middleware: UnmatchedRouteMiddleware(routes: router.routes))
        return router
    }

    // MARK: - Routes

    /// What `/readyz` reports down: the broker (connection lost) or the database (no answer).
    private func ready() async -> [String] { await Readiness.unreachable(broker: publisher.connection, database: pool) }

    private func createJob(_ request: Request, requestID: String) async throws(APIError) -> (Response, String?) {
        try await rateLimited(request, scope: .jobsWrite) { (token) async throws(APIError) in
            try await acceptJob(request, token: token, requestID: requestID)
        }
    }

    /// Authenticates, takes one request from the token's bucket, and runs `body` (or answers
    /// 429); the response carries the RateLimit-* headers either way.
    func rateLimited(_ request: Request, scope: Scope,
                     _ body: (APIToken) async throws(APIError) -> (Response, String?)) async throws(APIError) -> (Response, String?) {
        let token = try await authenticate(request, scope: scope)
        let limit = await rateLimiter.take(key: token.id.lowercasedString, tier: token.tier)
        var result: (Response, String?)
        do {
            result = try await limited(limit, token) { () async throws(APIError) in try await body(token) }
        } catch {
            result = (error.response, token.tenant)
        }
        result.0.headers[Self.rateLimitLimit] = String(Int(rateLimiter.limits[token.tier]?.burst ?? 0))
        result.0.headers[Self.rateLimitRemaining] = String(limit.remaining)
        result.0.headers[Self.rateLimitReset] = String(limit.reset)
        return result
    }

    /// Runs `body` when the token's bucket allowed the request; otherwise a 429 carrying the
    /// RateLimit-* headers and Retry-After.
    func limited(_ decision: TokenBucket.Decision, _ token: APIToken,
                         _ body: () async throws(APIError) -> (Response, String?)) async throws(APIError) -> (Response, String?) {
        guard decision.allowed else {
            let error = APIError(.tooManyRequests, "rate_limited",
                                 "rate limit of the \(token.tier.rawValue) tier reached; retry after \(decision.retryAfter) s",
                                 retryAfter: decision.retryAfter)
            return (error.response, token.tenant)
        }
        return try await body()
    }

    private func acceptJob(_ request: Request, token: APIToken, requestID: String) async throws(APIError) -> (Response, String?) {
        let body = try await jsonBody(request)
        let request = try parseJob(body, token: token, allowed: ["type", "payload", "idempotency_key", "run_at", "delay_seconds",
                                                                  "concurrency_key", "concurrency_limit", "unique"])
        let unique = try parseUnique(body, concurrencyKey: request.concurrencyKey)
        var job = request.envelope(correlationID: requestID)
        if let runAt = try parseRunAt(body, now: job.enqueuedAt), runAt > job.enqueuedAt {
            job.enqueuedAt = runAt  // it enters its queue then (and job_runs' partition of that day)
            return try await acceptDelayed(job, token: token, requestID: requestID, unique: unique)
        }
        try admit(job.tier)
        // A unique job goes the keyed way: its key is taken in the commit that holds its outbox entry.
        guard job.idempotencyKey != nil || unique else { return try await acceptUnkeyed(job, token: token, requestID: requestID) }
        let claim = try await database(message: "cannot record the job right now; retry later") {
            try await jobs.claim(job, tenant: token.tenant, requestID: requestID, unique: unique)
        }
        if let answer = try await earlier(claim, job, token: token) { return answer }
        do {
            try await publisher.publish(job)
        } catch {
            if let error = error as? AMQPError, error.definitelyNotPublished {
                // Not on the broker: drop the claim so the client's retry creates the job.
                // (If that fails too, the entry stays and the leader publishes it: no lie.)
                try? await jobs.releaseKeyed(job.id)
            } else {
                // Maybe routed: keep the entry; the leader publishes it again under this id
                // once its lease ends, and a retry with the key gets this job.
                logger.warning("keyed job's publish unconfirmed; its outbox entry stays for the scheduler to republish",
                               metadata: ["job_id": "\(job.id.lowercasedString)", "error": "\(error)"])
            }
            throw publishError(error, job: job, requestID: requestID)
        }
        // The job is accepted; if recording that fails, the leader publishes it again once the
        // lease ends (same id: consumers run it once).
        try? await jobs.markKeyedPublished(job.id)
        return (accepted(job), token.tenant)
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

    /// A job to run later: held in Postgres (`delayed_jobs`, with its `api_jobs` row in the
    /// same commit) until the scheduler's leader publishes it at `run_at`.
    private func acceptDelayed(_ job: JobEnvelope, token: APIToken, requestID: String, unique: Bool) async throws(APIError) -> (Response, String?) {
        let claim = try await database(message: "cannot record the job right now; retry later") {
            try await jobs.hold(job, tenant: token.tenant, requestID: requestID, unique: unique)
        }
        if let answer = try await earlier(claim, job, token: token) { return answer }
        return (json(.accepted, #"{"id":"\#(job.id.lowercasedString)","status":"scheduled","type":\#(JSONText.quoted(job.type)),"tier":"\#(job.tier.rawValue)","run_at":"\#(job.enqueuedAt.iso8601)"}"#),
                token.tenant)
    }

    /// The answer when `claim` found an earlier job (its idempotency key's: 200 or 409
    /// `idempotency_in_progress`; its unique key's: 409 `key_busy`); nil when this one is recorded.
    private func earlier(_ claim: APIJobStore.Claim, _ job: JobEnvelope, token: APIToken) async throws(APIError) -> (Response, String?)? {
        switch claim {
        case .claimed: nil
        case .existing(let id, let pending): try await duplicate(of: id, pending: pending, token: token)
        case .keyBusy(let holder): throw keyBusy(job, holder: holder)
        }
    }

    /// `"unique": "running"` (or absent / null): refuse the job while another job of its
    /// `concurrency_key` is unfinished. Only with a `concurrency_key`.
    func parseUnique(_ body: [UInt8], concurrencyKey: String?) throws(APIError) -> Bool {
        guard let members = try? JSONScanner.objectMembers(body),
              let member = members.first(where: { $0.key == "unique" && $0.kind != .null }) else { return false }
        guard member.kind == .string, (try? JSONScanner.string(body, at: member.value)) == "running" else {
            throw APIError(.unprocessableContent, "invalid_field", #"'unique' must be "running" (or absent)"#, field: "unique")
        }
        guard concurrencyKey != nil else {
            throw APIError(.unprocessableContent, "invalid_field", "unique needs a concurrency_key", field: "unique")
        }
        return true
    }

    /// 409 `key_busy`: a unique job's key is held by an unfinished job, named when it is the
    /// caller's own (`job_id`).
    func keyBusy(_ job: JobEnvelope, holder: UUID?) -> APIError {
        let key = job.concurrencyKey ?? ""
        return APIError(.conflict, "key_busy",
                        "a job of concurrency key '\(key)' is not finished (scheduled, queued, running or retrying); nothing was accepted",
                        field: "concurrency_key", extra: holder.map { #""job_id":"\#($0.lowercasedString)""# })
    }

    /// The answer to a request whose idempotency key names an earlier job: 200 with that job
    /// (`"duplicate":true`), or 409 while the first request is still publishing it.
    private func duplicate(of id: UUID, pending: Bool, token: APIToken) async throws(APIError) -> (Response, String?) {
        if pending {
            throw APIError(.conflict, "idempotency_in_progress",
                           "a request with this idempotency key is still being published; retry shortly", field: "idempotency_key",
                           retryAfter: 1)
        }
        let status = (try? await jobs.status(of: id, tenant: token.tenant, stallSeconds: stallSeconds))?["status"] ?? nil
        return (json(.ok, #"{"id":"\#(id.lowercasedString)","status":\#(JSONText.quoted(status ?? "queued")),"duplicate":true}"#),
                token.tenant)
    }

    /// `run_at` (an ISO 8601 instant with its offset) or `delay_seconds` (a number, at most a
    /// year): when a job should run, or nil for now. A time already past means now.
    func parseRunAt(_ body: [UInt8], now: Timestamp) throws(APIError) -> Timestamp? {
        guard let members = try? JSONScanner.objectMembers(body) else { return nil }
        let runAt = members.first { $0.key == "run_at" && $0.kind != .null }
        let delay = members.first { $0.key == "delay_seconds" && $0.kind != .null }
        let limit = Outbox.maxDelaySeconds
        switch (runAt, delay) {
        case (nil, nil):
            return nil
        case (.some, .some):
            throw APIError(.unprocessableContent, "invalid_field", "give run_at or delay_seconds, not both", field: "delay_seconds")
        case (.some(let member), nil):
            guard member.kind == .string, let text = try? JSONScanner.string(body, at: member.value),
                  let instant = Timestamp(iso8601: text) else {
                throw APIError(.unprocessableContent, "invalid_field",
                               "'run_at' must be an ISO 8601 instant with its offset (Z, or ±HH:MM from -23:59 to +23:59), like 2026-12-24T09:00:00+01:00",
                               field: "run_at")
            }
            guard instant.microseconds - now.microseconds <= limit * 1_000_000 else {
                throw APIError(.unprocessableContent, "invalid_field", "'run_at' is more than \(limit / 86_400) days ahead", field: "run_at")
            }
            return instant
        case (nil, .some(let member)):
            guard member.kind == .number, let seconds = Double(String(decoding: body[member.value], as: UTF8.self)),
                  seconds >= 0, seconds <= Double(limit) else {
                throw APIError(.unprocessableContent, "invalid_field",
                               "'delay_seconds' must be a number from 0 to \(limit) (\(limit / 86_400) days)", field: "delay_seconds")
            }
            return Timestamp(microseconds: now.microseconds + Int64(seconds * 1_000_000))
        }
    }

    /// A job without an idempotency key: its `api_jobs` row (group commit, shared with
    /// concurrent requests) and its publish run side by side, so the answer waits for the
    /// slower of the two rather than both in turn. A refused publish removes the row again; a
    /// confirmed job whose row could not be written is still accepted (the broker has it),
    /// only its status cannot be looked up.
    private func acceptUnkeyed(_ job: JobEnvelope, token: APIToken, requestID: String) async throws(APIError) -> (Response, String?) {
        async let recorded: Result<Void, any Error> = { () async -> Result<Void, any Error> in
            do {
                try await recorder.record(job, tenant: token.tenant, requestID: requestID)
                return .success(())
            } catch {
                return .failure(error)
            }
        }()
        let published: Result<Void, any Error>
        do {
            try await publisher.publishCoalesced(job)
            published = .success(())
        } catch {
            published = .failure(error)
        }
        let record = await recorded
        switch (published, record) {
        case (.success, .success):
            return (accepted(job), token.tenant)
        case (.success, .failure(let error)):
            logger.error("job accepted by the broker but its status row was not written; GET /v1/jobs/{id} will not find it",
                         metadata: ["error": "\(error)", "job_id": "\(job.id.lowercasedString)", "request_id": "\(requestID)"])
            return (accepted(job), token.tenant)
        case (.failure(let error), let record):
            if case .success = record { try? await jobs.forget(job.id) }
            throw publishError(error, job: job, requestID: requestID)
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

    private func publishError(_ error: any Error, job: JobEnvelope, requestID: String) -> APIError {
        if let error = error as? AMQPError, error.code == .nacked {
            return APIError(.serviceUnavailable, "queue_full", "the \(job.tier.rawValue) queue is full; retry later", retryAfter: 5)
        }
        logger.warning("publish failed", metadata: ["error": "\(error)", "request_id": "\(requestID)"])
        return APIError(.serviceUnavailable, "broker_unavailable", "the job could not be confirmed by the broker; retry later",
                        retryAfter: 2)
    }

    private func accepted(_ job: JobEnvelope) -> Response {
        json(.accepted, #"{"id":"\#(job.id.lowercasedString)","status":"queued","type":\#(JSONText.quoted(job.type)),"tier":"\#(job.tier.rawValue)","enqueued_at":"\#(job.enqueuedAt.iso8601)"}"#)
    }

    private func jobStatus(_ request: Request, id: String) async throws(APIError) -> (Response, String?) {
        let token = try await authenticate(request, scope: .jobsRead)
        guard let uuid = UUID(uuidString: id) else { throw APIError(.notFound, "not_found", "no such job") }
        let status: [String: String?]?
        do {
            status = try await jobs.status(of: uuid, tenant: token.tenant, stallSeconds: stallSeconds)
        } catch {
            throw APIError(.serviceUnavailable, "database_unavailable", "cannot read the job right now", retryAfter: 2)
        }
        guard let status else { throw APIError(.notFound, "not_found", "no such job") }
        var fields: [String] = []
        for key in ["id", "type", "tier", "status", "attempts", "result", "error", "idempotency_key", "enqueued_at", "run_at", "started_at", "finished_at"] {
            guard let value = status[key] ?? nil else {
                fields.append(#""\#(key)":null"#)
                continue
            }
            switch key {
            case "attempts", "result": fields.append(#""\#(key)":\#(value)"#)  // a number; JSON from jsonb
            default: fields.append(#""\#(key)":\#(JSONText.quoted(value))"#)
            }
        }
        fields.append(#""progress":\#(Self.progressJSON(status))"#)
        fields.append(#""stalled":\#((status["stalled"] ?? nil) == "t")"#)
        return (json(.ok, "{" + fields.joined(separator: ",") + "}"), token.tenant)
    }

    /// `{"done", "total", "percent", "message", "updated_at"}` from what the job last reported
    /// (``JobContext/progress(done:total:message:)``), or `null` when it reported none.
    static func progressJSON(_ status: [String: String?]) -> String {
        guard let doneText = status["progress_done"] ?? nil, let done = Int64(doneText) else { return "null" }
        let progress = JobProgress(done: done, total: (status["progress_total"] ?? nil).flatMap { Int64($0) },
                                   message: status["progress_message"] ?? nil)
        return #"{"done":\#(progress.done),"total":\#(progress.total.map(String.init) ?? "null"),"percent":\#(progress.percent.map { "\($0)" } ?? "null"),"message":\#(progress.message.map(JSONText.quoted) ?? "null"),"updated_at":\#((status["progress_updated_at"] ?? nil).map(JSONText.quoted) ?? "null")}"#
    }

    /// `DELETE /v1/jobs/{id}`: a job waiting (queued, or between retries) never runs again
    /// (200, `cancelled`, `"cancellation":"not_running"`); a
    /// running one has its handler cancelled (202, `running` until it stops); a finished one
    /// is a 409.
    private func cancelJob(_ request: Request, id: String) async throws(APIError) -> (Response, String?) {
        let token = try await authenticate(request, scope: .jobsWrite)
        guard let uuid = UUID(uuidString: id) else { throw APIError(.notFound, "not_found", "no such job") }
        let outcome: APIJobStore.CancelRequest
        do {
            outcome = try await jobs.requestCancellation(of: uuid, tenant: token.tenant)
        } catch {
            throw APIError(.serviceUnavailable, "database_unavailable", "cannot record the cancellation right now", retryAfter: 2)
        }
        switch outcome {
        case .notFound:
            throw APIError(.notFound, "not_found", "no such job")
        case .finished(let status):
            throw APIError(.conflict, "job_finished", "the job already finished (\(status)); there is nothing to cancel")
        case .requested(let status, let tier):
            // Consumers also poll the request from Postgres, so a failed publish here only
            // delays the cancellation by a poll interval.
            do {
                try await publisher.connection.publish(ControlMessage.cancel(job: uuid, tier: tier).outgoing)
            } catch {
                logger.warning("cancel signal not published; consumers pick the request up by polling",
                               metadata: ["error": "\(error)", "job_id": "\(uuid.lowercasedString)"])
            }
            let running = status == JobStatus.running.rawValue
            let body = #"{"id":"\#(uuid.lowercasedString)","status":"\#(running ? "running" : "cancelled")","cancellation":"\#(running ? "signalled_running" : "not_running")"}"#
            return (json(running ? .accepted : .ok, body), token.tenant)
        }
    }

    // MARK: - Pieces

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

    func authenticate(_ request: Request, scope: Scope) async throws(APIError) -> APIToken {
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

    /// Runs a route with a request id (the caller's `X-Request-Id`, or a new one), turns
    /// `APIError`s into JSON error responses, and logs one line per request.
    func logged(_ request: Request, route: String,
                        _ handler: (String) async throws(APIError) -> (Response, String?)) async -> Response {
        let started = ContinuousClock.now
        let requestID = request.headers[Self.requestID].flatMap { $0.isEmpty || $0.count > 200 ? nil : $0 } ?? JobID.make().lowercasedString
        var response: Response
        var tenant: String?
        do {
            (response, tenant) = try await handler(requestID)
        } catch {
            response = error.response
        }
        response.headers[Self.requestID] = requestID
        let elapsed = ContinuousClock.now - started
        HTTPMetrics.shared.record(route: route, status: response.status.code, nanoseconds: elapsed.nanoseconds)
        let slow = slowRequest.map { elapsed > $0 } ?? false
        if slow { HTTPMetrics.shared.countSlow(route: route) }
        logger.log(level: slow ? .warning : .info, slow ? "slow request" : "request", metadata: [
            "request_id": "\(requestID)", "method": "\(request.method.rawValue)", "route": "\(route)",
            "status": "\(response.status.code)", "tenant": "\(tenant ?? "-")",
            "duration_ms": "\(String(format: "%.2f", Double(elapsed.nanoseconds) / 1e6))",
        ])
        return response
    }
}

extension JobsAPI {
    /// The API over one pool: every store is made from it.
    package init(publisher: JobPublisher, pool: PostgresPool, tokenCacheTTL: Duration, rateLimiter: SharedRateLimiter, pressure: TierPressure? = nil,
         knownTypes: Set<String>, maxBodyBytes: Int, stallSeconds: Int = 120, slowRequest: Duration? = .seconds(1), logger: Logger) {
        self.init(publisher: publisher, pool: pool, tokens: TokenCache(store: APITokenStore(pool: pool), ttl: tokenCacheTTL),
                  recorder: APIJobRecorder(pool: pool), jobs: APIJobStore(pool: pool), batches: APIBatchStore(pool: pool),
                  contacts: ContactStore(pool: pool), schedules: ScheduleStore(pool: pool), rateLimiter: rateLimiter,
                  pressure: pressure, knownTypes: knownTypes, maxBodyBytes: maxBodyBytes, stallSeconds: stallSeconds, slowRequest: slowRequest,
                  logger: logger)
    }
}

func json(_ status: HTTPResponse.Status, _ body: String) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
}

/// A request that cannot be served, as the JSON error body clients get.
struct APIError: Error {
    var status: HTTPResponse.Status
    var code: String
    var message: String
    var field: String?
    var retryAfter: Int?
    /// More top-level members of the body, as JSON text (`"errors":[...]` for a batch).
    var extra: String?

    init(_ status: HTTPResponse.Status, _ code: String, _ message: String, field: String? = nil, retryAfter: Int? = nil,
         extra: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retryAfter = retryAfter
        self.extra = extra
    }

    /// The body: `{"error":{"code","message","field"?}, ...extra}`.
    var json: String {
        var fields = [#""code":\#(JSONText.quoted(code))"#, #""message":\#(JSONText.quoted(message))"#]
        if let field { fields.append(#""field":\#(JSONText.quoted(field))"#) }
        return #"{"error":{\#(fields.joined(separator: ","))}\#(extra.map { "," + $0 } ?? "")}"#
    }

    var response: Response {
        var response = WarrenAPI.json(status, json)
        if status == .unauthorized { response.headers[.wwwAuthenticate] = #"Bearer realm="warren""# }
        if let retryAfter { response.headers[.retryAfter] = String(retryAfter) }
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
