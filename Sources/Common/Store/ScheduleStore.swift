import Foundation
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Cron schedules in Postgres (`schedules`) and their fires (`schedule_fires`).
package struct ScheduleStore: Sendable {
    package let pool: PostgresPool

    /// Fires less late than this are on time, whatever the catch-up window (a tick runs every
    /// second or so; a window of 0 means "skip what was missed while down", not "skip
    /// everything a tick late").
    package static let onTimeGraceSeconds: Int64 = 60

    package init(pool: PostgresPool) { self.pool = pool }

    package struct Schedule: Sendable, Equatable {
        package var id: UUID
        package var tenant: String
        package var name: String
        package var cron: String
        package var timeZone: String
        package var jobType: String
        package var tier: Tier
        package var payload: String
        package var enabled: Bool
        package var catchUpSeconds: Int
        package var nextFireAt: Timestamp
        /// Why the leader disabled it (its expression or zone no longer evaluates), and when;
        /// nil for a schedule that evaluates (one a user disabled included).
        package var disabledReason: String?
        package var disabledAt: Timestamp?
    }

    /// Adds (or replaces, by tenant and name) a schedule; its first fire is the first after `now`.
    /// With `replace: false`, an existing schedule of that name stays as it is and nil is returned.
    /// Replacing a schedule the leader disabled (see ``claimDue(now:limit:)``) clears its reason:
    /// the new expression and zone evaluate (they were checked here), so `enabled` is as asked.
    @discardableResult
    package func put(tenant: String, name: String, cron: String, timeZone: String, jobType: String, tier: Tier,
                     payload: String, enabled: Bool = true, catchUpSeconds: Int = 86_400, replace: Bool = true,
                     now: Timestamp) async throws -> Schedule? {
        let schedule = try CronSchedule(cron, zone: timeZone)
        guard let next = schedule.next(after: now.microseconds / 1_000_000) else {
            throw CronExpression.ParseError(field: "cron", message: "never fires")
        }
        let rows = try await pool.query("""
            INSERT INTO schedules (id, tenant, name, cron, time_zone, job_type, tier, payload, enabled, catch_up_seconds, next_fire_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (tenant, name) DO UPDATE SET cron = EXCLUDED.cron, time_zone = EXCLUDED.time_zone,
                job_type = EXCLUDED.job_type, tier = EXCLUDED.tier, payload = EXCLUDED.payload, enabled = EXCLUDED.enabled,
                catch_up_seconds = EXCLUDED.catch_up_seconds, next_fire_at = EXCLUDED.next_fire_at, updated_at = now(),
                disabled_reason = NULL, disabled_at = NULL
                WHERE $12
            RETURNING \(Self.columns)
            """, [JobID.make(), tenant, name, schedule.expression.description, timeZone, jobType, tier.rawValue, payload, enabled,
                  catchUpSeconds, Timestamp(microseconds: next * 1_000_000), replace]).rows
        return try rows.first.map(Self.schedule)
    }

    package func list(tenant: String? = nil) async throws -> [Schedule] {
        try await pool.query("SELECT \(Self.columns) FROM schedules WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, name",
                             [tenant]).rows.map(Self.schedule)
    }

    package func get(tenant: String, name: String) async throws -> Schedule? {
        try await pool.query("SELECT \(Self.columns) FROM schedules WHERE tenant = $1 AND name = $2", [tenant, name]).rows
            .first.map(Self.schedule)
    }

    /// True when there was such a schedule.
    package func remove(tenant: String, name: String) async throws -> Bool {
        !(try await pool.query("DELETE FROM schedules WHERE tenant = $1 AND name = $2 RETURNING id", [tenant, name]).rows.isEmpty)
    }

    /// Schedules the leader disabled because they no longer evaluate: how many, and the latest
    /// `latest` of them (most recent first).
    package func disabled(latest: Int) async throws -> (count: Int, latest: [Schedule]) {
        try await pool.withConnection { connection in
            let count = try await connection.query("SELECT count(*) FROM schedules WHERE disabled_reason IS NOT NULL").rows
                .first?.int(0) ?? 0
            let rows = try await connection.query("""
                SELECT \(Self.columns) FROM schedules WHERE disabled_reason IS NOT NULL
                ORDER BY disabled_at DESC, tenant, name LIMIT $1
                """, [latest]).rows
            return (count, try rows.map(Self.schedule))
        }
    }

    static let columns = """
        id, tenant, name, cron, time_zone, job_type, tier, payload, enabled, catch_up_seconds, next_fire_at, disabled_reason,
        disabled_at
        """

    static func schedule(_ row: PostgresRow) throws -> Schedule {
        guard let tier = Tier(rawValue: try row.string(6)) else {
            throw PostgresError(.decoding, function: "schedules.tier", message: "unknown tier")
        }
        return Schedule(id: try row.uuid(0), tenant: try row.string(1), name: try row.string(2), cron: try row.string(3),
                        timeZone: try row.string(4), jobType: try row.string(5), tier: tier, payload: try row.string(7),
                        enabled: try row.bool(8), catchUpSeconds: try row.int(9), nextFireAt: try row.timestamp(10),
                        disabledReason: row[11], disabledAt: row[12].flatMap(Timestamp.init(iso8601:)))
    }

    // MARK: - Firing

    /// A fire claimed in Postgres, to publish.
    package struct Fire: Sendable {
        package var scheduleID: UUID
        package var fireAt: Timestamp
        package var job: JobEnvelope
    }

    /// A schedule ``claimDue(now:limit:)`` disabled because it no longer evaluates.
    package struct Disabled: Sendable, Equatable {
        package var id: UUID
        package var tenant: String
        package var name: String
        package var reason: String
    }

    /// What one ``claimDue(now:limit:)`` did.
    package struct Claimed: Sendable {
        /// To publish, then ``markPublished(_:)``.
        package var fires: [Fire] = []
        /// Fires recorded `skipped` (later than their catch-up window).
        package var skipped = 0
        /// Schedules disabled this time, with their errors.
        package var disabled: [Disabled] = []
    }

    /// Claims every fire due at `now`: for each due schedule (locked, `SKIP LOCKED`), the fires
    /// from its `next_fire_at` up to `now`, oldest first; a fire later than its catch-up window
    /// is recorded `skipped`, the others `fired` with a job id and an outbox entry (leased to the
    /// caller, who publishes it: ``Outbox/publish(_:with:)``), each under its fire key (an
    /// existing key means another scheduler already has it). `next_fire_at` moves past `now`.
    ///
    /// A due schedule that no longer evaluates (its zone left the time-zone data, its stored
    /// expression does not parse, or it has no next fire) is disabled in the same transaction
    /// with the error as `disabled_reason`: left due, it would be chosen first every round (the
    /// oldest `next_fire_at`) and a hundred of them would hold every other schedule back.
    package func claimDue(now: Timestamp, limit: Int = 100) async throws -> Claimed {
        try await pool.withTransaction { connection in
            let due = try await connection.query("""
                SELECT \(Self.columns) FROM schedules
                WHERE enabled AND next_fire_at <= $1
                ORDER BY next_fire_at LIMIT $2
                FOR UPDATE SKIP LOCKED
                """, [now, limit]).rows.map(Self.schedule)
            var claimed = Claimed()
            let nowSeconds = now.microseconds.floorDiv(1_000_000)
            for schedule in due {
                let cron: CronSchedule
                do {
                    cron = try CronSchedule(schedule.cron, zone: schedule.timeZone)
                } catch let error as CronExpression.ParseError {
                    claimed.disabled.append(try await Self.disable(schedule, reason: "cron '\(schedule.cron)': \(error)", on: connection))
                    continue
                } catch {
                    claimed.disabled.append(try await Self.disable(schedule, reason: "time_zone: \(error)", on: connection))
                    continue
                }
                var fireAt = schedule.nextFireAt.microseconds.floorDiv(1_000_000)
                var count = 0
                var exhausted = false
                while fireAt <= nowSeconds, count < 10_000 {
                    count += 1
                    let local = WallClock.iso8601(fireAt, in: cron.zone)
                    let late = nowSeconds - fireAt
                    let missed = late > Self.onTimeGraceSeconds && late > Int64(schedule.catchUpSeconds)
                    let at = Timestamp(microseconds: fireAt * 1_000_000)
                    if missed {
                        let inserted = try await connection.query("""
                            INSERT INTO schedule_fires (schedule_id, fire_at, local_time, state) VALUES ($1, $2, $3, 'skipped')
                            ON CONFLICT DO NOTHING RETURNING fire_at
                            """, [schedule.id, at, local]).rows
                        claimed.skipped += inserted.count
                    } else {
                        let job = JobEnvelope(type: schedule.jobType, tier: schedule.tier, payload: Array(schedule.payload.utf8),
                                              tenant: schedule.tenant,
                                              idempotencyKey: "schedule:\(schedule.id.lowercasedString):\(local)")
                        // created_at is the job's enqueued-at, so a republished job keeps its job_runs row.
                        let inserted = try await connection.query("""
                            INSERT INTO schedule_fires (schedule_id, fire_at, local_time, job_id, state, created_at)
                            VALUES ($1, $2, $3, $4, 'fired', $5)
                            ON CONFLICT DO NOTHING RETURNING fire_at
                            """, [schedule.id, at, local, job.id, job.enqueuedAt]).rows
                        if !inserted.isEmpty { claimed.fires.append(Fire(scheduleID: schedule.id, fireAt: at, job: job)) }
                    }
                    guard let next = cron.next(after: fireAt) else { exhausted = true; break }
                    fireAt = next
                }
                if exhausted {
                    // Its last fire was claimed above; there is nothing to move next_fire_at to.
                    let reason = "cron '\(schedule.cron)' has no fire after \(WallClock.iso8601(fireAt, in: cron.zone)) within 30 years"
                    claimed.disabled.append(try await Self.disable(schedule, reason: reason, on: connection))
                } else {
                    try await connection.query("UPDATE schedules SET next_fire_at = $2, updated_at = now() WHERE id = $1",
                                               [schedule.id, Timestamp(microseconds: fireAt * 1_000_000)])
                }
            }
            try await Outbox.add(claimed.fires.map(\.job), on: connection)
            return claimed
        }
    }

    /// Disables a schedule that no longer evaluates, recording why (cleared by ``put``).
    private static func disable(_ schedule: Schedule, reason: String, on connection: PostgresConnection) async throws -> Disabled {
        try await connection.query("""
            UPDATE schedules SET enabled = false, disabled_reason = $2, disabled_at = now(), updated_at = now() WHERE id = $1
            """, [schedule.id, reason])
        return Disabled(id: schedule.id, tenant: schedule.tenant, name: schedule.name, reason: reason)
    }
}
