import Foundation
import Hummingbird
import Logging
import WarrenAMQP
import WarrenAuth
import WarrenJobs
import WarrenStore
import WarrenSupport

/// `POST /v1/batches` and `GET /v1/batches/{id}`.
extension JobsAPI {
    /// Up to ``maxBatchJobs`` jobs, validated all before any is published: one bad item is a
    /// 422 listing every bad item, and nothing is accepted. Then each job is published and
    /// confirmed; the batch holds the jobs the broker confirmed. If the broker refused some
    /// (a full queue), the answer is a 503 listing which were accepted and which were not, so
    /// the client resends only those.
    func createBatch(_ request: Request, token: APIToken, requestID: String) async throws(APIError) -> (Response, String?) {
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
        var invalid: [String] = []
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
                           extra: #""errors":[\#(invalid.joined(separator: ","))]"#)
        }
        try admit(token.tier)

        let batchID = JobID.make()
        let jobs = requests.map { $0.envelope(correlationID: requestID) }
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
        var accepted: [String] = []
        var unconfirmed: [String] = []
        var rejected: [String] = []
        var refused: [UUID] = []
        var queueFull = false
        for (index, (job, result)) in zip(jobs, results).enumerated() {
            let item = #"{"index":\#(index),"id":"\#(job.id.lowercasedString)"}"#
            switch result {
            case .success:
                accepted.append(item)
            case .failure(let error) where error.definitelyNotPublished:
                refused.append(job.id)
                let full = error.code == .nacked
                queueFull = queueFull || full
                rejected.append(#"{"index":\#(index),"code":"\#(full ? "queue_full" : "broker_unavailable")","message":\#(JSONText.quoted(full ? "the \(job.tier.rawValue) queue is full" : "not taken by the broker"))}"#)
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
            unconfirmed = jobs.indices.filter { (try? results[$0].get()) == nil }
                .map { #"{"index":\#($0),"id":"\#(jobs[$0].id.lowercasedString)"}"# }
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
                           extra: #""batch_id":\#(kept == 0 ? "null" : "\"\(batchID.lowercasedString)\""),"accepted":[\#(accepted.joined(separator: ","))],"unconfirmed":[\#(unconfirmed.joined(separator: ","))],"rejected":[\#(rejected.joined(separator: ","))]"#)
        }
        let ids = jobs.map { #""\#($0.id.lowercasedString)""# }.joined(separator: ",")
        return (json(.accepted, #"{"id":"\#(batchID.lowercasedString)","status":"running","total":\#(jobs.count),"jobs":[\#(ids)]}"#),
                token.tenant)
    }

    /// Counts by status, progress (finished / total), errors grouped by message with the first
    /// few job ids, and the on_complete job.
    func batchStatus(_ request: Request, id: String) async throws(APIError) -> (Response, String?) {
        let token = try await authenticate(request, scope: .jobsRead)
        guard let uuid = UUID(uuidString: id) else { throw APIError(.notFound, "not_found", "no such batch") }
        let found: APIBatchStore.Summary?
        do {
            found = try await batches.summary(of: uuid, tenant: token.tenant)
        } catch {
            throw APIError(.serviceUnavailable, "database_unavailable", "cannot read the batch right now", retryAfter: 2)
        }
        guard let summary = found else { throw APIError(.notFound, "not_found", "no such batch") }
        let counts = JobStatus.allCases.map { #""\#($0.rawValue)":\#(summary.counts[$0.rawValue] ?? 0)"# }.joined(separator: ",")
        let errors = summary.errors.map { group in
            let ids = group.jobIDs.map { #""\#($0.lowercasedString)""# }.joined(separator: ",")
            return #"{"message":\#(JSONText.quoted(group.message)),"count":\#(group.count),"job_ids":[\#(ids)]}"#
        }.joined(separator: ",")
        let progress = summary.total == 0 ? 1.0 : Double(summary.finished) / Double(summary.total)
        var onComplete = "null"
        if let type = summary.onCompleteType {
            onComplete = #"{"type":\#(JSONText.quoted(type)),"job_id":\#(summary.onCompleteJobID.map { "\"\($0.lowercasedString)\"" } ?? "null"),"published":\#(summary.onCompletePublished)}"#
        }
        let body = #"{"id":"\#(uuid.lowercasedString)","status":"\#(summary.completedAt == nil ? "running" : "complete")","total":\#(summary.total),"finished":\#(summary.finished),"progress":\#((progress * 10_000).rounded() / 10_000),"counts":{\#(counts)},"errors":[\#(errors)],"reported_progress":\#(Self.reportedJSON(summary.reported)),"on_complete":\#(onComplete),"created_at":"\#(summary.createdAt.iso8601)","completed_at":\#(summary.completedAt.map { "\"\($0.iso8601)\"" } ?? "null")}"#
        return (json(.ok, body), token.tenant)
    }
}

extension JobsAPI {
    /// The progress a batch's jobs reported, summed: `{"done", "total", "percent", "jobs"}`
    /// (`jobs`: how many reported; `total` and `percent` null when none gave a total).
    static func reportedJSON(_ reported: APIBatchStore.Summary.Reported) -> String {
        let progress = JobProgress(done: reported.done, total: reported.total, message: nil)
        return #"{"done":\#(progress.done),"total":\#(progress.total.map(String.init) ?? "null"),"percent":\#(progress.percent.map { "\($0)" } ?? "null"),"jobs":\#(reported.jobs)}"#
    }
}

extension APIError {
    /// This error as one item of a batch's error list.
    func item(index: Int?) -> String {
        var fields: [String] = []
        if let index { fields.append(#""index":\#(index)"#) }
        fields.append(#""code":\#(JSONText.quoted(code))"#)
        fields.append(#""message":\#(JSONText.quoted(message))"#)
        if let field { fields.append(#""field":\#(JSONText.quoted(field))"#) }
        return "{" + fields.joined(separator: ",") + "}"
    }
}
