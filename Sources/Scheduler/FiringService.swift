import Common
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Where the scheduler reads the time: the system clock, or (for tests and rehearsals) a file
/// holding an ISO 8601 instant, read again at every tick (`--clock-file`).
enum SchedulerClock: Sendable {
    case system
    case file(String)

    func now() -> Timestamp? {
        switch self {
        case .system:
            return .now()
        case .file(let path):
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
            return Timestamp(iso8601: text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }
}

/// The leader's loop: every `interval`, confirm leadership, then claim the fires that are due
/// (each under its fire key, in one transaction) and publish them with confirms; fires claimed
/// but left unconfirmed by a scheduler that died are published again with the same job id.
final class FiringService: Service {
    private let store: ScheduleStore
    private let publisher: JobPublisher
    private let lock: LeaderLock
    private let clock: SchedulerClock
    private let interval: Duration
    private let logger: Logger
    private let progress = Mutex<(lastTick: Timestamp?, published: Int, skipped: Int)>((nil, 0, 0))

    init(store: ScheduleStore, publisher: JobPublisher, lock: LeaderLock, clock: SchedulerClock, interval: Duration, logger: Logger) {
        self.store = store
        self.publisher = publisher
        self.lock = lock
        self.clock = clock
        self.interval = interval
        self.logger = logger
    }

    func run() async throws {
        try await publisher.start()
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                if await self.lock.confirm() { await self.tick() }
                try? await Task.sleep(for: self.interval)
            }
        }
        await lock.release()
        await publisher.close()
    }

    private func tick() async {
        guard let now = clock.now() else {
            logger.warning("cannot read the clock file; skipping this tick")
            return
        }
        do {
            let (claimed, skipped) = try await store.claimDue(now: now)
            let retried = try await store.unconfirmedFires(olderThanSeconds: 30)
            let fires = claimed + retried
            if skipped > 0 { logger.warning("fires missed beyond their catch-up window were skipped", metadata: ["count": "\(skipped)"]) }
            var confirmed: [ScheduleStore.Fire] = []
            if !fires.isEmpty {
                let results = await publisher.publish(fires.map(\.job))
                for (fire, result) in zip(fires, results) {
                    switch result {
                    case .success:
                        confirmed.append(fire)
                        logger.info("schedule fired", metadata: [
                            "schedule_id": "\(fire.scheduleID.lowercasedString)", "fire_at": "\(fire.fireAt.iso8601)",
                            "job_id": "\(fire.job.id.lowercasedString)", "idempotency_key": "\(fire.job.idempotencyKey ?? "-")",
                        ])
                    case .failure(let error):
                        logger.warning("fire not confirmed; published again later with the same id",
                                       metadata: ["schedule_id": "\(fire.scheduleID.lowercasedString)", "error": "\(error)"])
                    }
                }
                try await store.markPublished(confirmed)
            }
            progress.withLock { $0 = (now, $0.published + confirmed.count, $0.skipped + skipped) }
        } catch {
            logger.error("scheduler tick failed; retrying next tick", metadata: ["error": "\(error)"])
        }
    }

    func statusJSON() -> String {
        let (lastTick, published, skipped) = progress.withLock { ($0.lastTick, $0.published, $0.skipped) }
        return #""leader":\#(lock.isLeader),"last_tick":\#(lastTick.map { "\"\($0.iso8601)\"" } ?? "null"),"fires_published":\#(published),"fires_skipped":\#(skipped)"#
    }
}
