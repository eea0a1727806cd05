import Foundation
import Hummingbird
import Logging
import Tracing
import WarrenObservability
import WarrenAMQP
import WarrenAuth
import WarrenJobs
import WarrenStore
import WarrenSupport

/// `/v1/batches`: submit up to ``maxBatchJobs`` jobs as one batch (`jobs:write`, rate
/// limited) and read its progress (`jobs:read`).
extension HTTPAPI {
    /// Most jobs in one `POST /v1/batches`.
    static let maxBatchJobs = 1_000

    var batchRoutes: RouteCollection<APIRequestContext> {
        let routes = RouteCollection(context: APIRequestContext.self)
        guarded(routes, .jobsWrite).post { request, context in
            try await createBatch(request, token: context.authenticated(), requestID: context.requestID)
        }
        guarded(routes, .jobsRead, limited: false).get(":id") { _, context in
            try await batchStatus(id: context.parameters.get("id") ?? "", token: context.authenticated())
        }
        return routes
    }

    /// Up to ``maxBatchJobs`` jobs, validated all before any is published: one bad item is a
    /// 422 listing every bad item, and nothing is accepted. Then each job is published and
    /// confirmed; the batch holds the jobs the broker confirmed. If the broker refused some
    /// (a full queue), the answer is a 503 listing which were accepted and which were not, so
    /// the client resends only those.
    func createBatch(_ request: Request, token: APIToken, requestID: String) async throws(APIError) -> Response {
        let body = try await jsonBody(request)
        let members: [JSONScanner.Member]
        do {
            members = try JSONScanner.objectMembers(body)
        } catch {
            throw APIError(.badRequest, "invalid_json", "the body is not a JSON object: \(error)")
        }
        if let unknown = members.first(where: { $0.key != "jobs" && $0.key != "on_complete" }) {
            throw APIError(.unprocessableContent, "unknown_field", "unknown field '\(unknown.key)'", field: unknown.key)
        }
        guard let jobsMember = members.first(where: { $0.key == "jobs" }), jobsMember.kind == .array else {
            throw APIError(.unprocessableContent, members.contains { $0.key == "jobs" } ? "invalid_field" : "missing_field",
                           "'jobs' must be an array of 1 to \(Self.maxBatchJobs) jobs", field: "jobs")
        }
        let jobsBytes = Array(body[jobsMember.value])
        let elements = (try? JSONScanner.arrayElements(jobsBytes)) ?? []
        guard (1...Self.maxBatchJobs).contains(elements.count) else {
            throw APIError(.unprocessableContent, elements.isEmpty ? "invalid_field" : "too_many_jobs",
                           "'jobs' must hold 1 to \(Self.maxBatchJobs) jobs, got \(elements.count)", field: "jobs")
        }
        var requests: [JobRequest] = []
        var invalid: [APIError.Detail] = []
        for (index, element) in elements.enumerated() {
            do {
                requests.append(try parseJob(Array(jobsBytes[element.value]), token: token,
                                             allowed: ["type", "payload", "concurrency_key", "concurrency_limit"], field: "jobs[\(index)]."))
            } catch {
                invalid.append(error.item(index: index))
            }
        }
        var onComplete: APIBatchStore.OnComplete?
        if let member = members.first(where: { $0.key == "on_complete" && $0.kind != .null }) {
            do {
                let job = try parseJob(Array(body[member.value]), token: token, allowed: ["type", "payload"], field: "on_complete.")
                onComplete = .init(type: job.type, payload: job.payload)
            } catch {
                invalid.append(error.item(index: nil))
            }
        }
        guard invalid.isEmpty else {
            throw APIError(.unprocessableContent, "invalid_batch",
                           "\(invalid.count) item(s) of the batch are invalid; nothing was accepted",
                           more: BatchInvalid(errors: invalid))
        }
        try admit(token.tier)

        let batchID = JobID.make()
        // One span for the batch's publishes; every job's traceparent names it.
        let span = Traces.start("publish batch", kind: .producer)
        defer { span?.end() }
        span?.attributes["warren.batch_id"] = batchID.lowercasedString
        span?.attributes["warren.jobs"] = requests.count
        let traceparent = Traces.traceparent(span?.context)
        let jobs = requests.map { request in
            var job = request.envelope(correlationID: requestID)
            job.traceparent = traceparent ?? job.traceparent
            return job
        }
        do {
            try await batches.create(id: batchID, tenant: token.tenant, tier: token.tier, requestID: requestID, jobs: jobs,
                                     onComplete: onComplete)
        } catch {
            logger.warning("cannot record the batch", metadata: ["error": "\(error)", "request_id": "\(requestID)"])
            throw storeError(error, message: "cannot record the batch right now; retry later")
        }
        // Published at once. A job the broker confirmed is accepted; one it surely did not
        // take is taken back and rejected (resend it); one whose confirm never came (the link
        // dropped mid-publish) stays in the batch and the outbox, and the scheduler's leader
        // publishes it again under its id once its lease ends: unconfirmed, do not resend.
        let results = await Outbox(pool: batches.pool).publish(jobs, with: publisher)
        var accepted: [BatchItem] = []
        var unconfirmed: [BatchItem] = []
        var rejected: [APIError.Detail] = []
        var refused: [UUID] = []
        var queueFull = false
        for (index, (job, result)) in zip(jobs, results).enumerated() {
            let item = BatchItem(index: index, id: job.id.lowercasedString)
            switch result {
            case .success:
                accepted.append(item)
            case .failure(let error) where error.definitelyNotPublished:
                refused.append(job.id)
                let full = error.code == .nacked
                queueFull = queueFull || full
                rejected.append(APIError.Detail(index: index, code: full ? "queue_full" : "broker_unavailable",
                                                message: full ? "the \(job.tier.rawValue) queue is full" : "not taken by the broker"))
            case .failure:
                unconfirmed.append(item)
            }
        }
        do {
            try await batches.release(batch: batchID, refused: refused, accepted: jobs.count - refused.count)
        } catch {
            // Their entries stay in the outbox and are published after the lease.
            logger.error("cannot take back the batch jobs the broker refused; the outbox publishes them later",
                         metadata: ["error": "\(error)", "batch_id": "\(batchID.lowercasedString)", "count": "\(refused.count)"])
            unconfirmed = jobs.indices.filter { (try? results[$0].get()) == nil }.map { BatchItem(index: $0, id: jobs[$0].id.lowercasedString) }
            rejected = []
            refused = []
        }
        guard accepted.count == jobs.count else {
            let kept = jobs.count - refused.count
            var message = kept == 0
                ? "no job of the batch was accepted; retry later"
                : "\(accepted.count) of \(jobs.count) jobs were accepted into batch \(batchID.lowercasedString)"
            if !unconfirmed.isEmpty {
                message += "; \(unconfirmed.count) not confirmed yet stay in it and are published again under their ids (do not resend them)"
            }
            if kept > 0 && !rejected.isEmpty { message += "; resend the rejected ones" }
            throw APIError(.serviceUnavailable, queueFull ? "queue_full" : "broker_unavailable", message, retryAfter: queueFull ? 5 : 2,
                           more: BatchPartial(batchID: kept == 0 ? nil : batchID.lowercasedString, accepted: accepted,
                                              unconfirmed: unconfirmed, rejected: rejected))
        }
        return try json(.accepted, BatchAccepted(id: batchID.lowercasedString, total: jobs.count, jobs: jobs.map(\.id.lowercasedString)))
    }

