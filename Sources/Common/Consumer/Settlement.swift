import WarrenJobs
import WarrenResilience
import WarrenStore
import WarrenSupport

/// What to do with a delivery once its handler decided: a pure function of the job, the
/// outcome and the retry policy, so every branch is unit-tested without a broker; the
/// consumer only carries the plan out (publish with confirm, then record, then ack).
package struct Settlement: Sendable, Equatable {
    /// A message that must be confirmed by the broker before the outcome is recorded; if the
    /// publish fails, nothing is recorded and the delivery is handed back (nack, requeue).
    package enum Publish: Sendable, Equatable {
        /// To `warren.retry`, for the delay queue `delay` (`job` already carries the next
        /// attempt and seq), with extra headers.
        case retry(job: JobEnvelope, delay: Topology.RetryDelay, headers: [String: String])
        /// A copy to `warren.dead` with why and the last error.
        case deadLetter(reason: String, lastError: String)
    }

    package var publish: Publish?
    /// The row to write: its status, error, result, and the lineage position it speaks for.
    package var status: JobStatus
    package var seq: Int
    package var error: String?
    package var result: [UInt8]?
    package var event: JobEvent
    /// `message_logs.detail` fields.
    package var detail: [String: String]?
    /// The name it is counted under in `warren_consumer_jobs_total{outcome}`.
    package var counted: String
    /// The job's cancellation request, if any, is settled (forget it).
    package var forgetsCancellation = false

    /// The plan for `outcome` of `job` under `policy`; `random` draws the retry backoff.
    package static func plan<G: RandomNumberGenerator>(_ job: JobEnvelope, _ outcome: JobOutcome, policy: RetryPolicy,
                                                       using random: inout G) -> Settlement {
        switch outcome {
        case .success(let result):
            // A result that is not JSON is kept as a JSON string of its text.
            let stored = result.map { (try? JSONScanner.validate($0)) == nil ? Array(JSONText.quoted(String(decoding: $0, as: UTF8.self)).utf8) : $0 }
            return Settlement(publish: nil, status: .succeeded, seq: job.seq, result: stored, event: .succeeded, counted: "succeeded")

        case .retry(let error, let retryAfter):
            guard policy.allowsRetry(after: job.attempt) else {
                return Settlement(publish: .deadLetter(reason: "max-attempts", lastError: error), status: .dead, seq: job.seq,
                                  error: error, event: .deadLettered, detail: ["reason": "max-attempts", "error": error], counted: "dead")
            }
            let delay = policy.delayQueue(after: job.attempt, retryAfter: retryAfter, using: &random)
            var next = job
            next.attempt += 1
            next.seq += 1
            // The row speaks for the message republished (seq + 1): an older delivery of this
            // job, its ack lost, then finds itself superseded.
            return Settlement(publish: .retry(job: next, delay: delay, headers: [JobEnvelope.Header.lastError: error]),
                              status: .retrying, seq: next.seq, error: error, event: .retried,
                              detail: ["delay": delay.label, "error": error], counted: "retried")

        case .deferred(let reason, let retryAfter):
            // Like a retry with the same attempt: a deferral is no failed attempt, so it never
            // brings the job nearer to dead.
            let delay = RetryPolicy.nearestDelay(to: retryAfter)
            var next = job
            next.seq += 1
            return Settlement(publish: .retry(job: next, delay: delay, headers: [JobEnvelope.Header.deferredReason: reason]),
                              status: .retrying, seq: next.seq, error: "deferred: \(reason)", event: .retried,
                              detail: ["delay": delay.label, "deferred": reason], counted: "deferred")

        case .cancelled(let reason):
            return Settlement(publish: nil, status: .cancelled, seq: job.seq, error: reason, event: .cancelled,
                              detail: ["when": "while running", "reason": reason], counted: "cancelled", forgetsCancellation: true)

        case .permanentFailure(let error):
            return Settlement(publish: .deadLetter(reason: "permanent-failure", lastError: error), status: .failed, seq: job.seq,
                              error: error, event: .failed, detail: ["reason": "permanent-failure", "error": error], counted: "failed")
        }
    }

    /// The plan for a job whose rate-limit turn (`turn`, ms since the epoch) is `wait` away: a
    /// deferral (no attempt spent) to the delay that hops closest without passing the turn,
    /// carrying the turn so it does not reserve again (see ``OutboundLimits``).
    package static func rateLimited(_ job: JobEnvelope, key: String, wait: Duration, turn: Int64) -> Settlement {
        let delay = OutboundLimits.hop(toward: wait)
        var next = job
        next.seq += 1
        let reason = "rate limit \(key)"
        return Settlement(publish: .retry(job: next, delay: delay, headers: [JobEnvelope.Header.deferredReason: reason,
                                                                           OutboundLimits.turnHeader: String(turn)]),
                          status: .retrying, seq: next.seq, error: "deferred: \(reason)", event: .retried,
                          detail: ["delay": delay.label, "deferred": reason], counted: "deferred")
    }
}
