import Foundation
import Logging
import Metrics
import Synchronization
import WarrenConfig
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// Fires the cron schedules: claims the due fires (each under its fire key, with its outbox
/// entry, in one transaction) and publishes them with confirms; a fire left unconfirmed (the
/// connection dropped, a scheduler died) is published again by the outbox's dispatcher, same
/// job id, once its lease ends. A due schedule that no
/// longer evaluates is disabled with its error (logged, counted in
/// `warren_schedules_disabled_total`, and on `/status` with the latest few).
package final class CronDuty: LeaderDuty {
    let store: ScheduleStore
    let publisher: JobPublisher
    let logger: Logger
    private let counts = Mutex<(published: Int, skipped: Int)>((0, 0))
    /// Schedules disabled for not evaluating, as the database last said (any scheduler may have
    /// disabled them, and writing one again re-enables it), read at most every few seconds.
    private let disabled = Mutex<(count: Int, latest: [ScheduleStore.Schedule], read: ContinuousClock.Instant?)>((0, [], nil))
    private let disabledCounter = Counter(label: "warren_schedules_disabled_total")
    /// How many of the disabled schedules `/status` lists.
    static let latestDisabledShown = 5

    package init(store: ScheduleStore, publisher: JobPublisher, logger: Logger) {
        self.store = store
        self.publisher = publisher
        self.logger = logger
    }

    package var name: String { "cron" }

    package func round(now: Timestamp) async throws {
        let claim = try await store.claimDue(now: now)
        let (claimed, skipped) = (claim.fires, claim.skipped)
        for schedule in claim.disabled {
            logger.error("schedule no longer evaluates; disabled until it is written again", metadata: [
                "schedule_id": "\(schedule.id.lowercasedString)", "tenant": "\(schedule.tenant)", "schedule": "\(schedule.name)",
                "error": "\(schedule.reason)",
            ])
        }
        if !claim.disabled.isEmpty { disabledCounter.increment(by: claim.disabled.count) }
        let fires = claimed
        if skipped > 0 { logger.warning("fires missed beyond their catch-up window were skipped", metadata: ["count": "\(skipped)"]) }
        let confirmed = await publishConfirmed(fires.map(\.job), through: Outbox(pool: store.pool), with: publisher,
                                               logger: logger).map { fires[$0] }
        for fire in confirmed {
            logger.info("schedule fired", metadata: [
                "schedule_id": "\(fire.scheduleID.lowercasedString)", "fire_at": "\(fire.fireAt.iso8601)",
                "job_id": "\(fire.job.id.lowercasedString)", "idempotency_key": "\(fire.job.idempotencyKey ?? "-")",
            ])
        }
        counts.withLock { $0 = ($0.published + confirmed.count, $0.skipped + skipped) }
        await refreshDisabled(force: !claim.disabled.isEmpty)
    }

    /// Reads the disabled schedules again when `force`d or a few seconds after the last read
    /// (for `/status` only: a failure is logged and the round goes on).
    private func refreshDisabled(force: Bool) async {
        let stale = disabled.withLock { state in state.read.map { ContinuousClock.now - $0 > .seconds(5) } ?? true }
        guard force || stale else { return }
        do {
            let (count, latest) = try await store.disabled(latest: Self.latestDisabledShown)
            disabled.withLock { $0 = (count, latest, .now) }
        } catch {
            logger.warning("cannot read the disabled schedules for /status", metadata: ["error": "\(error)"])
        }
    }

    package func statusJSON() -> String {
        let (published, skipped) = counts.withLock { ($0.published, $0.skipped) }
        let (count, latest) = disabled.withLock { ($0.count, $0.latest) }
        let shown = latest.map { schedule in
            #"{"tenant":\#(JSONText.quoted(schedule.tenant)),"name":\#(JSONText.quoted(schedule.name)),"reason":\#(JSONText.quoted(schedule.disabledReason ?? "")),"disabled_at":\#(schedule.disabledAt.map { "\"\($0.iso8601)\"" } ?? "null")}"#
        }
        return #""fires_published":\#(published),"fires_skipped":\#(skipped),"schedules_disabled":\#(count),"schedules_disabled_latest":[\#(shown.joined(separator: ","))]"#
    }
}

