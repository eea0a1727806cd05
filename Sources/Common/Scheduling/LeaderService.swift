import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import WarrenJobs
import WarrenStore
import WarrenSupport

/// Where the scheduler reads the time: the system clock, or (for tests and rehearsals) a file
/// holding an ISO 8601 instant, read again at every round (`--clock-file`).
package enum SchedulerClock: Sendable {
    case system
    case file(String)

    package func now() -> Timestamp? {
        switch self {
        case .system:
            return .now()
        case .file(let path):
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
            return Timestamp(iso8601: text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}

/// One kind of work only the leader does (fire cron schedules, publish due delayed jobs,
/// send contact events, keep partitions), run once per round with the round's time.
package protocol LeaderDuty: Sendable {
    /// The name in logs and `/status`.
    var name: String { get }
    /// Does what is due at `now`. Errors are logged and the duty runs again next round.
    func round(now: Timestamp) async throws
    /// Members of the scheduler's `/status` object, as JSON text without braces.
    func statusJSON() -> String
}

/// The scheduler's loop: every `interval`, confirm leadership on the lock's own connection
/// (a scheduler that cannot stops at once), then run each duty. A standby only keeps trying
/// for the lock.
package final class LeaderService: Service {
    private let duties: [any LeaderDuty]
    private let publisher: JobPublisher
    private let lock: LeaderLock
    private let clock: SchedulerClock
    private let interval: Duration
    private let logger: Logger
    private let lastRound = Mutex<Timestamp?>(nil)
    /// Per duty: its longest round so far, in milliseconds (also `warren_scheduler_duty_seconds`).
    private let longest = Mutex<[String: Double]>([:])
    private let timers: [String: Metrics.Timer]

    package init(duties: [any LeaderDuty], publisher: JobPublisher, lock: LeaderLock, clock: SchedulerClock, interval: Duration,
         logger: Logger) {
        self.duties = duties
        self.publisher = publisher
        self.lock = lock
        self.clock = clock
        self.interval = interval
        self.logger = logger
        self.timers = Dictionary(uniqueKeysWithValues: duties.map {
            ($0.name, Metrics.Timer(label: "warren_scheduler_duty_seconds", dimensions: [("duty", $0.name)], preferredDisplayUnit: .seconds))
        })
    }

    package func run() async throws {
        try await publisher.start()
        await cancelWhenGracefulShutdown {
            let leading = Gauge(label: "warren_scheduler_leader")
            while !Task.isCancelled {
                let leader = await self.lock.confirm()
                leading.record(leader ? 1 : 0)
                if leader { await self.round() }
                try? await Task.sleep(for: self.interval)
            }
        }
        await lock.release()
        await publisher.close()
    }

    private func round() async {
        guard let now = clock.now() else {
            logger.warning("cannot read the clock file; skipping this round")
            return
        }
        for duty in duties {
            let started = ContinuousClock.now
            do {
                try await duty.round(now: now)
            } catch {
                logger.error("leader duty failed; retrying next round", metadata: ["duty": "\(duty.name)", "error": "\(error)"])
            }
            let elapsed = ContinuousClock.now - started
            timers[duty.name]?.recordNanoseconds(elapsed.nanoseconds)
            let milliseconds = Double(elapsed.nanoseconds) / 1e6
            longest.withLock { $0[duty.name] = max($0[duty.name] ?? 0, milliseconds) }
        }
        lastRound.withLock { $0 = now }
    }

    package func statusJSON() -> String {
        let last = lastRound.withLock { $0 }
        let longest = longest.withLock { $0 }.sorted { $0.key < $1.key }
            .map { #""\#($0.key)":\#(String(format: "%.1f", $0.value))"# }.joined(separator: ",")
        let members = [#""leader":\#(lock.isLeader)"#, #""last_tick":\#(last.map { "\"\($0.iso8601)\"" } ?? "null")"#,
                       #""longest_round_ms":{\#(longest)}"#]
            + duties.map { $0.statusJSON() }.filter { !$0.isEmpty }
        return members.joined(separator: ",")
    }
}

/// Publishes `jobs` with confirms (through `outbox`, which marks the confirmed entries, when
/// they are its entries); returns the indexes of those the broker confirmed (the others are
/// logged, and the outbox publishes them again later under the same id).
package func publishConfirmed(_ jobs: [JobEnvelope], through outbox: Outbox? = nil, with publisher: JobPublisher,
                      logger: Logger) async -> [Int] {
    guard !jobs.isEmpty else { return [] }
    let results = if let outbox { await outbox.publish(jobs, with: publisher) } else { await publisher.publish(jobs) }
    var confirmed: [Int] = []
    for (index, result) in results.enumerated() {
        switch result {
        case .success: confirmed.append(index)
        case .failure(let error):
            logger.warning("publish not confirmed; published again later with the same id",
                           metadata: ["job_id": "\(jobs[index].id.lowercasedString)", "error": "\(error)"])
        }
    }
    return confirmed
}