    /// Counts by status, progress (finished / total), errors grouped by message with the first
    /// few job ids, and the on_complete job.
    func batchStatus(id: String, token: APIToken) async throws(APIError) -> Response {
        guard let uuid = UUID(uuidString: id) else { throw APIError(.notFound, "not_found", "no such batch") }
        let found: APIBatchStore.Summary?
        do {
            found = try await batches.summary(of: uuid, tenant: token.tenant)
        } catch {
            throw APIError(.serviceUnavailable, "database_unavailable", "cannot read the batch right now", retryAfter: 2)
        }
        guard let summary = found else { throw APIError(.notFound, "not_found", "no such batch") }
        return try json(.ok, BatchView(id: uuid, summary))
    }
}

extension APIError {
    /// This error as one item of a batch's error list.
    func item(index: Int?) -> Detail {
        var detail = detail
        detail.index = index
        return detail
    }
}

// MARK: - Answers

struct BatchItem: Encodable, Sendable {
    var index: Int
    var id: String
}

/// `422 invalid_batch`: every bad item.
struct BatchInvalid: Encodable, Sendable {
    var errors: [APIError.Detail]
}

/// `503`: which jobs the broker took, which it may have, which it refused.
struct BatchPartial: Encodable, Sendable {
    @Null var batchID: String?
    var accepted: [BatchItem]
    var unconfirmed: [BatchItem]
    var rejected: [APIError.Detail]

