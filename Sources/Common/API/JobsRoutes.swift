import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import Synchronization
import Tracing
import WarrenAMQP
import WarrenAuth
import WarrenJobs
import WarrenObservability
import WarrenPostgres
import WarrenResilience
import WarrenStore
import WarrenSupport

/// `/v1/jobs`: submit a job (`jobs:write`, rate limited), read one (`jobs:read`), cancel one
/// or send one waiting between retries on at once (`jobs:write`).
extension HTTPAPI {
    static let traceparent = HTTPField.Name("traceparent")!

    var jobRoutes: RouteCollection<APIRequestContext> {
        let routes = RouteCollection(context: APIRequestContext.self)
        guarded(routes, .jobsWrite).post { request, context in
            try await acceptJob(request, token: context.authenticated(), requestID: context.requestID)
        }
        guarded(routes, .jobsRead, limited: false).get(":id") { _, context in
            try await jobStatus(id: context.parameters.get("id") ?? "", token: context.authenticated())
        }
        guarded(routes, .jobsWrite, limited: false).delete(":id") { _, context in
            try await cancelJob(id: context.parameters.get("id") ?? "", token: context.authenticated())
        }
        guarded(routes, .jobsWrite, limited: false).post(":id/retry") { _, context in
            let token = try context.authenticated()
            guard let uuid = UUID(uuidString: context.parameters.get("id") ?? "") else { throw APIError(.notFound, "not_found", "no such job") }
            return try json(.accepted, try await retryNow(uuid, tenant: token.tenant, by: "api \(token.prefix)"))
        }
        return routes
    }

    private func acceptJob(_ request: Request, token: APIToken, requestID: String) async throws(APIError) -> Response {
        let body = try await jsonBody(request)
        let parsed = try parseJob(body, token: token, allowed: ["type", "payload", "idempotency_key", "run_at", "delay_seconds",
                                                                 "concurrency_key", "concurrency_limit", "unique"])
        let unique = try parseUnique(body, concurrencyKey: parsed.concurrencyKey)
        var job = parsed.envelope(correlationID: requestID)
        // The job's first span (its publish and confirm, or its hold): its traceparent rides
        // with the message, so the consumer's spans continue this trace. Without traces the
        // caller's own well-formed traceparent rides instead (its handler may continue it).
        guard let span = Traces.start("publish \(job.type)", kind: .producer) else {
            job.traceparent = request.headers[Self.traceparent].flatMap(Traces.wellFormed)
            return try await accept(job, body: body, token: token, requestID: requestID, unique: unique)
        }
        defer { span.end() }
        span.attributes["warren.job_id"] = job.id.lowercasedString
        span.attributes["warren.tier"] = job.tier.rawValue
        job.traceparent = Traces.traceparent(span.context)
        do {
            return try await accept(job, body: body, token: token, requestID: requestID, unique: unique)
        } catch {
            span.setStatus(SpanStatus(code: .error, message: error.code))
            throw error
        }
    }

    private func accept(_ job: JobEnvelope, body: [UInt8], token: APIToken, requestID: String, unique: Bool) async throws(APIError) -> Response {
        var job = job
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
        return accepted(job)
    }

    /// A job to run later: held in Postgres (`delayed_jobs`, with its `api_jobs` row in the
    /// same commit) until the scheduler's leader publishes it at `run_at`.
    private func acceptDelayed(_ job: JobEnvelope, token: APIToken, requestID: String, unique: Bool) async throws(APIError) -> Response {
        let claim = try await database(message: "cannot record the job right now; retry later") {
            try await jobs.hold(job, tenant: token.tenant, requestID: requestID, unique: unique)
        }
        if let answer = try await earlier(claim, job, token: token) { return answer }
        return try json(.accepted, JobScheduled(id: job.id.lowercasedString, type: job.type, tier: job.tier.rawValue,
                                                runAt: job.enqueuedAt.iso8601))
    }

