import Foundation
import Logging
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// A job's status in `job_runs`.
package enum JobStatus: String, Sendable, CaseIterable {
    case queued, running, retrying, succeeded, failed, dead, cancelled

    /// Terminal statuses: a redelivered job in one of these is not run again.
    package var isTerminal: Bool { self == .succeeded || self == .failed || self == .dead || self == .cancelled }

    /// The terminal statuses as an SQL list, `('succeeded', 'failed', 'dead', 'cancelled')`.
    package static let terminalSQL = "(" + allCases.filter(\.isTerminal).map { "'\($0.rawValue)'" }.joined(separator: ", ") + ")"
}

/// An event in `message_logs`.
package enum JobEvent: String, Sendable {
    case published, started, retried, succeeded, failed, deadLettered = "dead_lettered", cancelled, duplicate
    /// An operator sent a job waiting between retries on at once (``JobRunStore/retryNow(_:tenant:by:)``).
    case retriedNow = "retried_now"
}

/// What a `job_runs` row keeps of its job's message, for the console and for "retry now":
/// the payload, and the headers the row's other columns do not hold (the attempt it carries,
/// its concurrency key and limit, its trace context) as a JSON object of strings named as on
/// the wire. Kept for jobs that did not succeed at their first try (and for every job with
/// `WARREN_KEEP_PAYLOADS=all`), so a consumer's success path writes nothing more.
package struct KeptMessage: Sendable, Equatable {
    package var payload: String
    package var headers: [String: String]

    /// `job` as it would be published (its attempt and seq already those of the message).
    package init(_ job: JobEnvelope) {
        payload = String(decoding: job.payload, as: UTF8.self)
        var headers = [JobEnvelope.Header.attempt: String(job.attempt)]
        if let key = job.concurrencyKey {
            headers[JobEnvelope.Header.concurrencyKey] = key
            headers[JobEnvelope.Header.concurrencyLimit] = String(job.concurrencyLimit)
        }
        if let traceparent = job.traceparent { headers[JobEnvelope.Header.traceparent] = traceparent }
        self.headers = headers
    }

    /// The headers as a JSON object, text Postgres can store.
    var headersJSON: String {
        "{" + headers.sorted { $0.key < $1.key }.map { JSONText.quoted($0.key) + ":" + JSONText.quoted(StorableText.text($0.value).text) }
            .joined(separator: ",") + "}"
    }
}

/// One delivery's durable outcome: the `job_runs` row (unless `run` is nil, as for a
/// duplicate) and the `message_logs` event (none for the `running` mark written at start).
package struct JobRunRecord: Sendable {
    package struct Run: Sendable {
        package var status: JobStatus
        package var attempts: Int
        /// The lineage position this row speaks for (see ``JobEnvelope/seq``): the job's own,
        /// or for `retrying` the republished message's.
        package var seq: Int
        package var result: [UInt8]?
        package var error: String?
        package var consumerID: String
        package var startedAt: Timestamp
        /// Nil while the job runs.
        package var finishedAt: Timestamp?
        /// The message this row speaks for (for `retrying`, the one republished), kept in the
        /// row's `payload` and `headers`: see ``KeptMessage``. Nil keeps what the row has.
        package var kept: KeptMessage?

        package init(status: JobStatus, attempts: Int, seq: Int = 0, result: [UInt8]? = nil, error: String? = nil, consumerID: String,
                     startedAt: Timestamp, finishedAt: Timestamp?) {
            self.status = status
            self.attempts = attempts
            self.seq = seq
            self.result = result
            self.error = error
            self.consumerID = consumerID
            self.startedAt = startedAt
            self.finishedAt = finishedAt
        }
    }

    package var job: JobEnvelope
    package var run: Run?
    package var event: JobEvent?
    /// JSON object text for `message_logs.detail`.
    package var detail: [UInt8]?
    package var loggedAt: Timestamp

    package init(job: JobEnvelope, run: Run?, event: JobEvent?, detail: [UInt8]? = nil, loggedAt: Timestamp = .now()) {
        self.job = job
        self.run = run
        self.event = event
        self.detail = detail
        self.loggedAt = loggedAt
    }

    /// This record with text Postgres cannot store made safe (see ``StorableText``); the
    /// fields changed are named in the event's detail (`"sanitized": "error,result"`).
    package func storable() -> JobRunRecord {
        var record = self
        var changed: [String] = []
        func clean(_ text: String?, _ name: String) -> String? {
            guard let text else { return nil }
            let (safe, didChange) = StorableText.text(text)
            if didChange { changed.append(name) }
            return safe
        }
        record.job.tenant = clean(job.tenant, "tenant")
        record.job.idempotencyKey = clean(job.idempotencyKey, "idempotency_key")
        record.job.correlationID = clean(job.correlationID, "correlation_id")
        if var run = record.run {
            run.error = clean(run.error, "error")
            run.consumerID = clean(run.consumerID, "consumer_id") ?? run.consumerID
            if let result = run.result, let safe = StorableText.json(result) {
                run.result = safe
                changed.append("result")
            }
            record.run = run
        }
        if let detail, let safe = StorableText.json(detail) { record.detail = safe }
        if !changed.isEmpty { record.note("sanitized", changed.joined(separator: ",")) }
        return record
    }

    /// This record made simpler for a Postgres that refused it, `step` 1 or 2; nil past them.
    /// 1: the result kept as a JSON string of its text (jsonb refused the document, e.g. a
    /// number beyond `numeric`). 2: no result, the error cut to 1,000 characters, the reason
    /// in the detail.
    package func degraded(step: Int, reason: String) -> JobRunRecord? {
        var record = self
        switch step {
        case 1:
            guard let result = run?.result else { return nil }
            record.run?.result = Array(JSONText.quoted(String(decoding: result, as: UTF8.self)).utf8)
            record.note("result_stored_as_text", reason)
        case 2:
            let error = run?.error.map { String($0.prefix(1_000)) }
            record.run?.result = nil
            record.run?.kept = nil
            record.run?.error = error
            record.detail = nil
            record.note("unstorable", reason)
        default:
            return nil
        }
        return record.storable()
    }

    /// Adds a string member to the event's detail object.
    private mutating func note(_ key: String, _ value: String) {
        let member = JSONText.quoted(key) + ":" + JSONText.quoted(value)
        guard var text = detail.map({ String(decoding: $0, as: UTF8.self) }), text.hasSuffix("}") else {
            detail = Array(("{" + member + "}").utf8)
            return
        }
        text.removeLast()
        text += (text.trimmingWhitespace() == "{" ? "" : ",") + member + "}"
        detail = Array(text.utf8)
    }
}