/// Publishes delayed jobs when due: claimed `FOR UPDATE SKIP LOCKED` and marked published in
/// the same transaction, after the broker's confirm.
package final class DelayedJobDuty: LeaderDuty {
    let store: Outbox
    let publisher: JobPublisher
    let logger: Logger
    private let published = Mutex(0)
    private let lateness = Metrics.Timer(label: "warren_delayed_job_lateness_seconds", preferredDisplayUnit: .seconds)

    package init(store: Outbox, publisher: JobPublisher, logger: Logger) {
        self.store = store
        self.publisher = publisher
        self.logger = logger
    }

    package var name: String { "delayed_jobs" }

    package func round(now: Timestamp) async throws {
        // Batches of up to 1,000 until nothing due is left, the broker stops confirming, or ten
        // batches went out (the other duties and the lock check wait for this round).
        for _ in 0..<10 {
            let (claimed, late) = try await store.dispatchDue(now: now) { jobs in
                await publishConfirmed(jobs, with: publisher, logger: logger)
            }
            for seconds in late { lateness.recordNanoseconds(Int64(max(0, seconds) * 1e9)) }
            published.withLock { $0 += late.count }
            if claimed > 0 {
                logger.info("delayed jobs published", metadata: ["count": "\(late.count)", "claimed": "\(claimed)",
                                                                 "max_late_ms": "\(Int((late.max() ?? 0) * 1_000))"])
            }
            guard claimed == 1_000, late.count == claimed else { return }
        }
    }

    package func statusJSON() -> String { #""delayed_jobs_published":\#(published.withLock { $0 })"# }
}

/// Keeps daily partitions ready ahead and drops those past retention, every
/// `WARREN_UPKEEP_INTERVAL_SECONDS`, and deletes old rows of `api_batches`, `api_jobs`,
/// `delayed_jobs` and `contact_fires`.
package final class UpkeepDuty: LeaderDuty {
    let pool: PostgresPool
    let settings: Settings
    let logger: Logger
    /// When the last round ran (system clock), succeeded, and the last error since.
    private let progress = Mutex<(attempted: ContinuousClock.Instant?, succeeded: Timestamp?, error: String?)>((nil, nil, nil))

    package init(pool: PostgresPool, settings: Settings, logger: Logger) {
        self.pool = pool
        self.settings = settings
        self.logger = logger
    }

    package var name: String { "upkeep" }

    package func round(now: Timestamp) async throws {
        let due = progress.withLock { progress in
            guard let attempted = progress.attempted, ContinuousClock.now - attempted < .seconds(settings.upkeepIntervalSeconds)
            else { progress.attempted = .now; return true }
            return false
        }
        guard due else { return }
        do {
            try await Self.once(pool: pool, settings: settings, logger: logger)
            progress.withLock { $0.succeeded = Timestamp.now(); $0.error = nil }
        } catch {
            // Try again after a short pause rather than a whole interval.
            progress.withLock { $0.error = "\(error)"; $0.attempted = .now - .seconds(max(0, settings.upkeepIntervalSeconds - 5)) }
            throw error
        }
    }

    /// One upkeep round (also `scheduler --once`). The retention horizon moves first (to the
    /// partition cutoff), so from then on the jobs before it read 404 and their cancellation
    /// requests are not open, and `api_batches` and `api_jobs` are pruned before the `job_runs`
    /// partitions go: no job is ever left with a row that reads `queued` for want of its run.
    package static func once(pool: PostgresPool, settings: Settings, logger: Logger, now: Timestamp = .now()) async throws {
        let horizon = try await Retention.advance(to: Retention.horizon(retentionDays: settings.retentionDays, now: now), pool: pool)
        let batches = try await APIBatchStore(pool: pool).prune()
        let jobs = try await APIJobStore(pool: pool).prune()
        let cancellations = try await APIJobStore(pool: pool).pruneCancellations()
        let reports = try await ProgressStore(pool: pool).prune()
        if batches + jobs + cancellations + reports > 0 {
            logger.info("api_batches, api_jobs, job_cancellations and job_progress past retention deleted", metadata: [
                "batches": "\(batches)", "jobs": "\(jobs)", "cancellations": "\(cancellations)", "progress": "\(reports)",
                "horizon": "\(horizon.iso8601)",
            ])
        }
        try await PartitionManager(logger: logger).upkeep(daysAhead: settings.partitionDaysAhead,
                                                          retentionDays: settings.retentionDays, pool: pool, now: now)
        let pruned = try await Outbox(pool: pool).prune(olderThanDays: settings.retentionDays)
            + (try await ContactStore(pool: pool).prune(olderThanDays: settings.retentionDays))
            + (try await DeadLetterStore(pool: pool).prune(olderThanDays: settings.retentionDays))
        if pruned > 0 { logger.info("old delayed_jobs, contact_fires and settled dead_letters rows deleted", metadata: ["count": "\(pruned)"]) }
        let idleBuckets = try await RateBucketStore(pool: pool).prune()
        if idleBuckets > 0 { logger.info("rate_buckets idle for a day deleted", metadata: ["count": "\(idleBuckets)"]) }
    }

    package func statusJSON() -> String {
        let (succeeded, error) = progress.withLock { ($0.succeeded, $0.error) }
        return #""last_upkeep":\#(succeeded.map { "\"\($0.iso8601)\"" } ?? "null"),"last_error":\#(error.map(JSONText.quoted) ?? "null"),"upkeep_interval_seconds":\#(settings.upkeepIntervalSeconds)"#
    }
}

/// Sends contact events (birthdays, anniversaries) at their local time in each contact's
/// zone. For each zone and kind, every local date from the day after its cursor up to today
/// whose send time has come is handled once: its due contacts are one indexed query (paged),
/// each message is written under its fire key and then published; the cursor then moves to
/// that date. A date later than the catch-up window is skipped whole. Changing a contact's
/// date or zone takes effect for any date its zone has not reached yet.
package final class ContactEventDuty: LeaderDuty {
    let store: ContactStore
    let publisher: JobPublisher
    let catchUpSeconds: Int64
    let logger: Logger
    /// Zones by name (nil: not a zone, logged once), messages published, dates skipped.
    private let state = Mutex<(zones: [String: TimeZone?], published: Int, skippedDays: Int)>(([:], 0, 0))

    package init(store: ContactStore, publisher: JobPublisher, catchUpSeconds: Int64, logger: Logger) {
        self.store = store
        self.publisher = publisher
        self.catchUpSeconds = catchUpSeconds
        self.logger = logger
    }

    package var name: String { "contacts" }

    package func round(now: Timestamp) async throws {
        let nowSeconds = now.microseconds.floorDiv(1_000_000)
        var failure: (any Error)?
        for cursor in try await store.cursors() {
            // One zone's trouble does not hold up the others (nor the retries below).
            do {
                try await visit(cursor, nowSeconds: nowSeconds)
            } catch {
                logger.error("contact events of a zone failed; retrying next round",
                             metadata: ["time_zone": "\(cursor.timeZone)", "kind": "\(cursor.kind)", "error": "\(error)"])
                failure = error
            }
        }
        if let failure { throw failure }
    }

    /// The dates after `cursor` whose send time has come, in order.
    private func visit(_ cursor: ContactStore.Cursor, nowSeconds: Int64) async throws {
        guard let kind = ContactEvents.kind(cursor.kind), let zone = zone(cursor.timeZone) else { return }
        let today = WallClock.date(at: nowSeconds, in: zone)
        // No older date than the window can reach is worth visiting.
        let oldest = today.adding(days: -Int(catchUpSeconds / 86_400) - 2)
        var day = cursor.doneThrough.map { $0.adding(days: 1) } ?? today
        if day < oldest {
            state.withLock { $0.skippedDays += oldest.daysSinceEpoch - day.daysSinceEpoch }
            day = oldest
        }
        while day <= today {
            let wall = Int64(day.daysSinceEpoch) * 86_400 + Int64(kind.localTime.hour * 3_600 + kind.localTime.minute * 60)
            let sendAt = WallClock.instant(wall, in: zone)
            guard sendAt <= nowSeconds else { return }
            let late = nowSeconds - sendAt
            if late > ScheduleStore.onTimeGraceSeconds && late > catchUpSeconds {
                state.withLock { $0.skippedDays += 1 }
                logger.warning("contact events missed beyond the catch-up window were skipped",
                               metadata: ["time_zone": "\(cursor.timeZone)", "kind": "\(kind.kind)", "date": "\(day)"])
            } else {
                try await send(kind, zone: cursor.timeZone, on: day)
            }
            // A contact written meanwhile (its version moved): read the cursor again next round.
            guard try await store.advance(cursor, to: day) else { return }
            day = day.adding(days: 1)
        }
    }

    /// Every message of `kind` due in `zone` on `day`, a page at a time.
    private func send(_ kind: any ContactEventKind, zone: String, on day: CivilDate) async throws {
        let page = 5_000
        var total = 0
        while true {
            let (fires, selected) = try await store.claim(kind, zone: zone, on: day, limit: page)
            total += try await publish(fires)
            if selected < page { break }
        }
        if total > 0 {
            logger.info("contact events sent", metadata: ["time_zone": "\(zone)", "kind": "\(kind.kind)", "date": "\(day)",
                                                          "messages": "\(total)"])
        }
    }

    /// Publishes with confirms through the outbox (which marks the confirmed ones and
    /// publishes the others again after their lease); returns how many were confirmed.
    @discardableResult
    private func publish(_ fires: [ContactStore.Fire]) async throws -> Int {
        let confirmed = await publishConfirmed(fires.map(\.job), through: Outbox(pool: store.pool), with: publisher,
                                               logger: logger).map { fires[$0] }
        state.withLock { $0.published += confirmed.count }
        return confirmed.count
    }

    private func zone(_ identifier: String) -> TimeZone? {
        if let known = state.withLock({ $0.zones[identifier] }) { return known }
        let zone = try? CronSchedule.zone(identifier)
        if zone == nil { logger.error("contacts in an unknown time zone are not sent", metadata: ["time_zone": "\(identifier)"]) }
        state.withLock { $0.zones[identifier] = .some(zone) }
        return zone
    }

    package func statusJSON() -> String {
        let (published, skipped) = state.withLock { ($0.published, $0.skippedDays) }
        return #""contact_messages_published":\#(published),"contact_days_skipped":\#(skipped)"#
    }
}