    /// The answer when `claim` found an earlier job (its idempotency key's: 200 or 409
    /// `idempotency_in_progress`; its unique key's: 409 `key_busy`); nil when this one is recorded.
    private func earlier(_ claim: APIJobStore.Claim, _ job: JobEnvelope, token: APIToken) async throws(APIError) -> Response? {
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
                        field: "concurrency_key", more: holder.map { KeyHolder(jobID: $0.lowercasedString) })
    }

    /// The answer to a request whose idempotency key names an earlier job: 200 with that job
    /// (`"duplicate":true`), or 409 while the first request is still publishing it.
    private func duplicate(of id: UUID, pending: Bool, token: APIToken) async throws(APIError) -> Response {
        if pending {
            throw APIError(.conflict, "idempotency_in_progress",
                           "a request with this idempotency key is still being published; retry shortly", field: "idempotency_key",
                           retryAfter: 1)
        }
        let status = (try? await jobs.status(of: id, tenant: token.tenant, stallSeconds: stallSeconds))?["status"] ?? nil
        return try json(.ok, JobDuplicate(id: id.lowercasedString, status: status ?? "queued"))
    }

    /// `run_at` (an ISO 8601 instant with its offset, any four-digit year) or `delay_seconds` (a
    /// number, at most ``Outbox/maxDelaySeconds``): when a job should run, or nil for now. A
    /// time already past means now.
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
    private func acceptUnkeyed(_ job: JobEnvelope, token: APIToken, requestID: String) async throws(APIError) -> Response {
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
            return accepted(job)
        case (.success, .failure(let error)):
            logger.error("job accepted by the broker but its status row was not written; GET /v1/jobs/{id} will not find it",
                         metadata: ["error": "\(error)", "job_id": "\(job.id.lowercasedString)", "request_id": "\(requestID)"])
            return accepted(job)
        case (.failure(let error), let record):
            if case .success = record { try? await jobs.forget(job.id) }
            throw publishError(error, job: job, requestID: requestID)
        }
    }

    /// The answer to an accepted job, written by hand: the one hot answer (`./infra/bench/run
    /// http` posts jobs).
    private func accepted(_ job: JobEnvelope) -> Response {
        json(.accepted, text: #"{"id":"\#(job.id.lowercasedString)","status":"queued","type":\#(JSONText.quoted(job.type)),"tier":"\#(job.tier.rawValue)","enqueued_at":"\#(job.enqueuedAt.iso8601)"}"#)
    }

    private func jobStatus(id: String, token: APIToken) async throws(APIError) -> Response {
        guard let uuid = UUID(uuidString: id) else { throw APIError(.notFound, "not_found", "no such job") }
        let status: [String: String?]?
        do {
            status = try await jobs.status(of: uuid, tenant: token.tenant, stallSeconds: stallSeconds)
        } catch {
            throw APIError(.serviceUnavailable, "database_unavailable", "cannot read the job right now", retryAfter: 2)
        }
        guard let status else { throw APIError(.notFound, "not_found", "no such job") }
        return try json(.ok, JobView(status))
    }

    /// `DELETE /v1/jobs/{id}`: a job waiting (queued, or between retries) never runs again
    /// (200, `cancelled`, `"cancellation":"not_running"`); a
    /// running one has its handler cancelled (202, `running` until it stops); a finished one
    /// is a 409.
    private func cancelJob(id: String, token: APIToken) async throws(APIError) -> Response {
        guard let uuid = UUID(uuidString: id) else { throw APIError(.notFound, "not_found", "no such job") }
        let cancelled = try await cancel(uuid, tenant: token.tenant)
        return try json(cancelled.status == "running" ? .accepted : .ok, cancelled)
    }

    /// Cancels `tenant`'s job (the API's DELETE, and the console's button): recorded in
    /// Postgres, then signalled to the consumers.
    func cancel(_ uuid: UUID, tenant: String) async throws(APIError) -> JobCancelled {
        let outcome: APIJobStore.CancelRequest
        do {
            outcome = try await jobs.requestCancellation(of: uuid, tenant: tenant)
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
            return JobCancelled(id: uuid.lowercasedString, status: running ? "running" : "cancelled",
                                cancellation: running ? "signalled_running" : "not_running")
        }
    }

    /// Sends a job waiting between retries on at once (the API's `POST /v1/jobs/{id}/retry` and
    /// the console's "Retry now"; see ``JobRunStore/retryNow(_:tenant:by:)``): entered in the
    /// outbox with its row moved past the waiting copy, then published with a confirm (the
    /// leader's dispatcher publishes it if this does not see the confirm). `tenant` nil: any.
    func retryNow(_ uuid: UUID, tenant: String?, by: String) async throws(APIError) -> JobRetried {
        let outcome = try await database(message: "cannot record the retry right now") {
            try await JobRunStore(pool: pool, logger: logger).retryNow(uuid, tenant: tenant, by: by)
        }
        switch outcome {
        case .notFound:
            throw APIError(.notFound, "not_found", "no such job")
        case .notWaiting(let status):
            let hint = status == JobStatus.dead.rawValue || status == JobStatus.failed.rawValue
                ? "; a dead job is replayed from its dead letter (POST /v1/dead/replay)" : ""
            throw APIError(.conflict, "not_waiting", "the job is \(status), not waiting between retries\(hint)")
        case .notKept:
            throw APIError(.conflict, "not_kept", "this job's message was not kept (it failed before Warren kept them); it runs at its retry time")
        case .entered(let job):
            let published = (try? await Outbox(pool: pool).publish([job], with: publisher).first?.get()) != nil
            logger.info("job sent on before its retry delay", metadata: ["job_id": "\(uuid.lowercasedString)", "by": "\(by)",
                                                                       "attempt": "\(job.attempt)", "published": "\(published)"])
            return JobRetried(id: uuid.lowercasedString, status: "retrying", attempt: job.attempt, published: published)
        }
    }
}