/// Reads and writes job outcomes: batched, idempotent, creating a missing day's partition.
package struct JobRunStore: Sendable {
    package let pool: PostgresPool
    package let partitions: PartitionManager

    package init(pool: PostgresPool, logger: Logger) {
        self.pool = pool
        self.partitions = PartitionManager(logger: logger)
    }

    /// The status of a job's row, or nil when it has none.
    package func status(of job: JobEnvelope) async throws -> JobStatus? {
        let rows = try await pool.query("SELECT status FROM job_runs WHERE job_id = $1 AND enqueued_at = $2",
                                        [job.id, job.enqueuedAt]).rows
        guard let row = rows.first else { return nil }
        return JobStatus(rawValue: try row.string(0))
    }

    /// A delivery about to run, for ``claimStarts(_:)``.
    package struct Start: Sendable {
        package var job: JobEnvelope
        /// Flagged redelivered by the broker: it may take over a `running` row at its own seq
        /// (its first run died with its consumer); a fresh delivery may not (that row is another
        /// copy of the same message, running now).
        package var redelivered: Bool
        package var consumerID: String
        package var startedAt: Timestamp

        package init(job: JobEnvelope, redelivered: Bool, consumerID: String, startedAt: Timestamp) {
            self.job = job
            self.redelivered = redelivered
            self.consumerID = consumerID
            self.startedAt = startedAt
        }
    }

    /// What a start claim decided for one delivery.
    package enum StartClaim: Sendable, Equatable {
        /// The row now says `running` at this delivery's seq: run it.
        case run
        /// Do not run it: the row is terminal (a cancellation included), a later message of the
        /// job is out, or another copy of this one is running. `status` is the row's.
        case skip(status: String)
    }

    /// Marks `starts` running where their job's row allows it, in one statement per kind
    /// (fresh, redelivered): the meeting point of a start with a cancellation (which writes
    /// `cancelled` on the same row only while it is `queued` or `retrying`) and with the
    /// job's other deliveries. The row's primary key serialises them, so exactly one wins.
    package func claimStarts(_ starts: [Start]) async throws -> [StartClaim] {
        guard !starts.isEmpty else { return [] }
        // One claim per job in a statement (ON CONFLICT may touch a row once); the highest seq.
        var best: [UUID: Int] = [:]
        for (index, start) in starts.enumerated() {
            if let other = best[start.job.id], starts[other].job.seq >= start.job.seq { continue }
            best[start.job.id] = index
        }
        let chosen = Set(best.values)
        var claimed = Set<UUID>()
        try await withPartitions(for: starts.map(\.job.enqueuedAt)) {
            claimed = []
            try await pool.withTransaction { connection in
                for redelivered in [false, true] {
                    let group = starts.indices.filter { chosen.contains($0) && starts[$0].redelivered == redelivered }.map { starts[$0] }
                    guard !group.isEmpty else { continue }
                    let rows = try await connection.query(redelivered ? Self.claimRedelivered : Self.claimFresh, [
                        PostgresArray(group.map { $0.job.id }),
                        PostgresArray(group.map { $0.job.enqueuedAt }),
                        PostgresArray(group.map { $0.job.type }),
                        PostgresArray(group.map { $0.job.tier.rawValue }),
                        PostgresArray(group.map { $0.job.tenant.map { StorableText.text($0).text } }),
                        PostgresArray(group.map { $0.job.idempotencyKey.map { StorableText.text($0).text } }),
                        PostgresArray(group.map { $0.job.correlationID.map { StorableText.text($0).text } }),
                        PostgresArray(group.map { $0.job.attempt }),
                        PostgresArray(group.map { $0.job.seq }),
                        PostgresArray(group.map { StorableText.text($0.consumerID).text }),
                        PostgresArray(group.map { $0.startedAt }),
                    ]).rows
                    for row in rows { claimed.insert(try row.uuid(0)) }
                }
            }
        }
        let unclaimed = starts.indices.filter { !(chosen.contains($0) && claimed.contains(starts[$0].job.id)) }
        var statuses: [UUID: String] = [:]
        if !unclaimed.isEmpty {
            let rows = try await pool.query("SELECT job_id, status FROM job_runs WHERE job_id = ANY($1::uuid[])",
                                            [PostgresArray(unclaimed.map { starts[$0].job.id })]).rows
            for row in rows { statuses[try row.uuid(0)] = try row.string(1) }
        }
        return starts.indices.map { index in
            if chosen.contains(index) && claimed.contains(starts[index].job.id) { return .run }
            return .skip(status: statuses[starts[index].job.id] ?? "unknown")
        }
    }

    static func claim(sameSeqWhen condition: String) -> String {
        """
        INSERT INTO job_runs (job_id, enqueued_at, type, tier, tenant, idempotency_key, correlation_id,
                              status, attempts, seq, consumer_id, started_at, updated_at)
        SELECT u.job_id, u.enqueued_at, u.type, u.tier, u.tenant, u.idempotency_key, u.correlation_id,
               'running', u.attempts, u.seq, u.consumer_id, u.started_at, now()
        FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::integer[], $9::integer[], $10::text[], $11::timestamptz[])
             AS u(job_id, enqueued_at, type, tier, tenant, idempotency_key, correlation_id,
                  attempts, seq, consumer_id, started_at)
        ON CONFLICT (job_id, enqueued_at) DO UPDATE SET
            status = 'running', attempts = EXCLUDED.attempts, seq = EXCLUDED.seq, consumer_id = EXCLUDED.consumer_id,
            started_at = EXCLUDED.started_at, finished_at = NULL, result = NULL, updated_at = now()
        WHERE job_runs.status NOT IN \(JobStatus.terminalSQL)
          AND (EXCLUDED.seq > job_runs.seq OR (EXCLUDED.seq = job_runs.seq AND \(condition)))
        RETURNING job_id
        """
    }

    /// A fresh delivery takes a row at its seq unless another copy is running it.
    static let claimFresh = claim(sameSeqWhen: "job_runs.status <> 'running'")
    /// A redelivered one may take over a `running` row: its first run died with its consumer.
    static let claimRedelivered = claim(sameSeqWhen: "true")

    /// Runs `body`; if a row found no partition, creates the days of `instants` (and today's,
    /// for `message_logs`) and runs it again.
    private func withPartitions(for instants: [Timestamp], _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as PostgresError where error.isNoPartition {
            var days = Set(instants.map(PartitionManager.Day.init))
            days.insert(PartitionManager.Day(.now()))
            for day in days.sorted() {
                for table in PartitionManager.Table.allCases {
                    try await partitions.ensure(table: table, day: day, pool: pool)
                }
            }
            try await body()
        }
    }

    /// Writes `records` in one transaction. Idempotent: a row is replaced only by a later
    /// attempt, or by the same attempt while it is not terminal, so a redelivered batch
    /// changes nothing. A missing partition is created and the write retried. Text Postgres
    /// cannot store (NUL) is made safe first (``JobRunRecord/storable()``); a batch it still
    /// refuses throws an error whose ``PostgresError/isDataError`` tells the writer to
    /// isolate the row at fault.
    package func write(_ records: [JobRunRecord]) async throws {
        guard !records.isEmpty else { return }
        do {
            try await writeOnce(records)
        } catch let error as PostgresError where error.isNoPartition {
            var days = Set<PartitionManager.Day>()
            for record in records {
                days.insert(PartitionManager.Day(record.loggedAt))
                if record.run != nil { days.insert(PartitionManager.Day(record.job.enqueuedAt)) }
            }
            for day in days.sorted() {
                for table in PartitionManager.Table.allCases {
                    try await partitions.ensure(table: table, day: day, pool: pool)
                }
            }
            try await writeOnce(records)
        }
    }

    private func writeOnce(_ records: [JobRunRecord]) async throws {
        // One row per job key: the latest attempt wins (two outcomes of one job in a batch
        // would make ON CONFLICT touch a row twice).
        var runs: [String: (JobEnvelope, JobRunRecord.Run)] = [:]
        let records = records.map { $0.storable() }
        for record in records {
            guard let run = record.run else { continue }
            let key = record.job.id.lowercasedString + "|" + record.job.enqueuedAt.iso8601
            if let existing = runs[key]?.1, existing.seq > run.seq || (existing.seq == run.seq && existing.status.isTerminal) {
                continue
            }
            runs[key] = (record.job, run)
        }
        let rows = Array(runs.values)
        try await pool.withTransaction { connection in
            // Rows that keep their message take the statement with the two more columns; the
            // others (every plain success) the one without, so a success writes nothing more.
            for keeping in [false, true] {
                let group = rows.filter { ($0.1.kept != nil) == keeping }
                guard !group.isEmpty else { continue }
                var parameters: [any PostgresEncodable] = [
                    PostgresArray(group.map { $0.0.id }),
                    PostgresArray(group.map { $0.0.enqueuedAt }),
                    PostgresArray(group.map { $0.0.type }),
                    PostgresArray(group.map { $0.0.tier.rawValue }),
                    PostgresArray(group.map { $0.0.tenant }),
                    PostgresArray(group.map { $0.0.idempotencyKey }),
                    PostgresArray(group.map { $0.0.correlationID }),
                    PostgresArray(group.map { $0.1.status.rawValue }),
                    PostgresArray(group.map { $0.1.attempts }),
                    PostgresArray(group.map { $0.1.result.map { String(decoding: $0, as: UTF8.self) } }),
                    PostgresArray(group.map { $0.1.error }),
                    PostgresArray(group.map { $0.1.consumerID }),
                    PostgresArray(group.map { $0.1.startedAt }),
                    PostgresArray(group.map { $0.1.finishedAt }),
                    PostgresArray(group.map { $0.1.seq }),
                ]
                if keeping {
                    parameters.append(PostgresArray(group.map { $0.1.kept?.payload }))
                    parameters.append(PostgresArray(group.map { $0.1.kept?.headersJSON }))
                }
                try await connection.query(keeping ? Self.upsertKeepingRuns : Self.upsertRuns, parameters)
            }
            let events = records.filter { $0.event != nil }
            guard !events.isEmpty else { return }
            try await connection.query(Self.insertEvents, [
                PostgresArray(events.map { $0.job.id }),
                PostgresArray(events.map { $0.job.enqueuedAt }),
                PostgresArray(events.map { $0.event?.rawValue }),
                PostgresArray(events.map { $0.job.attempt }),
                PostgresArray(events.map { $0.job.tier.rawValue }),
                PostgresArray(events.map { $0.detail.map { String(decoding: $0, as: UTF8.self) } }),
                PostgresArray(events.map { $0.loggedAt }),
            ])
        }
    }

    /// A row moves only forward along its job's lineage: to a later seq, or to another status
    /// at the same seq while it is not terminal. A terminal row (a cancellation included) is
    /// final, so a replayed batch or a superseded run's late outcome changes nothing.
    static let upsertRuns = upsert(keeping: false)
    /// The same for rows that keep their message (``KeptMessage``): `payload` and `headers` too.
    static let upsertKeepingRuns = upsert(keeping: true)

    static func upsert(keeping: Bool) -> String {
        """
        INSERT INTO job_runs (job_id, enqueued_at, type, tier, tenant, idempotency_key, correlation_id,
                              status, attempts, result, error, consumer_id, started_at, finished_at, seq\(keeping ? ", payload, headers" : ""), updated_at)
        SELECT u.job_id, u.enqueued_at, u.type, u.tier, u.tenant, u.idempotency_key, u.correlation_id,
               u.status, u.attempts, u.result, u.error, u.consumer_id, u.started_at, u.finished_at, u.seq\(keeping ? ", u.payload, u.headers" : ""), now()
        FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                    $8::text[], $9::integer[], $10::jsonb[], $11::text[], $12::text[], $13::timestamptz[], $14::timestamptz[],
                    $15::integer[]\(keeping ? ", $16::text[], $17::jsonb[]" : ""))
             AS u(job_id, enqueued_at, type, tier, tenant, idempotency_key, correlation_id,
                  status, attempts, result, error, consumer_id, started_at, finished_at, seq\(keeping ? ", payload, headers" : ""))
        ON CONFLICT (job_id, enqueued_at) DO UPDATE SET
            status = EXCLUDED.status, attempts = EXCLUDED.attempts, result = EXCLUDED.result, error = EXCLUDED.error,
            consumer_id = EXCLUDED.consumer_id, started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            seq = EXCLUDED.seq,\(keeping ? " payload = EXCLUDED.payload, headers = EXCLUDED.headers," : "") updated_at = now()
        WHERE job_runs.status NOT IN \(JobStatus.terminalSQL)
          AND EXCLUDED.seq >= job_runs.seq
        """
    }

    static let insertEvents = """
        INSERT INTO message_logs (job_id, enqueued_at, event, attempt, tier, detail, logged_at)
        SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::integer[], $5::text[], $6::jsonb[],
                             $7::timestamptz[])
        """
}

