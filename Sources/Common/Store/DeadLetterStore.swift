import Foundation
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// The `dead_letters` table: every message that reached `warren.jobs.dead` (a job whose attempts
/// ran out, one that failed for good, one the broker gave up on after its delivery limit, a
/// message that is no job), taken off the queue by a scheduler's ``DeadLetterKeeper``-style
/// reader, and what became of it: replayed or discarded.
///
/// A replay (``replay(_:resetAttempts:by:limit:)``) enters each job in the outbox
/// (`delayed_jobs`) as the next message of its lineage, resets its `job_runs` row to `queued`,
/// and marks the dead letter `replayed`, all in one transaction; the caller then publishes the
/// jobs with confirms (``Outbox/publish(_:with:)``), and the leader's outbox dispatcher
/// publishes any it did not see confirmed. So a crash anywhere leaves the job dead (nothing
/// committed) or replayed and on its way (committed), never neither; and a job that reaches the
/// broker twice for one replay (a confirm lost) carries one seq, so consumers' start claims run
/// it once.
package struct DeadLetterStore: Sendable {
    /// A message off the dead queue, as the keeper read it.
    package struct Incoming: Sendable {
        package var properties: AMQPProperties
        package var body: [UInt8]

        package init(properties: AMQPProperties, body: [UInt8]) {
            self.properties = properties
            self.body = body
        }

        /// Why it died: Warren's own reason, else the broker's (`delivery_limit`, ...).
        package var reason: String {
            properties.headers[JobEnvelope.Header.deadReason]?.stringValue
                ?? properties.headers["x-first-death-reason"]?.stringValue
                ?? "unknown"
        }
    }

    /// One dead letter as listed.
    package struct DeadLetter: Sendable, Equatable {
        package var id: Int64
        package var jobID: UUID?
        package var type: String?
        package var tier: String?
        package var tenant: String?
        package var reason: String
        package var error: String?
        package var payload: String
        package var attempt: Int?
        package var enqueuedAt: Timestamp?
        package var deadAt: Timestamp
        package var state: String
        package var replayable: Bool
        package var settledAt: Timestamp?
    }

    /// Which dead letters a list, replay or discard takes. Nil fields do not filter; `tenant`
    /// is set by the API for every token but an admin's.
    package struct Filter: Sendable, Equatable {
        package var ids: [Int64]?
        package var reason: String?
        package var type: String?
        package var tenant: String?
        package var tier: Tier?
        package var since: Timestamp?
        package var until: Timestamp?
        /// `dead` unless asked otherwise (a list may show `replayed` or `discarded` ones).
        package var state = "dead"

        package init(ids: [Int64]? = nil, reason: String? = nil, type: String? = nil, tenant: String? = nil, tier: Tier? = nil,
                     since: Timestamp? = nil, until: Timestamp? = nil, state: String = "dead") {
            self.ids = ids
            self.reason = reason
            self.type = type
            self.tenant = tenant
            self.tier = tier
            self.since = since
            self.until = until
            self.state = state
        }

        /// The WHERE clause over `d`, its parameters numbered from `$first`.
        func sql(first: Int) -> (String, [any PostgresEncodable]) {
            var conditions = ["d.state = $\(first)"]
            var parameters: [any PostgresEncodable] = [state]
            func add(_ condition: (String) -> String, _ value: any PostgresEncodable) {
                parameters.append(value)
                conditions.append(condition("$\(first + parameters.count - 1)"))
            }
            if let ids { add({ "d.id = ANY(\($0)::bigint[])" }, PostgresArray(ids)) }
            if let reason { add({ "d.reason = \($0)" }, reason) }
            if let type { add({ "d.type = \($0)" }, type) }
            if let tenant { add({ "d.tenant = \($0)" }, tenant) }
            if let tier { add({ "d.tier = \($0)" }, tier.rawValue) }
            if let since { add({ "d.dead_at >= \($0)" }, since) }
            if let until { add({ "d.dead_at < \($0)" }, until) }
            return (conditions.joined(separator: " AND "), parameters)
        }
    }

    private let pool: PostgresPool

    package init(pool: PostgresPool) { self.pool = pool }

    /// Records `messages` (one statement); a copy already recorded (same job and seq: its ack
    /// was lost) is skipped. Returns once committed: then the messages may be acked.
    package func record(_ messages: [Incoming]) async throws {
        guard !messages.isEmpty else { return }
        var rows: [(job: UUID?, enqueued: Timestamp?, seq: Int?, attempt: Int?, type: String?, tier: String?, tenant: String?,
                    correlation: String?, reason: String, error: String?, payload: String, headers: String, replayable: Bool)] = []
        for message in messages {
            let headers = Self.headersJSON(message.properties.headers)
            let reason = String(message.reason.prefix(1_000))
            let error = message.properties.headers[JobEnvelope.Header.lastError]?.stringValue
            let payload = String(decoding: message.body, as: UTF8.self)
            if let job = try? JobEnvelope(properties: message.properties, body: message.body) {
                rows.append((job.id, job.enqueuedAt, job.seq, job.attempt, job.type, job.tier.rawValue, job.tenant, job.correlationID,
                             reason, error, payload, headers, true))
            } else {
                // No job (its reason says what is wrong): kept as it came, never replayed.
                rows.append((message.properties.messageID.flatMap(UUID.init(uuidString:)), nil, nil, nil, message.properties.type,
                             message.properties.headers[JobEnvelope.Header.tier]?.stringValue,
                             message.properties.headers[JobEnvelope.Header.tenant]?.stringValue, message.properties.correlationID,
                             reason, error, payload, headers, false))
            }
        }
        try await pool.query("""
            INSERT INTO dead_letters (job_id, enqueued_at, seq, attempt, type, tier, tenant, correlation_id, reason, error, payload,
                                      headers, replayable)
            SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::integer[], $4::integer[], $5::text[], $6::text[], $7::text[],
                                 $8::text[], $9::text[], $10::text[], $11::text[], $12::jsonb[], $13::boolean[])
            ON CONFLICT (job_id, seq) DO NOTHING
            """, [PostgresArray(rows.map(\.job)), PostgresArray(rows.map(\.enqueued)), PostgresArray(rows.map(\.seq)),
                  PostgresArray(rows.map(\.attempt)), PostgresArray(rows.map(\.type)), PostgresArray(rows.map(\.tier)),
                  PostgresArray(rows.map(\.tenant)), PostgresArray(rows.map(\.correlation)), PostgresArray(rows.map(\.reason)),
                  PostgresArray(rows.map(\.error)), PostgresArray(rows.map(\.payload)), PostgresArray(rows.map(\.headers)),
                  PostgresArray(rows.map(\.replayable))])
    }

    /// A message's headers as a JSON object (strings, numbers and booleans as themselves,
    /// anything else as its description), for the listing and the replay.
    static func headersJSON(_ headers: AMQPTable) -> String {
        let members = headers.dictionary.sorted { $0.key < $1.key }.map { key, value -> String in
            if let text = value.stringValue { return "\(JSONText.quoted(key)):\(JSONText.quoted(text))" }
            if let number = value.intValue { return "\(JSONText.quoted(key)):\(number)" }
            return "\(JSONText.quoted(key)):\(JSONText.quoted(String(describing: value)))"
        }
        return "{" + members.joined(separator: ",") + "}"
    }

    static let columns = """
        d.id, d.job_id, d.type, d.tier, d.tenant, d.reason, d.error, d.payload, d.attempt, d.enqueued_at, d.dead_at, d.state,
        d.replayable, d.settled_at
        """

    static func deadLetter(_ row: PostgresRow) throws -> DeadLetter {
        DeadLetter(id: Int64(try row.int(0)), jobID: row[1].flatMap(UUID.init(uuidString:)), type: row[2], tier: row[3], tenant: row[4],
                   reason: try row.string(5), error: row[6], payload: try row.string(7), attempt: row[8].flatMap { Int($0) },
                   enqueuedAt: row[9].flatMap(Timestamp.init(iso8601:)), deadAt: try row.timestamp(10), state: try row.string(11),
                   replayable: try row.bool(12), settledAt: row[13].flatMap(Timestamp.init(iso8601:)))
    }

    /// Up to `limit` dead letters matching `filter`, oldest first, after the one numbered `after`.
    package func list(_ filter: Filter, after: Int64? = nil, limit: Int = 100) async throws -> [DeadLetter] {
        let (conditions, parameters) = filter.sql(first: 3)
        return try await pool.query("""
            SELECT \(Self.columns) FROM dead_letters d
            WHERE d.id > $1 AND \(conditions) ORDER BY d.id LIMIT $2
            """, [after ?? 0, limit] + parameters).rows.map(Self.deadLetter)
    }

    /// Counts of the dead letters matching `filter`, by reason, most frequent first.
    package func countByReason(_ filter: Filter) async throws -> [(reason: String, count: Int)] {
        let (conditions, parameters) = filter.sql(first: 1)
        return try await pool.query("""
            SELECT d.reason, count(*) FROM dead_letters d WHERE \(conditions) GROUP BY 1 ORDER BY 2 DESC, 1
            """, parameters).rows.map { (try $0.string(0), try $0.int(1)) }
    }

    /// What a replay or discard did.
    package struct Settled: Sendable {
        /// The dead letters taken (ids), and for a replay the jobs to publish now.
        package var ids: [Int64] = []
        package var jobs: [JobEnvelope] = []
    }

    /// Replays up to `limit` replayable dead letters matching `filter` (see the type's note):
    /// returns the jobs entered in the outbox, leased to the caller, who publishes them. With
    /// `resetAttempts` a job starts again at attempt 1 (its whole retry budget), else at its
    /// next attempt.
    package func replay(_ filter: Filter, resetAttempts: Bool, by: String, limit: Int = 1_000) async throws -> Settled {
        let (conditions, parameters) = filter.sql(first: 3)
        return try await pool.withTransaction { connection in
            let rows = try await connection.query("""
                UPDATE dead_letters d SET state = 'replayed', settled_at = now(), settled_by = $1
                WHERE d.id IN (SELECT d.id FROM dead_letters d WHERE d.replayable AND \(conditions)
                               ORDER BY d.id LIMIT $2 FOR UPDATE SKIP LOCKED)
                RETURNING d.id, d.job_id, d.enqueued_at, d.seq, d.attempt, d.type, d.tier, d.tenant, d.correlation_id, d.payload,
                          d.headers->>'\(JobEnvelope.Header.idempotencyKey)', d.headers->>'\(JobEnvelope.Header.concurrencyKey)',
                          d.headers->>'\(JobEnvelope.Header.concurrencyLimit)', d.headers->>'\(JobEnvelope.Header.traceparent)',
                          (SELECT max(r.seq) FROM job_runs r WHERE r.job_id = d.job_id AND r.enqueued_at = d.enqueued_at)
                """, [by, limit] + parameters).rows
            var settled = Settled()
            for row in rows {
                guard let tier = Tier(rawValue: try row.string(6)) else { continue }
                var job = JobEnvelope(type: try row.string(5), tier: tier, payload: Array(try row.string(9).utf8), tenant: row[7],
                                      idempotencyKey: row[10], correlationID: row[8], enqueuedAt: try row.timestamp(2), id: try row.uuid(1),
                                      concurrencyKey: row[11], concurrencyLimit: row[12].flatMap { Int($0) } ?? 1)
                job.traceparent = row[13]
                // The next message of its lineage: past the dead copy and anything its row saw.
                job.seq = max(try row.int(3), row[14].flatMap { Int($0) } ?? 0) + 1
                job.attempt = resetAttempts ? 1 : try row.int(4) + 1
                settled.ids.append(Int64(try row.int(0)))
                settled.jobs.append(job)
            }
            guard !settled.jobs.isEmpty else { return settled }
            let jobs = settled.jobs
            try await Outbox.addNext(jobs, on: connection)
            // Its row waits again (a terminal row would refuse the replay's start), at the
            // replay's own seq: the replayed message claims it (same seq, not running), and the
            // dead run's own record, if the consumer writes it only now (the scheduler read the
            // dead copy first), is older and changes nothing.
            try await connection.query("""
                UPDATE job_runs r SET status = 'queued', seq = u.seq, error = NULL, result = NULL, finished_at = NULL,
                                      updated_at = now()
                FROM unnest($1::uuid[], $2::timestamptz[], $3::int[]) AS u(job_id, enqueued_at, seq)
                WHERE r.job_id = u.job_id AND r.enqueued_at = u.enqueued_at
                """, [PostgresArray(jobs.map(\.id)), PostgresArray(jobs.map(\.enqueuedAt)), PostgresArray(jobs.map(\.seq))])
            try await connection.query("""
                INSERT INTO message_logs (job_id, enqueued_at, event, attempt, tier, detail)
                SELECT u.job_id, u.enqueued_at, 'replayed', u.attempt, u.tier,
                       jsonb_build_object('dead_letter', u.dead_letter, 'by', $6::text, 'seq', u.seq)
                FROM unnest($1::uuid[], $2::timestamptz[], $3::int[], $4::text[], $5::bigint[], $7::int[])
                     AS u(job_id, enqueued_at, attempt, tier, dead_letter, seq)
                """, [PostgresArray(jobs.map(\.id)), PostgresArray(jobs.map(\.enqueuedAt)), PostgresArray(jobs.map(\.attempt)),
                      PostgresArray(jobs.map(\.tier.rawValue)), PostgresArray(settled.ids), by, PostgresArray(jobs.map(\.seq))])
            return settled
        }
    }

    /// Marks up to `limit` dead letters matching `filter` discarded (kept for the record, never
    /// replayed). Returns their ids.
    package func discard(_ filter: Filter, by: String, limit: Int = 1_000) async throws -> [Int64] {
        let (conditions, parameters) = filter.sql(first: 3)
        return try await pool.query("""
            UPDATE dead_letters d SET state = 'discarded', settled_at = now(), settled_by = $1
            WHERE d.id IN (SELECT d.id FROM dead_letters d WHERE \(conditions) ORDER BY d.id LIMIT $2 FOR UPDATE SKIP LOCKED)
            RETURNING d.id
            """, [by, limit] + parameters).rows.map { Int64(try $0.int(0)) }
    }

    /// Deletes dead letters replayed or discarded more than `olderThanDays` ago (open ones stay
    /// until someone decides). Returns how many went.
    @discardableResult
    package func prune(olderThanDays days: Int, batchSize: Int = 10_000) async throws -> Int {
        try await Retention.deleteInPages("""
            DELETE FROM dead_letters WHERE id IN (
                SELECT id FROM dead_letters WHERE state <> 'dead' AND settled_at < now() - make_interval(days => \(days)) LIMIT $1)
            """, pageSize: batchSize, pool: pool)
    }
}
