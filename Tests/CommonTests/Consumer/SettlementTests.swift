import Testing
@testable import WarrenJobs
@testable import WarrenStore
@testable import WarrenWorker

@Suite struct SettlementTests {
    /// Always the lowest backoff: plans are then exact.
    struct Zero: RandomNumberGenerator { mutating func next() -> UInt64 { 0 } }

    func job(attempt: Int = 1, seq: Int = 0) -> JobEnvelope {
        var job = JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8))
        job.attempt = attempt
        job.seq = seq
        return job
    }

    func plan(_ outcome: JobOutcome, _ job: JobEnvelope, maxAttempts: Int = 3) -> Settlement {
        var random = Zero()
        return Settlement.plan(job, outcome, policy: RetryPolicy(maxAttempts: maxAttempts), using: &random)
    }

    @Test func successIsRecordedWithItsResultAndNoPublish() {
        let settled = plan(.success(result: Array(#"{"a":1}"#.utf8)), job(seq: 2))
        #expect(settled.publish == nil)
        #expect(settled.status == .succeeded)
        #expect(settled.seq == 2, "the row speaks for this delivery")
        #expect(settled.result == Array(#"{"a":1}"#.utf8))
        #expect(settled.event == .succeeded)
        #expect(settled.counted == "succeeded")
    }

    @Test func aResultThatIsNotJSONIsKeptAsAString() {
        #expect(plan(.success(result: Array("plain text".utf8)), job()).result == Array(#""plain text""#.utf8))
        #expect(plan(.success, job()).result == nil)
    }

    @Test func aRetryWithAttemptsLeftRepublishesTheNextAttemptAndSeq() throws {
        let settled = plan(.retry("boom"), job(attempt: 1, seq: 4))
        guard case .retry(let next, let delay, let headers)? = settled.publish else { Issue.record("no retry publish"); return }
        #expect(next.attempt == 2)
        #expect(next.seq == 5)
        #expect(delay.label == "1s")
        #expect(headers == [JobEnvelope.Header.lastError: "boom"])
        #expect(settled.status == .retrying)
        #expect(settled.seq == 5, "the retrying row holds the republished message's seq")
        #expect(settled.event == .retried)
        #expect(settled.detail == ["delay": "1s", "error": "boom"])
    }

    @Test func aRetryAfterIsHonoured() {
        guard case .retry(_, let delay, _)? = plan(.retry(error: "slow", retryAfter: .seconds(30)), job()).publish else {
            Issue.record("no retry publish")
            return
        }
        #expect(delay.label == "30s")
    }

    @Test func aRetryWithNoAttemptsLeftIsDead() {
        let settled = plan(.retry("boom"), job(attempt: 3), maxAttempts: 3)
        #expect(settled.publish == .deadLetter(reason: "max-attempts", lastError: "boom"))
        #expect(settled.status == .dead)
        #expect(settled.event == .deadLettered)
        #expect(settled.counted == "dead")
    }

    @Test func aDeferralKeepsTheAttemptButMovesTheLineage() {
        let settled = plan(.deferred(reason: "breaker open", retryAfter: .seconds(5)), job(attempt: 3, seq: 1), maxAttempts: 3)
        guard case .retry(let next, let delay, let headers)? = settled.publish else { Issue.record("no retry publish"); return }
        #expect(next.attempt == 3, "a deferral spends no attempt, even the last")
        #expect(next.seq == 2)
        #expect(delay.label == "5s")
        #expect(headers == [JobEnvelope.Header.deferredReason: "breaker open"])
        #expect(settled.status == .retrying)
        #expect(settled.error == "deferred: breaker open")
        #expect(settled.counted == "deferred")
    }

    @Test func aCancelledRunIsRecordedAndItsRequestForgotten() {
        let settled = plan(.cancelled(reason: "cancelled while running"), job())
        #expect(settled.publish == nil)
        #expect(settled.status == .cancelled)
        #expect(settled.forgetsCancellation)
        #expect(settled.event == .cancelled)
    }

    @Test func aPermanentFailureIsDeadLetteredAndFailed() {
        let settled = plan(.permanentFailure(error: "bad payload"), job())
        #expect(settled.publish == .deadLetter(reason: "permanent-failure", lastError: "bad payload"))
        #expect(settled.status == .failed)
        #expect(settled.event == .failed)
        #expect(settled.counted == "failed")
        #expect(!settled.forgetsCancellation)
    }
}