// MARK: - Retry now

extension JobRunStore {
    /// What ``retryNow(_:tenant:by:)`` did.
    package enum RetryNow: Sendable, Equatable {
        /// Entered in the outbox as the next message of its lineage, leased to the caller, who
        /// publishes it (``Outbox/publish(_:with:)``).
        case entered(JobEnvelope)
        /// No such job (or not `tenant`'s).
        case notFound
        /// Not waiting between retries: `status` is what it is now.
        case notWaiting(status: String)
        /// Waiting, but its row keeps no message to send (written before Warren kept them).
        case notKept
    }

    /// Sends a job waiting between retries (`retrying`) on at once. In one transaction its row
    /// moves to the next seq of its lineage, still `retrying`, and the job enters the outbox as
    /// that next message, due now, with the attempt the waiting copy carries. So the copy in
    /// the delay queue, at the old seq, is superseded (consumers' start claims skip it) and the
    /// attempt runs once, whichever copy comes first; a crash after the commit leaves the entry
    /// to the leader's outbox dispatcher, never neither copy. The row's lock meets consumers'
    /// start claims: once a copy started (`running`), there is nothing to send on.
    /// `tenant` nil: any tenant's job (an admin).
    package func retryNow(_ id: UUID, tenant: String?, by: String) async throws -> RetryNow {
        try await pool.withTransaction { connection in
            let rows = try await connection.query("""
                UPDATE job_runs SET seq = seq + 1, updated_at = now()
                WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2) AND status = 'retrying' AND payload IS NOT NULL
                RETURNING enqueued_at, type, tier, tenant, idempotency_key, correlation_id, seq, payload, headers::text
                """, [id, tenant]).rows
            guard let row = rows.first else {
                guard let found = try await connection.query("""
                    SELECT status FROM job_runs WHERE job_id = $1 AND ($2::text IS NULL OR tenant = $2)
                    """, [id, tenant]).rows.first else { return .notFound }
                let status = try found.string(0)
                return status == JobStatus.retrying.rawValue ? .notKept : .notWaiting(status: status)
            }
            guard let tier = Tier(rawValue: try row.string(2)) else { return .notFound }
            let headers = (row[8].flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) } as? [String: String]) ?? [:]
            var job = JobEnvelope(type: try row.string(1), tier: tier, payload: Array(try row.string(7).utf8), tenant: row[3],
                                  idempotencyKey: row[4], correlationID: row[5], enqueuedAt: try row.timestamp(0), id: id,
                                  concurrencyKey: headers[JobEnvelope.Header.concurrencyKey],
                                  concurrencyLimit: headers[JobEnvelope.Header.concurrencyLimit].flatMap { Int($0) } ?? 1)
            job.seq = try row.int(6)
            job.attempt = headers[JobEnvelope.Header.attempt].flatMap { Int($0) } ?? 1
            job.traceparent = headers[JobEnvelope.Header.traceparent]
            try await Outbox.addNext([job], on: connection)
            try await connection.query("""
                INSERT INTO message_logs (job_id, enqueued_at, event, attempt, tier, detail)
                VALUES ($1, $2, 'retried_now', $3, $4, jsonb_build_object('by', $5::text, 'seq', $6::int))
                """, [id, job.enqueuedAt, job.attempt, tier.rawValue, by, job.seq])
            return .entered(job)
        }
    }
}
