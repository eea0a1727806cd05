import Foundation
import Logging
import Metrics
import Synchronization
import WarrenJobs
import WarrenStore
import WarrenSupport

/// Progress and heartbeats of the jobs running in one consumer (``JobContext/progress(done:total:message:)``,
/// ``JobContext/heartbeat()``, a handler's progress URL, a command's `warren-progress` lines).
///
/// A report only updates memory under a lock: the latest report of each job waits in `pending`
/// and ``run(store:)`` writes them all in one statement every ``Settings/flushInterval``, so a
/// handler reporting a thousand times a second costs one row a second, and nothing reported
/// is ever in the path of a job's start or result. A write Postgres refuses is kept for the
/// next round (unless a newer report replaced it); progress is news, never a reason to fail a job.
///
/// The same loop finds the jobs gone quiet: a job running here that neither reported nor
/// heartbeat for ``Settings/stallAfter`` is `stalled` (logged once, and counted in
/// `warren_consumer_jobs_stalled{tier}`) until its next sign of life.
package final class ProgressTracker: JobProgressSink {
    package struct Settings: Sendable {
        /// How often the latest reports are written (`WARREN_PROGRESS_FLUSH_MS`, 1000).
        package var flushInterval: Duration = .seconds(1)
        /// Quiet this long, a running job is stalled (`WARREN_STALL_SECONDS`, 120).
        package var stallAfter: Duration = .seconds(120)
        /// Most reports held for writing while Postgres refuses them; past it the oldest jobs'
        /// news is dropped (and counted).
        package var maxPending = 10_000
        /// A run longer than this is slow: logged once and counted in
        /// `warren_consumer_slow_jobs_total{tier,type}` (`WARREN_SLOW_JOB_SECONDS`, 60; nil: never) ...
        package var slowAfter: Duration? = .seconds(60)
        /// ... unless its type has its own (`WARREN_SLOW_JOB_SECONDS_BY_TYPE=report.build=600`; nil: never).
        package var slowAfterByType: [String: Duration?] = [:]

        package func slowThreshold(_ type: String) -> Duration? {
            if let own = slowAfterByType[type] { return own }
            return slowAfter
        }

        package init() {}
    }

    private struct Running {
        var enqueuedAt: Timestamp
        var tier: Tier
        var type: String
        var attempt: Int
        var started: ContinuousClock.Instant
        var lastSign: ContinuousClock.Instant
        var token: String?
        var stalled = false
        var slow = false
    }

    private struct State {
        var running: [UUID: Running] = [:]
        var tokens: [String: UUID] = [:]
        var pending: [UUID: ProgressStore.Row] = [:]
        /// `http://host:port`, once the admin server listens (``serve(at:)``).
        var baseURL: String?
    }

    package let settings: Settings
    private let state = Mutex(State())
    private let stalledGauges: [Tier: Gauge]
    private let writeFailures: Counter
    private let dropped: Counter
    private let logger: Logger

    package init(settings: Settings = Settings(), tiers: [Tier], logger: Logger) {
        self.settings = settings
        self.logger = logger
        stalledGauges = Dictionary(uniqueKeysWithValues: tiers.map {
            ($0, Gauge(label: "warren_consumer_jobs_stalled", dimensions: [("tier", $0.rawValue)]))
        })
        writeFailures = Counter(label: "warren_consumer_progress_write_failures_total")
        dropped = Counter(label: "warren_consumer_progress_dropped_total")
    }

    /// Progress URLs are `<baseURL>/progress/<token>` from now on (the consumer's admin server).
    package func serve(at baseURL: String) {
        state.withLock { $0.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL }
    }

    /// A run of `job` starts here: it may report, and it is watched for silence from now.
    package func begin(_ job: JobEnvelope) {
        let now = ContinuousClock.now
        let entry = Running(enqueuedAt: job.enqueuedAt, tier: job.tier, type: job.type, attempt: job.attempt, started: now, lastSign: now)
        state.withLock { $0.running[job.id] = entry }
    }

    /// The run of `job` ended: later reports (a late POST to its URL) are refused. What it
    /// reported last is still written.
    package func end(_ job: UUID) {
        state.withLock { state in
            if let token = state.running.removeValue(forKey: job)?.token { state.tokens[token] = nil }
        }
    }

    package func report(job: UUID, attempt: Int, _ progress: JobProgress?) {
        _ = record(job, progress)
    }

    /// A report posted to a progress URL. False when the token names no running job (its run
    /// ended, or it never existed).
    package func report(token: String, _ progress: JobProgress?) -> Bool {
        guard let job = state.withLock({ $0.tokens[token] }) else { return false }
        return record(job, progress)
    }

    private func record(_ job: UUID, _ progress: JobProgress?) -> Bool {
        let now = Timestamp.now()
        let clock = ContinuousClock.now
        return state.withLock { state in
            guard var entry = state.running[job] else { return false }
            entry.lastSign = clock
            entry.stalled = false
            state.running[job] = entry
            let row = ProgressStore.Row(job: job, enqueuedAt: entry.enqueuedAt, attempt: entry.attempt, progress: progress,
                                        reportedAt: progress == nil ? nil : now, heartbeatAt: now)
            state.pending[job] = Self.merge(state.pending[job], row)
            return true
        }
    }

    /// `newer` over `older`: a heartbeat alone keeps the progress it does not carry.
    static func merge(_ older: ProgressStore.Row?, _ newer: ProgressStore.Row) -> ProgressStore.Row {
        guard let older else { return newer }
        var row = newer
        if newer.progress == nil, older.progress != nil {
            row.progress = older.progress
            row.reportedAt = older.reportedAt
        }
        row.heartbeatAt = max(older.heartbeatAt, newer.heartbeatAt)
        return row
    }

    package func progressURL(job: UUID) -> String? {
        state.withLock { state in
            guard let base = state.baseURL, var entry = state.running[job] else { return nil }
            if let token = entry.token { return "\(base)/progress/\(token)" }
            let token = Self.newToken()
            entry.token = token
            state.running[job] = entry
            state.tokens[token] = job
            return "\(base)/progress/\(token)"
        }
    }

    /// `POST /progress/{token}` on the admin port: 204 once recorded, 400 for a body that is no
    /// report (saying why), 404 when no run here has the token (it ended, or never was).
    package func answer(token: String, body: [UInt8]) -> (status: Int, json: String) {
        let progress: JobProgress?
        do {
            progress = try JobProgress.parse(json: body)
        } catch {
            return (400, #"{"error":\#(JSONText.quoted(error.description))}"#)
        }
        guard report(token: token, progress) else {
            return (404, #"{"error":"no job running here has this progress URL (its run ended)"}"#)
        }
        return (204, "")
    }

    /// Where handlers reach an admin server bound to `host`: itself, or this host's name when it
    /// listens on every interface.
    package static func baseURL(host: String, port: Int) -> String {
        let name = ["0.0.0.0", "::", ""].contains(host) ? ProcessInfo.processInfo.hostName : host
        return name.contains(":") ? "http://[\(name)]:\(port)" : "http://\(name):\(port)"
    }

    /// 128 random bits, hex: the URL is the capability, valid only while its run goes on.
    private static func newToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<2).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    /// The reports waiting to be written, handed over (``run(store:)`` writes them).
    func takePending() -> [ProgressStore.Row] {
        state.withLock { state in
            defer { state.pending = [:] }
            return Array(state.pending.values)
        }
    }

    /// Puts back rows whose write failed, under any newer report of their job.
    func restore(_ rows: [ProgressStore.Row]) {
        let lost = state.withLock { state -> Int in
            for row in rows {
                state.pending[row.job] = state.pending[row.job].map { Self.merge(row, $0) } ?? row
            }
            let excess = state.pending.count - settings.maxPending
            guard excess > 0 else { return 0 }
            for row in state.pending.values.sorted(by: { $0.heartbeatAt < $1.heartbeatAt }).prefix(excess) {
                state.pending[row.job] = nil
            }
            return excess
        }
        if lost > 0 { dropped.increment(by: lost) }
    }

    /// The running jobs quiet past ``Settings/stallAfter``, by tier (marked, and the ones that
    /// just became stalled returned, to log once), and the runs that just passed their slow
    /// threshold.
    func sweep(now: ContinuousClock.Instant = .now)
        -> (stalled: (counts: [Tier: Int], newly: [(UUID, String, Duration)]), slow: [(UUID, Tier, String, Duration)]) {
        state.withLock { state in
            var counts: [Tier: Int] = [:]
            var newly: [(UUID, String, Duration)] = []
            var slow: [(UUID, Tier, String, Duration)] = []
            for (id, entry) in state.running {
                if !entry.slow, let threshold = settings.slowThreshold(entry.type), now - entry.started >= threshold {
                    state.running[id]?.slow = true
                    slow.append((id, entry.tier, entry.type, now - entry.started))
                }
                let quiet = now - entry.lastSign
                guard quiet >= settings.stallAfter else { continue }
                counts[entry.tier, default: 0] += 1
                if !entry.stalled {
                    state.running[id]?.stalled = true
                    newly.append((id, entry.type, quiet))
                }
            }
            return ((counts, newly), slow)
        }
    }

    /// Running jobs stalled now, for `/status`.
    package var stalledCount: Int {
        state.withLock { state in state.running.values.count { $0.stalled } }
    }

    /// Writes the pending reports and watches for stalled jobs, every ``Settings/flushInterval``,
    /// until cancelled; then writes what is left once.
    package func run(store: ProgressStore) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: settings.flushInterval)
            await flush(store)
            let ((counts, newly), slow) = sweep()
            for (tier, gauge) in stalledGauges { gauge.record(counts[tier] ?? 0) }
            for (job, tier, type, running) in slow {
                Counter(label: "warren_consumer_slow_jobs_total", dimensions: [("tier", tier.rawValue), ("type", type)]).increment()
                logger.warning("slow job: running past its threshold", metadata: [
                    "job_id": "\(job.lowercasedString)", "job_type": "\(type)", "running_seconds": "\(running.components.seconds)",
                    "threshold_seconds": "\(settings.slowThreshold(type)?.components.seconds ?? 0)",
                ])
            }
            for (job, type, quiet) in newly {
                logger.warning("job stalled: no progress or heartbeat", metadata: [
                    "job_id": "\(job.lowercasedString)", "job_type": "\(type)", "quiet_seconds": "\(quiet.components.seconds)",
                ])
            }
        }
        await flush(store)
    }

    private func flush(_ store: ProgressStore) async {
        let rows = takePending()
        guard !rows.isEmpty else { return }
        do {
            try await store.write(rows)
        } catch {
            writeFailures.increment()
            logger.warning("cannot write job progress; kept for the next round", metadata: ["error": "\(error)", "jobs": "\(rows.count)"])
            restore(rows)
        }
    }
}