    enum CodingKeys: String, CodingKey { case batchID = "batch_id", accepted, unconfirmed, rejected }
}

struct BatchAccepted: Encodable, Sendable {
    var id: String
    var status = "running"
    var total: Int
    var jobs: [String]
}

/// `GET /v1/batches/{id}`: counts by status, progress (finished / total), errors grouped by
/// message with the first few job ids, what the jobs reported, and the on_complete job.
struct BatchView: Encodable, Sendable {
    var id: String
    var status: String
    var total: Int
    var finished: Int
    var progress: Double
    var counts: [String: Int]
    var errors: [ErrorGroup]
    var reportedProgress: Reported
    @Null var onComplete: OnComplete?
    var createdAt: String
    @Null var completedAt: String?

    enum CodingKeys: String, CodingKey {
        case id, status, total, finished, progress, counts, errors
        case reportedProgress = "reported_progress", onComplete = "on_complete", createdAt = "created_at", completedAt = "completed_at"
    }

    struct ErrorGroup: Encodable, Sendable {
        var message: String
        var count: Int
        var jobIDs: [String]

        enum CodingKeys: String, CodingKey { case message, count, jobIDs = "job_ids" }
    }

    /// The progress the batch's jobs reported, summed (`jobs`: how many reported; `total` and
    /// `percent` null when none gave a total).
    struct Reported: Encodable, Sendable {
        var done: Int64
        @Null var total: Int64?
        @Null var percent: Double?
        var jobs: Int
    }

    struct OnComplete: Encodable, Sendable {
        var type: String
        @Null var jobID: String?
        var published: Bool

        enum CodingKeys: String, CodingKey { case type, jobID = "job_id", published }
    }

    init(id: UUID, _ summary: APIBatchStore.Summary) {
        self.id = id.lowercasedString
        status = summary.completedAt == nil ? "running" : "complete"
        total = summary.total
        finished = summary.finished
        progress = ((summary.total == 0 ? 1.0 : Double(summary.finished) / Double(summary.total)) * 10_000).rounded() / 10_000
        counts = Dictionary(uniqueKeysWithValues: JobStatus.allCases.map { ($0.rawValue, summary.counts[$0.rawValue] ?? 0) })
        errors = summary.errors.map { ErrorGroup(message: $0.message, count: $0.count, jobIDs: $0.jobIDs.map(\.lowercasedString)) }
        let reported = JobProgress(done: summary.reported.done, total: summary.reported.total, message: nil)
        reportedProgress = Reported(done: reported.done, total: reported.total, percent: reported.percent, jobs: summary.reported.jobs)
        onComplete = summary.onCompleteType.map {
            OnComplete(type: $0, jobID: summary.onCompleteJobID?.lowercasedString, published: summary.onCompletePublished)
        }
        createdAt = summary.createdAt.iso8601
        completedAt = summary.completedAt?.iso8601
    }
}
