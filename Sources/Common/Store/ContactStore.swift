import Foundation
import WarrenJobs
import WarrenPostgres
import WarrenSupport

/// Contacts (`contacts`), their yearly events (`contact_events`, indexed by zone, kind and day
/// of the year), the per-zone progress of sending them (`contact_cursors`) and one row per
/// message (`contact_fires`, whose primary key is the fire key).
package struct ContactStore: Sendable {
    package let pool: PostgresPool

    package init(pool: PostgresPool) { self.pool = pool }

    static let columns = "id, tenant, tier, first_name, last_name, email, birthday, anniversary, time_zone"

    static func contact(_ row: PostgresRow, at offset: Int = 0) throws -> Contact {
        guard let tier = Tier(rawValue: try row.string(offset + 2)) else {
            throw PostgresError(.decoding, function: "contacts.tier", message: "unknown tier")
        }
        return Contact(id: try row.uuid(offset), tenant: try row.string(offset + 1), tier: tier, firstName: try row.string(offset + 3),
                       lastName: try row.string(offset + 4), email: try row.string(offset + 5), birthday: try row.date(offset + 6),
                       anniversary: row[offset + 7] == nil ? nil : try row.date(offset + 7), timeZone: try row.string(offset + 8))
    }

    // MARK: - Contacts

    /// Adds a contact.
    package func create(_ contact: Contact) async throws {
        try await pool.withTransaction { connection in
            try await connection.query("""
                INSERT INTO contacts (\(Self.columns)) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                """, Self.values(contact))
            try await Self.writeEvents(of: contact, on: connection)
        }
    }

    /// Replaces the tenant's contact with `contact.id` (its tier stays); false when there is
    /// none. Its events move with it: a new date or zone counts from the next time it is due,
    /// which can be today.
    package func replace(_ contact: Contact) async throws -> Contact? {
        try await pool.withTransaction { connection in
            guard let previous = try await connection.query(
                "SELECT time_zone FROM contacts WHERE id = $1 AND tenant = $2 FOR UPDATE", [contact.id, contact.tenant]).rows.first
            else { return nil }
            let rows = try await connection.query("""
                UPDATE contacts SET first_name = $3, last_name = $4, email = $5, birthday = $6, anniversary = $7,
                                    time_zone = $8, updated_at = now()
                WHERE id = $1 AND tenant = $2
                RETURNING \(Self.columns)
                """, [contact.id, contact.tenant, contact.firstName, contact.lastName, contact.email, contact.birthday,
                      contact.anniversary, contact.timeZone]).rows
            guard let row = rows.first else { return nil }
            let stored = try Self.contact(row)
            try await connection.query("DELETE FROM contact_events WHERE contact_id = $1", [contact.id])
            try await Self.writeEvents(of: stored, on: connection, movedFrom: try previous.string(0))
            return stored
        }
    }

    /// Deletes the tenant's contact, its events and its fire rows: no message is sent for it
    /// afterwards. False when there was none.
    package func delete(id: UUID, tenant: String) async throws -> Bool {
        !(try await pool.query("DELETE FROM contacts WHERE id = $1 AND tenant = $2 RETURNING id", [id, tenant]).rows.isEmpty)
    }

    package func get(id: UUID, tenant: String) async throws -> Contact? {
        try await pool.query("SELECT \(Self.columns) FROM contacts WHERE id = $1 AND tenant = $2", [id, tenant]).rows
            .first.map { try Self.contact($0) }
    }

    /// The tenant's contacts in id order, `limit` at a time after `after` (keyset pages).
    package func list(tenant: String, after: UUID?, limit: Int) async throws -> [Contact] {
        try await pool.query("""
            SELECT \(Self.columns) FROM contacts WHERE tenant = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3
            """, [tenant, after, limit]).rows.map { try Self.contact($0) }
    }

    private static func values(_ contact: Contact) -> [any PostgresEncodable] {
        [contact.id, contact.tenant, contact.tier.rawValue, contact.firstName, contact.lastName, contact.email, contact.birthday,
         contact.anniversary, contact.timeZone]
    }

    /// One `contact_events` row per kind the contact has a date for, and a cursor for each
    /// zone and kind in use. The cursor steps back to the zone's yesterday at most (or starts
    /// there), so today is looked at again: a contact added or changed after today's send time
    /// gets today's message at once, and those already sent today keep their fire keys. Its
    /// version goes up, so a leader sending that zone's day right now looks again. A contact
    /// moved from another zone steps back to the earlier of the two zones' yesterdays (moving
    /// to a zone already on the next day must not skip the day).
    private static func writeEvents(of contact: Contact, on connection: PostgresConnection, movedFrom previousZone: String? = nil) async throws {
        let events = ContactEvents.all.compactMap { kind in kind.date(of: contact).map { (kind.kind, ContactEvents.monthDay($0)) } }
        guard !events.isEmpty else { return }
        try await connection.query("""
            INSERT INTO contact_events (contact_id, kind, time_zone, month_day)
            SELECT $1, kind, $2, month_day FROM unnest($3::text[], $4::smallint[]) AS e(kind, month_day)
            """, [contact.id, contact.timeZone, PostgresArray(events.map(\.0)), PostgresArray(events.map(\.1))])
        let now = Timestamp.now().microseconds.floorDiv(1_000_000)
        func yesterday(_ identifier: String) throws -> CivilDate {
            WallClock.date(at: now, in: try CronSchedule.zone(identifier)).adding(days: -1)
        }
        var from = try yesterday(contact.timeZone)
        if let previousZone, previousZone != contact.timeZone, let previous = try? yesterday(previousZone) { from = min(from, previous) }
        try await connection.query("""
            INSERT INTO contact_cursors (time_zone, kind, done_through) SELECT $1, kind, $3 FROM unnest($2::text[]) AS k(kind)
            ON CONFLICT (time_zone, kind) DO UPDATE
                SET done_through = least(contact_cursors.done_through, EXCLUDED.done_through), version = contact_cursors.version + 1
            """, [contact.timeZone, PostgresArray(events.map(\.0)), from])
    }

    // MARK: - Sending

    /// How far one zone has got with one kind of event.
    package struct Cursor: Sendable, Equatable {
        package var timeZone: String
        package var kind: String
        /// The last local date whose events were handled; nil before the first.
        package var doneThrough: CivilDate?
        /// Bumped by contact writes; ``advance(_:to:)`` moves only an unchanged cursor.
        package var version: Int
    }

    package func cursors() async throws -> [Cursor] {
        try await pool.query("SELECT time_zone, kind, done_through, version FROM contact_cursors ORDER BY time_zone, kind").rows.map { row in
            Cursor(timeZone: try row.string(0), kind: try row.string(1), doneThrough: row[2] == nil ? nil : try row.date(2),
                   version: try row.int(3))
        }
    }

    /// Marks `day` handled, unless a contact write came in since `cursor` was read (then the
    /// cursor is left for the next round to read again, and false is returned).
    package func advance(_ cursor: Cursor, to day: CivilDate) async throws -> Bool {
        try await pool.query("UPDATE contact_cursors SET done_through = $3 WHERE time_zone = $1 AND kind = $2 AND version = $4",
                             [cursor.timeZone, cursor.kind, day, cursor.version]).affectedRows == 1
    }

    /// A message claimed under its fire key, to publish.
    package struct Fire: Sendable {
        package var contactID: UUID
        package var kind: String
        package var localDate: CivilDate
        package var job: JobEnvelope
    }

    /// The fire key, which the job's idempotency key is: `contact:<id>:<kind>:<local date>`.
    package static func key(contact: UUID, kind: String, on day: CivilDate) -> String {
        "contact:\(contact.lowercasedString):\(kind):\(day)"
    }

    /// Claims up to `limit` messages of `kind` due in `zone` on the local date `day` that have
    /// no fire row yet: one index range of `contact_events` (the date, and 29 February on 28
    /// February of other years), each written under its fire key, with its outbox entry, before it is returned
    /// (a key already there means it was sent). `selected` below `limit` means the day is done.
    /// (The contacts are key-share locked, so one deleted meanwhile waits for the commit.)
    package func claim(_ kind: any ContactEventKind, zone: String, on day: CivilDate,
                       limit: Int = 5_000) async throws -> (fires: [Fire], selected: Int) {
        try await pool.withTransaction { connection in
            let due = try await connection.query("""
                SELECT \(Self.columns.split(separator: ",").map { "c." + $0.trimmingCharacters(in: .whitespaces) }.joined(separator: ", "))
                FROM contact_events e JOIN contacts c ON c.id = e.contact_id
                WHERE e.time_zone = $1 AND e.kind = $2 AND e.month_day = ANY($3::smallint[])
                  AND NOT EXISTS (SELECT 1 FROM contact_fires f
                                  WHERE f.contact_id = e.contact_id AND f.kind = e.kind AND f.local_date = $4)
                LIMIT $5
                FOR KEY SHARE OF c
                """, [zone, kind.kind, PostgresArray(ContactEvents.monthDays(fallingOn: day)), day, limit]).rows
                .map { try Self.contact($0) }
            guard !due.isEmpty else { return ([], 0) }
            let enqueuedAt = Timestamp.now()
            var fires: [UUID: Fire] = [:]
            for contact in due {
                let job = JobEnvelope(type: JobTypes.messageSend, tier: contact.tier, payload: Array(kind.payload(for: contact, on: day).utf8),
                                      tenant: contact.tenant, idempotencyKey: Self.key(contact: contact.id, kind: kind.kind, on: day),
                                      enqueuedAt: enqueuedAt)
                fires[contact.id] = Fire(contactID: contact.id, kind: kind.kind, localDate: day, job: job)
            }
            let values = Array(fires.values)
            let inserted = try await connection.query("""
                INSERT INTO contact_fires (contact_id, kind, local_date, job_id, tenant, tier, payload, state, created_at)
                SELECT contact_id, $1, $2, job_id, tenant, tier, payload, 'fired', $8
                FROM unnest($3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[]) AS f(contact_id, job_id, tenant, tier, payload)
                ON CONFLICT DO NOTHING
                RETURNING contact_id
                """, [kind.kind, day, PostgresArray(values.map(\.contactID)), PostgresArray(values.map(\.job.id)),
                      PostgresArray(values.map { $0.job.tenant ?? "" }), PostgresArray(values.map(\.job.tier.rawValue)),
                      PostgresArray(values.map { String(decoding: $0.job.payload, as: UTF8.self) }), enqueuedAt]).rows
            let claimed = try inserted.compactMap { fires[try $0.uuid(0)] }
            try await Outbox.add(claimed.map(\.job), on: connection)
            return (claimed, due.count)
        }
    }

    /// Deletes fire rows older than `days` plus two (a contact moved across the date line can
    /// meet the same local date a day later; its key must still be there).
    @discardableResult
    package func prune(olderThanDays days: Int) async throws -> Int {
        try await pool.query("""
            DELETE FROM contact_fires WHERE state IN ('published', 'fired') AND created_at < now() - make_interval(days => $1 + 2)
            """, [days]).affectedRows
    }
}
