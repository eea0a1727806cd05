import Foundation
import Logging
import Testing
@testable import WarrenJobs
@testable import WarrenStore
@testable import WarrenSupport
@testable import WarrenWorker

/// The tracker's memory: the latest report of each job waits for the next write, a heartbeat
/// keeps the progress it does not carry, a failed write comes back under newer news, and a
/// job quiet past the stall time is stalled once until it speaks again.
@Suite struct ProgressTrackerTests {
    func tracker(stallAfter: Duration = .seconds(120), maxPending: Int = 10_000) -> ProgressTracker {
        var settings = ProgressTracker.Settings()
        settings.stallAfter = stallAfter
        settings.maxPending = maxPending
        return ProgressTracker(settings: settings, tiers: Tier.allCases, logger: Logger(label: "test"))
    }

    func job(_ tier: Tier = .premium) -> JobEnvelope { JobEnvelope(type: "report.build", tier: tier, payload: []) }

    @Test func theLatestReportOfEachJobWaitsAndAHeartbeatKeepsTheProgress() {
        let tracker = tracker()
        let (a, b) = (job(), job())
        tracker.begin(a)
        tracker.begin(b)
        tracker.report(job: a.id, attempt: 1, JobProgress(done: 1, total: 10, message: "one"))
        tracker.report(job: a.id, attempt: 1, JobProgress(done: 2, total: 10, message: "two"))
        tracker.report(job: a.id, attempt: 1, nil)
        tracker.report(job: b.id, attempt: 1, nil)
        let rows = Dictionary(uniqueKeysWithValues: tracker.takePending().map { ($0.job, $0) })
        #expect(rows.count == 2)
        #expect(rows[a.id]?.progress == JobProgress(done: 2, total: 10, message: "two"))
        #expect(rows[a.id]?.reportedAt != nil)
        #expect(rows[b.id]?.progress == nil)
        #expect(rows[b.id]?.reportedAt == nil)
        #expect(tracker.takePending().isEmpty)
    }

    @Test func reportsOfAJobNotRunningHereAreRefused() {
        let tracker = tracker()
        let a = job()
        tracker.report(job: a.id, attempt: 1, JobProgress(done: 1, total: nil, message: nil))
        #expect(tracker.takePending().isEmpty)
        tracker.begin(a)
        tracker.serve(at: "http://127.0.0.1:9090/")
        let url = tracker.progressURL(job: a.id)
        #expect(url?.hasPrefix("http://127.0.0.1:9090/progress/") == true)
        #expect(tracker.progressURL(job: a.id) == url)  // one token per run
        let token = String(url!.split(separator: "/").last!)
        #expect(token.count == 32)
        #expect(tracker.answer(token: token, body: Array(#"{"done":5,"total":8}"#.utf8)).status == 204)
        #expect(tracker.answer(token: token, body: Array(#"{"done":"x"}"#.utf8)).status == 400)
        // Another token (its first digit changed: a fixed "0" was the same one token in 16).
        #expect(tracker.answer(token: (token.first == "0" ? "1" : "0") + token.dropFirst(), body: []).status == 404)
        tracker.end(a.id)
        #expect(tracker.answer(token: token, body: []).status == 404)
        #expect(tracker.takePending().map(\.progress) == [JobProgress(done: 5, total: 8, message: nil)])
    }

    @Test func aFailedWriteComesBackUnderNewerNews() {
        let tracker = tracker()
        let a = job()
        tracker.begin(a)
        tracker.report(job: a.id, attempt: 1, JobProgress(done: 1, total: 10, message: nil))
        let failed = tracker.takePending()
        tracker.report(job: a.id, attempt: 1, nil)  // a heartbeat came meanwhile
        tracker.restore(failed)
        let rows = tracker.takePending()
        #expect(rows.count == 1)
        #expect(rows.first?.progress == JobProgress(done: 1, total: 10, message: nil))
        #expect(rows.first.map { $0.heartbeatAt >= failed[0].heartbeatAt } == true)

        tracker.report(job: a.id, attempt: 1, JobProgress(done: 2, total: 10, message: nil))
        let newer = tracker.takePending()
        tracker.report(job: a.id, attempt: 1, JobProgress(done: 3, total: 10, message: nil))
        tracker.restore(newer)
        #expect(tracker.takePending().first?.progress?.done == 3)
    }

    @Test func heldReportsAreCappedOldestFirst() {
        let tracker = tracker(maxPending: 2)
        let jobs = (0..<3).map { _ in job() }
        var rows: [ProgressStore.Row] = []
        for (index, job) in jobs.enumerated() {
            rows.append(ProgressStore.Row(job: job.id, enqueuedAt: job.enqueuedAt, attempt: 1, progress: nil, reportedAt: nil,
                                          heartbeatAt: Timestamp(microseconds: 1_000_000 * Int64(index + 1))))
        }
        tracker.restore(rows)
        #expect(Set(tracker.takePending().map(\.job)) == Set(jobs.dropFirst().map(\.id)))
    }

    @Test func aQuietJobIsStalledOnceUntilItSpeaks() {
        let tracker = tracker(stallAfter: .seconds(60))
        let (quiet, busy) = (job(.free), job(.enterprise))
        tracker.begin(quiet)
        tracker.begin(busy)
        let later = ContinuousClock.now + .seconds(61)
        #expect(tracker.sweep(now: .now).stalled.counts.isEmpty)
        let first = tracker.sweep(now: later).stalled
        #expect(first.counts == [.free: 1, .enterprise: 1])
        #expect(Set(first.newly.map(\.0)) == [quiet.id, busy.id])
        #expect(tracker.stalledCount == 2)
        #expect(tracker.sweep(now: later).stalled.newly.isEmpty)  // logged once
        tracker.report(job: busy.id, attempt: 1, nil)
        #expect(tracker.stalledCount == 1)
        // Quiet again long enough, it is stalled (and told) again.
        #expect(tracker.sweep(now: .now + .seconds(61)).stalled.newly.map(\.0) == [busy.id])
        tracker.end(quiet.id)
        #expect(tracker.sweep(now: later + .seconds(1)).stalled.counts == [.enterprise: 1])
    }
}

/// Slow runs: past their type's threshold (or the default), told once.
@Suite struct SlowJobTests {
    @Test func aRunPastItsTypesThresholdIsSlowOnce() {
        var settings = ProgressTracker.Settings()
        settings.slowAfter = .seconds(60)
        settings.slowAfterByType = ["report.build": .seconds(5), "ingest": Duration?.none]
        let tracker = ProgressTracker(settings: settings, tiers: Tier.allCases, logger: Logger(label: "test"))
        let report = JobEnvelope(type: "report.build", tier: .free, payload: [])
        let ingest = JobEnvelope(type: "ingest", tier: .free, payload: [])
        let other = JobEnvelope(type: "email.send", tier: .premium, payload: [])
        for job in [report, ingest, other] { tracker.begin(job) }
        #expect(tracker.sweep(now: .now + .seconds(6)).slow.map(\.0) == [report.id])
        #expect(tracker.sweep(now: .now + .seconds(7)).slow.isEmpty, "told once")
        // Reporting progress does not make a slow run fast.
        tracker.report(job: other.id, attempt: 1, JobProgress(done: 1, total: 2, message: nil))
        let later = tracker.sweep(now: .now + .seconds(3_600)).slow
        #expect(later.map(\.0) == [other.id], "the default threshold; a type set to 0 is never slow")
        #expect(later.first?.1 == .premium && later.first?.2 == "email.send")
    }
}