// MARK: - Answers

/// `POST /v1/jobs/{id}/retry`'s answer: the attempt sent on, and whether the broker already
/// confirmed it (else the outbox's dispatcher publishes it within its lease).
struct JobRetried: Encodable, Sendable {
    var id: String
    var status: String
    var attempt: Int
    var published: Bool
}

/// `202` for a job held until `run_at`.
struct JobScheduled: Encodable, Sendable {
    var id: String
    var status = "scheduled"
    var type: String
    var tier: String
    var runAt: String

    init(id: String, type: String, tier: String, runAt: String) {
        self.id = id
        self.type = type
        self.tier = tier
        self.runAt = runAt
    }

    enum CodingKeys: String, CodingKey { case id, status, type, tier, runAt = "run_at" }
}

/// `200` for a request whose idempotency key names an earlier job.
struct JobDuplicate: Encodable, Sendable {
    var id: String
    var status: String
    var duplicate = true
}

/// `409 key_busy`'s holder, when it is the caller's own job.
struct KeyHolder: Encodable, Sendable {
    var jobID: String

    enum CodingKeys: String, CodingKey { case jobID = "job_id" }
}

/// `DELETE /v1/jobs/{id}`'s answer.
struct JobCancelled: Encodable, Sendable {
    var id: String
    var status: String
    var cancellation: String
}

/// `GET /v1/jobs/{id}`: every member present, `null` when unknown.
struct JobView: Encodable, Sendable {
    var id: String
    var type: String
    var tier: String
    var status: String
    @Null var attempts: Int?
    @Null var result: JSONFragment?
    @Null var error: String?
    @Null var idempotencyKey: String?
    @Null var enqueuedAt: String?
    @Null var runAt: String?
    @Null var startedAt: String?
    @Null var finishedAt: String?
    @Null var progress: ProgressView?
    var stalled: Bool

    enum CodingKeys: String, CodingKey {
        case id, type, tier, status, attempts, result, error, progress, stalled
        case idempotencyKey = "idempotency_key", enqueuedAt = "enqueued_at", runAt = "run_at", startedAt = "started_at"
        case finishedAt = "finished_at"
    }

    /// From the store's row (``APIJobStore/status(of:tenant:stallSeconds:)``).
    init(_ row: [String: String?]) {
        func value(_ key: String) -> String? { row[key] ?? nil }
        id = value("id") ?? ""
        type = value("type") ?? ""
        tier = value("tier") ?? ""
        status = value("status") ?? ""
        attempts = value("attempts").flatMap { Int($0) }
        result = value("result").map(JSONFragment.init)
        error = value("error")
        idempotencyKey = value("idempotency_key")
        enqueuedAt = value("enqueued_at")
        runAt = value("run_at")
        startedAt = value("started_at")
        finishedAt = value("finished_at")
        progress = value("progress_done").flatMap { Int64($0) }.map { done in
            ProgressView(JobProgress(done: done, total: value("progress_total").flatMap { Int64($0) }, message: value("progress_message")),
                         updatedAt: value("progress_updated_at"))
        }
        stalled = value("stalled") == "t"
    }
}

/// What a job last reported (``JobContext/progress(done:total:message:)``):
/// `{"done", "total", "percent", "message", "updated_at"}`.
struct ProgressView: Encodable, Sendable {
    var done: Int64
    @Null var total: Int64?
    @Null var percent: Double?
    @Null var message: String?
    @Null var updatedAt: String?

    enum CodingKeys: String, CodingKey { case done, total, percent, message, updatedAt = "updated_at" }

    init(_ progress: JobProgress, updatedAt: String?) {
        done = progress.done
        total = progress.total
        percent = progress.percent
        message = progress.message
        self.updatedAt = updatedAt
    }
}
