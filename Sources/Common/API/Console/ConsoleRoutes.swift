import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import WarrenAuth
import WarrenJobs
import WarrenPostgres
import WarrenResilience
import WarrenStore
import WarrenSupport

/// What the console needs beyond the API: the broker's management API and how long a sign-in
/// lasts (`WARREN_CONSOLE_SESSION_HOURS`, 8).
package struct ConsoleSettings: Sendable {
    package var broker: BrokerStats
    package var sessionTTL: Duration

    package init(broker: BrokerStats, sessionTTL: Duration = .seconds(8 * 3_600)) {
        self.broker = broker
        self.sessionTTL = sessionTTL
    }
}

/// `/console`: the web console, server-rendered HTML (``ConsolePages``). Signed in with a token
/// that has the `console` scope; every page after that is behind ``ConsoleSessionMiddleware``.
/// A token without `admin` sees its own tenant's jobs, batches, schedules and dead letters; each
/// action also needs the scope of the API call it stands for.
extension HTTPAPI {
    func consoleRoutes(_ settings: ConsoleSettings) -> RouteCollection<APIRequestContext> {
        let sessions = ConsoleSessionStore(pool: pool)
        let all = RouteCollection(context: APIRequestContext.self)
        let collection = all.group().add(middleware: ConsoleErrorMiddleware())
        collection.get("assets/console.css") { _, _ in Self.asset(ConsoleAssets.css, type: "text/css; charset=utf-8") }
        collection.get("assets/console.js") { _, _ in Self.asset(ConsoleAssets.js, type: "text/javascript; charset=utf-8") }
        collection.get("login") { request, _ in
            Console.html(.ok, ConsolePages.page("login", title: "Sign in", session: nil,
                                                ["next": Console.localPath(request.uri.queryParameters["next"].map(String.init))]))
        }
        collection.post("login") { request, _ in try await signIn(request, sessions: sessions, settings: settings) }

        let pages = collection.group().add(middleware: ConsoleSessionMiddleware(sessions: sessions, maxBody: 64 << 10, logger: logger))
        pages.post("logout") { request, context in
            if let session = context.session { _ = try? await sessions.close(session.secret) }
            return Console.redirect(to: "/console/login", cookie: Console.sessionCookie("", maxAge: 0, request: request))
        }
        pages.get { request, context in try await overview(request, context, settings) }
        pages.get("live") { _, context in Console.html(.ok, try await live(context, settings)) }
        pages.get("charts") { _, _ in Console.html(.ok, try await charts(settings)) }
        pages.get("jobs") { request, context in try await jobsPage(request, context) }
        pages.get("jobs/:id") { request, context in try await jobPage(request, context) }
        pages.post("jobs/:id/cancel") { _, context in try await cancelFromConsole(context) }
        pages.post("jobs/:id/retry") { _, context in try await retryFromConsole(context) }
        pages.get("batches") { request, context in try await batchesPage(request, context) }
        pages.get("batches/:id") { request, context in try await batchPage(request, context) }
        pages.get("schedules") { request, context in try await schedulesPage(request, context) }
        pages.post("schedules/:id/enable") { _, context in try await setSchedule(context, enabled: true) }
        pages.post("schedules/:id/disable") { _, context in try await setSchedule(context, enabled: false) }
        pages.get("dead") { request, context in try await deadPage(request, context) }
        pages.post("dead/replay") { request, context in try await settleDeadFromConsole(request, context, replay: true) }
        pages.post("dead/discard") { request, context in try await settleDeadFromConsole(request, context, replay: false) }
        return all
    }

    private static func asset(_ text: String, type: String) -> Response {
        Response(status: .ok, headers: [.contentType: type, .cacheControl: "max-age=300"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    // MARK: - Signing in

    private func signIn(_ request: Request, sessions: ConsoleSessionStore, settings: ConsoleSettings) async throws -> Response {
        guard Console.sameOrigin(request) else { return Console.errorPage(.forbidden, "This form was sent from another site; it was refused.") }
        let form = try await Console.form(request, maxBody: 16 << 10)
        let next = Console.localPath(form["next"])
        func refuse(_ message: String, _ status: HTTPResponse.Status = .unauthorized) -> Response {
            Console.html(status, ConsolePages.page("login", title: "Sign in", session: nil, ["error": message, "next": next]))
        }
        guard let text = form["token"]?.trimmingCharacters(in: .whitespacesAndNewlines), !text.isEmpty else {
            return refuse("Paste a token.", .unprocessableContent)
        }
        let checked: Result<APIToken, TokenRejection>
        do { checked = try await tokens.check(text) } catch { return refuse("The database is unavailable right now; try again.", .serviceUnavailable) }
        switch checked {
        case .failure(.unknown): return refuse("Unknown token.")
        case .failure(.expired): return refuse("This token has expired.")
        case .failure(.revoked): return refuse("This token was revoked.")
        case .success(let token):
            guard token.allows(.console) else { return refuse("This token lacks the 'console' scope.", .forbidden) }
            let session: ConsoleSessionStore.Session
            do { session = try await sessions.open(for: token, ttl: settings.sessionTTL) } catch {
                return refuse("The database is unavailable right now; try again.", .serviceUnavailable)
            }
            let seconds = max(1, Int((session.expiresAt.microseconds - Timestamp.now().microseconds) / 1_000_000))
            logger.info("console: signed in", metadata: ["tenant": "\(token.tenant)", "token": "\(token.prefix)"])
            return Console.redirect(to: next, cookie: Console.sessionCookie(session.secret, maxAge: seconds, request: request))
        }
    }

    // MARK: - Overview

    private func overview(_ request: Request, _ context: APIRequestContext, _ settings: ConsoleSettings) async throws -> Response {
        let session = try context.consoleSession()
        let live = try await live(context, settings)
        let charts = try await charts(settings)
        return Console.html(.ok, ConsolePages.page("overview", title: "Overview", session: session.layout,
                                                   notice: request.uri.queryParameters["notice"].map(String.init),
                                                   ["live": live, "charts": charts]))
    }

    /// The live part of the overview: per tier, what the broker holds, the start latency the
    /// consumers report, whether intake is shed, what is dead; then the consumers.
    private func live(_ context: APIRequestContext, _ settings: ConsoleSettings) async throws -> String {
        let session = try context.consoleSession()
        async let brokerFigures = Self.attempt { try await settings.broker.tiers(history: false) }
        async let brokerConsumers = Self.attempt { try await settings.broker.consumers() }
        let dead = (try? await ConsoleStore(pool: pool).deadCounts(tenant: session.visibleTenant)) ?? [:]
        let (figures, consumers) = await (brokerFigures, brokerConsumers)
        let now = Timestamp.now().microseconds / 1_000
        let latency = pressure?.latency
        let statuses = pressure?.consumers ?? []
        var tiers: [[String: Any]] = []
        for tier in Tier.allCases {
            var row: [String: Any] = ["name": tier.rawValue, "dead": String(dead[tier.rawValue] ?? 0), "has_dead": (dead[tier.rawValue] ?? 0) > 0,
                                      "ready": "–", "unacked": "–", "consumers": "–", "publish": "–", "ack": "–"]
            if let figure = (try? figures.get())?[tier] {
                row["ready"] = String(figure.ready)
                row["unacked"] = String(figure.unacked)
                row["consumers"] = String(figure.consumers)
                row["publish"] = Self.rate(figure.publishRate)
                row["ack"] = Self.rate(figure.ackRate)
            }
            if let current = latency?.current(tier, now: now) {
                row["p50"] = "\(current.p50) ms"
                row["p99"] = "\(current.p99) ms"
            } else {
                row["p50"] = "idle"
                row["p99"] = "idle"
            }
            row["target"] = pressure?.latencyTargets?.targets[tier].map { "\($0.milliseconds) ms" } ?? "–"
            let breakers = Set(statuses.filter { $0.tiers.contains(tier) }.flatMap(\.openBreakers)).sorted()
            if !breakers.isEmpty { row["breakers"] = breakers.joined(separator: ", ") }
            if let reason = pressure?.shedReason(tier) { row["shedding"] = reason.rawValue }
            tiers.append(row)
        }
        let reports = latency?.recentReports(now: now) ?? []
        let known = Dictionary(statuses.map { ($0.consumerID, $0) }) { first, _ in first }
        // Consumers as they say they are (every 2 s, busy or idle), with what the broker lists
        // of their subscriptions; one the broker lists that sends no status (an older version)
        // is shown from the broker's side alone. (The broker's list lags: a pool that just
        // subscribed again with a new prefetch may be missing from it for a few seconds.)
        let subscribed = (try? consumers.get()) ?? []
        func id(_ connection: String) -> String {
            connection.hasPrefix("consumer ") ? String(connection.dropFirst("consumer ".count)) : connection
        }
        var consumerRows: [[String: Any]] = []
        for status in statuses {
            let lanes = subscribed.filter { id($0.connection) == status.consumerID }.reduce(0) { $0 + $1.lanes }
            let own = reports.filter { $0.consumerID == status.consumerID }
            var row: [String: Any] = [
                "connection": "consumer \(status.consumerID)", "tier": status.tiers.map(\.rawValue).joined(separator: ", "),
                "lanes": lanes > 0 ? String(lanes) : "–", "prefetch": String(status.prefetch),
                "concurrency": "\(status.concurrency) of \(status.configuredConcurrency)", "in_flight": String(status.inFlight),
                "p99": own.isEmpty ? "idle" : own.map { "\($0.tier.rawValue) \($0.p99Milliseconds) ms" }.joined(separator: ", "),
                "saturated": own.isEmpty ? "–" : own.contains { $0.saturated } ? "yes" : "no",
            ]
            if !status.openBreakers.isEmpty { row["breakers"] = status.openBreakers.joined(separator: ", ") }
            consumerRows.append(row)
        }
        for consumer in subscribed where known[id(consumer.connection)] == nil {
            consumerRows.append(["connection": consumer.connection, "tier": consumer.tier.rawValue, "lanes": String(consumer.lanes),
                                 "prefetch": String(consumer.prefetch), "concurrency": "–", "in_flight": "–", "p99": "–", "saturated": "–"])
        }
        var data: [String: Any] = ["tiers": tiers, "consumers": consumerRows, "has_consumers": !consumerRows.isEmpty,
                                   "updated": Self.time(Timestamp.now())]
        if case .failure(let error) = figures { data["broker_error"] = "\(error)" }
        return ConsolePages.render("live", data)
    }

    /// The overview's charts: per tier, publish and finish rates and ready messages (the
    /// broker's samples), and start latency p50/p99 (the consumers' reports), over the last hour.
    private func charts(_ settings: ConsoleSettings) async throws -> String {
        let now = Timestamp.now().microseconds / 1_000
        let from = now - 3_600_000
        let answer = await Self.attempt { try await settings.broker.tiers(history: true) }
        let figures = (try? answer.get()) ?? [:]
        let latency = pressure?.latency
        var charts: [[String: Any]] = []
        for tier in Tier.allCases {
            let samples = figures[tier]?.samples ?? []
            charts.append(["svg": Chart.svg(title: "\(tier.rawValue): jobs per second", unit: "", series: [
                .init(label: "published", color: "#2458c6", points: samples.map { ($0.time, $0.publishRate) }),
                .init(label: "finished", color: "#1e7d3a", points: samples.map { ($0.time, $0.ackRate) }),
            ], from: from, to: now)])
            let minutes = latency?.series(tier, now: now) ?? []
            charts.append(["svg": Chart.svg(title: "\(tier.rawValue): start latency", unit: " ms", series: [
                .init(label: "p50", color: "#2458c6", points: minutes.map { ($0.minute * 60_000 + 30_000, Double($0.p50)) }),
                .init(label: "p99", color: "#b3261e", points: minutes.map { ($0.minute * 60_000 + 30_000, Double($0.p99)) }),
            ], from: from, to: now)])
            charts.append(["svg": Chart.svg(title: "\(tier.rawValue): messages in the queues", unit: "", series: [
                .init(label: "ready", color: "#8a5a00", points: samples.map { ($0.time, Double($0.ready)) }),
                .init(label: "unacked", color: "#6b3fa0", points: samples.map { ($0.time, Double($0.unacked)) }),
            ], from: from, to: now)])
        }
        var data: [String: Any] = ["charts": charts]
        if case .failure(let error) = answer {
            logger.warning("console: cannot read the broker's samples", metadata: ["error": "\(error)"])
            data["broker_error"] = "\(error)"
        }
        return ConsolePages.render("charts", data)
    }

    // MARK: - Jobs

    private func jobsPage(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let session = try context.consoleSession()
        let query = request.uri.queryParameters
        func value(_ name: String) -> String? {
            query[Substring(name)].map(String.init).flatMap { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0.trimmingCharacters(in: .whitespaces) }
        }
        let hours = value("hours").flatMap(Int.init).flatMap { [1, 6, 24, 168, 720].contains($0) ? $0 : nil } ?? 24
        var error: String?
        var filter = ConsoleStore.JobFilter(since: Timestamp(microseconds: Timestamp.now().microseconds - Int64(hours) * 3_600_000_000))
        if let id = value("id") {
            if let uuid = UUID(uuidString: id) { filter.id = uuid } else { error = "'\(id)' is not a job id." }
        }
        filter.type = value("type")
        filter.tier = value("tier").flatMap(Tier.init(rawValue:))
        filter.status = value("status").flatMap { ConsoleStore.statuses.contains($0) ? $0 : nil }
        filter.tenant = session.admin ? value("tenant") : session.token.tenant
        // One id is looked up whenever it was enqueued.
        if let id = filter.id, error == nil, let job = try await consoleStore({ try await ConsoleStore(pool: pool).job(id, tenant: session.visibleTenant) }) {
            return Console.redirect(to: "/console/jobs/\(job.id.lowercasedString)")
        }
        let jobs = error == nil ? try await consoleStore { try await ConsoleStore(pool: pool).jobs(filter) } : []
        var data: [String: Any] = [
            "admin": session.admin,
            "filter": ["id": value("id") ?? "", "type": filter.type ?? "", "tenant": session.admin ? (filter.tenant ?? "") : ""],
            "tiers": Tier.allCases.map { ["name": $0.rawValue, "selected": $0 == filter.tier] },
            "statuses": ConsoleStore.statuses.map { ["name": $0, "selected": $0 == filter.status] },
            "windows": [(1, "hour"), (6, "6 hours"), (24, "day"), (168, "week"), (720, "30 days")].map {
                ["hours": $0.0, "label": $0.1, "selected": $0.0 == hours]
            },
            "jobs": jobs.map(Self.jobRow),
        ]
        if let error { data["error"] = error }
        return Console.html(.ok, ConsolePages.page("jobs", title: "Jobs", session: session.layout, data))
    }

    private func jobPage(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let session = try context.consoleSession()
        guard let id = context.parameters.get("id").flatMap(UUID.init(uuidString:)),
              let job = try await consoleStore({ try await ConsoleStore(pool: pool).job(id, tenant: session.visibleTenant) }) else {
            return Console.errorPage(.notFound, "No such job (or not one of your tenant's).")
        }
        let store = ConsoleStore(pool: pool)
        let (events, payload, deadLetter) = try await consoleStore {
            (try await store.timeline(of: id), try await store.payload(of: id), try await store.openDeadLetter(of: id))
        }
        let progress = try await consoleStore { try await pool.query("""
            SELECT done, total, message FROM job_progress WHERE job_id = $1
            """, [id]).rows.first }
        var row = Self.jobRow(job)
        if let result = job.result { row["result"] = result }
        var data: [String: Any] = [
            "job": row,
            "csrf": session.csrf,
            "events": events.map { ["at": Self.time($0.at, fraction: true), "event": $0.event, "attempt": $0.attempt.map(String.init) ?? "",
                                    "detail": $0.detail ?? ""] },
            "can_cancel": ["scheduled", "queued", "running", "retrying"].contains(job.status) && session.token.allows(.jobsWrite),
        ]
        if let payload { data["payload"] = payload }
        // Retry now: a dead job through its dead letter, one waiting between retries through its kept message.
        if deadLetter != nil && session.token.allows(.deadWrite) || job.status == JobStatus.retrying.rawValue && session.token.allows(.jobsWrite) {
            data["can_retry"] = true
        }
        if let progress, let done = progress[0].flatMap({ Int64($0) }) {
            let total = progress[1].flatMap { Int64($0) }
            var shown: [String: Any] = ["done": done, "message": progress[2] ?? "", "percent": total.map { $0 > 0 ? Int(done * 100 / $0) : 0 } ?? 0]
            if let total { shown["total"] = total }
            data["progress"] = shown
        }
        return Console.html(.ok, ConsolePages.page("job", title: "Job", session: session.layout,
                                                   notice: request.uri.queryParameters["notice"].map(String.init), data))
    }

    private func cancelFromConsole(_ context: APIRequestContext) async throws -> Response {
        let session = try context.consoleSession()
        guard let id = context.parameters.get("id").flatMap(UUID.init(uuidString:)) else { return Console.errorPage(.notFound, "No such job.") }
        let back = "/console/jobs/\(id.lowercasedString)"
        guard session.token.allows(.jobsWrite) else { return Self.back(back, "This token lacks the 'jobs:write' scope: nothing was cancelled.") }
        guard let job = try await consoleStore({ try await ConsoleStore(pool: pool).job(id, tenant: session.visibleTenant) }),
              let tenant = job.tenant else {
            return Self.back(back, "Only jobs accepted by the HTTP API can be cancelled here.")
        }
        do {
            let cancelled = try await cancel(id, tenant: tenant)
            logger.info("console: job cancelled", metadata: ["job_id": "\(id.lowercasedString)", "token": "\(session.token.prefix)"])
            return Self.back(back, cancelled.status == "running" ? "Cancellation signalled to the running job." : "Cancelled: it will not run.")
        } catch {
            return Self.back(back, "Not cancelled: \(error.message)")
        }
    }

    /// "Retry now": a job waiting between retries is sent on at once (``retryNow(_:tenant:by:)``);
    /// a dead one has its open dead letter replayed (``replayDead(_:resetAttempts:by:limit:)``).
    private func retryFromConsole(_ context: APIRequestContext) async throws -> Response {
        let session = try context.consoleSession()
        guard let id = context.parameters.get("id").flatMap(UUID.init(uuidString:)) else { return Console.errorPage(.notFound, "No such job.") }
        let back = "/console/jobs/\(id.lowercasedString)"
        guard let job = try await consoleStore({ try await ConsoleStore(pool: pool).job(id, tenant: session.visibleTenant) }) else {
            return Console.errorPage(.notFound, "No such job (or not one of your tenant's).")
        }
        if job.status == JobStatus.retrying.rawValue {
            guard session.token.allows(.jobsWrite) else { return Self.back(back, "This token lacks the 'jobs:write' scope: nothing was sent.") }
            do {
                let retried = try await retryNow(id, tenant: session.visibleTenant, by: "console \(session.token.prefix)")
                return Self.back(back, "Attempt \(retried.attempt) sent on now; the copy waiting in the delay queue will not run.")
            } catch {
                return Self.back(back, "Not sent: \(error.message)")
            }
        }
        guard session.token.allows(.deadWrite) else { return Self.back(back, "This token lacks the 'dead:write' scope: nothing was replayed.") }
        guard let deadID = try await consoleStore({ try await ConsoleStore(pool: pool).openDeadLetter(of: id) }) else {
            return Self.back(back, "This job has no open dead letter to replay.")
        }
        let replayed = try await replayDead(.init(ids: [deadID], tenant: session.visibleTenant), by: "console \(session.token.prefix)", limit: 1)
        return Self.back(back, replayed.replayed == 1 ? "Replayed: the job is queued again." : "Nothing was replayed (already settled).")
    }

    // MARK: - Batches

    private func batchesPage(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let session = try context.consoleSession()
        let batches = try await consoleStore { try await ConsoleStore(pool: pool).batches(tenant: session.visibleTenant) }
        let rows: [[String: Any]] = batches.map {
            ["id": $0.id.lowercasedString, "tenant": $0.tenant, "tier": $0.tier, "total": $0.total, "finished": $0.finished,
             "failed": $0.failed, "created": Self.time($0.createdAt), "completed": $0.completedAt.map { Self.time($0) } ?? ""]
        }
        return Console.html(.ok, ConsolePages.page("batches", title: "Batches", session: session.layout, ["batches": rows]))
    }

    private func batchPage(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let session = try context.consoleSession()
        let store = ConsoleStore(pool: pool)
        guard let id = context.parameters.get("id").flatMap(UUID.init(uuidString:)),
              let tenant = try await consoleStore({ try await store.batchTenant(id) }), session.visibleTenant == nil || session.visibleTenant == tenant,
              let summary = try await consoleStore({ try await batches.summary(of: id, tenant: tenant) }) else {
            return Console.errorPage(.notFound, "No such batch (or not one of your tenant's).")
        }
        var data: [String: Any] = [
            "id": id.lowercasedString, "total": summary.total, "finished": summary.finished,
            "counts": summary.counts.filter { $0.value > 0 }.sorted { $0.key < $1.key }.map { ["status": $0.key, "count": $0.value] },
            "errors": summary.errors.map { ["message": $0.message, "count": $0.count, "jobs": $0.jobIDs.map(\.lowercasedString)] },
        ]
        if let completed = summary.completedAt { data["completed"] = Self.time(completed) }
        if let type = summary.onCompleteType {
            data["on_complete"] = type
            if let job = summary.onCompleteJobID { data["on_complete_job"] = job.lowercasedString }
        }
        return Console.html(.ok, ConsolePages.page("batch", title: "Batch", session: session.layout, data))
    }

    // MARK: - Schedules

    private func schedulesPage(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let session = try context.consoleSession()
        let list = try await consoleStore { try await schedules.list(tenant: session.visibleTenant) }
        let now = Timestamp.now().microseconds / 1_000_000
        let rows: [[String: Any]] = list.map { schedule in
            let cron = try? CronSchedule(schedule.cron, zone: schedule.timeZone)
            let next = schedule.enabled ? (cron?.fires(after: now, count: 3) ?? []) : []
            var row: [String: Any] = ["id": schedule.id.lowercasedString, "name": schedule.name, "tenant": schedule.tenant, "cron": schedule.cron,
                                      "zone": schedule.timeZone, "type": schedule.jobType, "enabled": schedule.enabled,
                                      "next": next.map { instant in cron.map { WallClock.iso8601(instant, in: $0.zone).replacingOccurrences(of: "T", with: " ") } ?? "" },
                                      "csrf": session.csrf]
            if let reason = schedule.disabledReason { row["reason"] = reason }
            return row
        }
        return Console.html(.ok, ConsolePages.page("schedules", title: "Schedules", session: session.layout,
                                                   notice: request.uri.queryParameters["notice"].map(String.init), ["schedules": rows]))
    }

    private func setSchedule(_ context: APIRequestContext, enabled: Bool) async throws -> Response {
        let session = try context.consoleSession()
        let back = "/console/schedules"
        guard session.token.allows(.schedulesWrite) else { return Self.back(back, "This token lacks the 'schedules:write' scope: nothing changed.") }
        guard let id = context.parameters.get("id").flatMap(UUID.init(uuidString:)),
              let owner = try await consoleStore({ try await ConsoleStore(pool: pool).scheduleName(id) }),
              session.visibleTenant == nil || session.visibleTenant == owner.tenant,
              let schedule = try await consoleStore({ try await schedules.get(tenant: owner.tenant, name: owner.name) }) else {
            return Self.back(back, "No such schedule.")
        }
        _ = try await consoleStore {
            try await schedules.put(tenant: schedule.tenant, name: schedule.name, cron: schedule.cron, timeZone: schedule.timeZone,
                                    jobType: schedule.jobType, tier: schedule.tier, payload: schedule.payload, enabled: enabled,
                                    catchUpSeconds: schedule.catchUpSeconds, now: .now())
        }
        logger.info("console: schedule \(enabled ? "enabled" : "disabled")", metadata: ["schedule": "\(schedule.name)", "tenant": "\(schedule.tenant)"])
        return Self.back(back, "\(schedule.name) is \(enabled ? "enabled" : "disabled").")
    }

    // MARK: - Dead letters

    private func deadPage(_ request: Request, _ context: APIRequestContext) async throws -> Response {
        let session = try context.consoleSession()
        let query = request.uri.queryParameters
        let reason = query["reason"].map(String.init).flatMap { $0.isEmpty ? nil : $0 }
        let tier = query["tier"].flatMap { Tier(rawValue: String($0)) }
        let store = DeadLetterStore(pool: pool)
        let (reasons, dead) = try await consoleStore {
            (try await store.countByReason(.init(tenant: session.visibleTenant)),
             try await store.list(.init(reason: reason, tenant: session.visibleTenant, tier: tier), limit: 200))
        }
        var title: [String] = []
        if let reason { title.append("reason \(reason)") }
        if let tier { title.append("tier \(tier.rawValue)") }
        var data: [String: Any] = [
            "csrf": session.csrf,
            "reasons": reasons.map { ["reason": $0.reason, "count": $0.count, "csrf": session.csrf] },
            "dead": dead.reversed().map { letter -> [String: Any] in
                var row: [String: Any] = ["id": letter.id, "type": letter.type ?? "", "tier": letter.tier ?? "", "tenant": letter.tenant ?? "",
                                          "reason": letter.reason, "error": letter.error ?? "", "at": Self.time(letter.deadAt),
                                          "replayable": letter.replayable]
                if let job = letter.jobID { row["job"] = job.lowercasedString }
                return row
            },
        ]
        if !title.isEmpty { data["filter"] = "Open dead letters, " + title.joined(separator: ", ") }
        return Console.html(.ok, ConsolePages.page("dead", title: "Dead letters", session: session.layout,
                                                   notice: query["notice"].map(String.init), data))
    }

    /// Replay or discard from the dead-letter page: the ids ticked, or every open one of a reason.
    private func settleDeadFromConsole(_ request: Request, _ context: APIRequestContext, replay: Bool) async throws -> Response {
        let session = try context.consoleSession()
        let back = "/console/dead"
        guard session.token.allows(.deadWrite) else { return Self.back(back, "This token lacks the 'dead:write' scope: nothing changed.") }
        let form = try await Console.form(request, maxBody: 64 << 10)
        let ids = form.all("ids").compactMap { Int64($0) }
        let reason = form["reason"].flatMap { $0.isEmpty ? nil : $0 }
        guard !ids.isEmpty || reason != nil else { return Self.back(back, "Select dead letters first.") }
        let filter = DeadLetterStore.Filter(ids: ids.isEmpty ? nil : ids, reason: ids.isEmpty ? reason : nil, tenant: session.visibleTenant)
        let by = "console \(session.token.prefix)"
        if replay {
            let replayed = try await replayDead(filter, by: by, limit: Self.maxDeadSettle)
            return Self.back(back, "Replayed \(replayed.replayed) dead letter\(replayed.replayed == 1 ? "" : "s").")
        }
        let discarded = try await consoleStore { try await DeadLetterStore(pool: pool).discard(filter, by: by, limit: Self.maxDeadSettle) }
        return Self.back(back, "Discarded \(discarded.count) dead letter\(discarded.count == 1 ? "" : "s").")
    }

    // MARK: - Helpers

    /// A database call for a page: a failure is the API's 503, which ``ConsoleErrorMiddleware``
    /// renders as a page.
    private func consoleStore<T>(_ body: () async throws -> T) async throws -> T {
        try await database(message: "the database is unavailable right now; reload in a moment", body)
    }

    private static func attempt<T: Sendable>(_ body: () async throws -> T) async -> Result<T, any Error> {
        do { return .success(try await body()) } catch { return .failure(error) }
    }

    private static func back(_ path: String, _ notice: String) -> Response {
        Console.redirect(to: "\(path)?notice=\(Console.queryEscaped(notice))")
    }

    /// A job's fields for a template; absent ones are left out, so a section on them is skipped.
    static func jobRow(_ job: ConsoleStore.Job) -> [String: Any] {
        var row: [String: Any] = [
            "id": job.id.lowercasedString, "type": job.type, "tier": job.tier, "tenant": job.tenant ?? "", "status": job.status,
            "attempts": job.attempts, "enqueued": time(job.enqueuedAt, fraction: true), "started": job.startedAt.map { time($0, fraction: true) } ?? "",
            "finished": job.finishedAt.map { time($0, fraction: true) } ?? "",
        ]
        if let error = job.error { row["error"] = error }
        if let batch = job.batchID { row["batch"] = batch.lowercasedString }
        return row
    }

    /// `2026-12-07 21:44:17` (UTC), with milliseconds when `fraction`.
    static func time(_ timestamp: Timestamp, fraction: Bool = false) -> String {
        let text = timestamp.iso8601.replacingOccurrences(of: "T", with: " ")
        return String(text.prefix(fraction ? 23 : 19))
    }

    static func rate(_ value: Double) -> String {
        value >= 100 ? String(Int(value.rounded())) : String(format: "%.1f", value)
    }
}

extension APIRequestContext {
    /// The console session (every page route sits behind ``ConsoleSessionMiddleware``).
    func consoleSession() throws(APIError) -> ConsoleSessionView {
        guard let session else { throw APIError(.internalServerError, "internal", "console page served without a session") }
        return ConsoleSessionView(session: session)
    }
}

/// A signed-in session as the pages use it.
struct ConsoleSessionView {
    let session: ConsoleSessionStore.Session
    var token: APIToken { session.token }
    var csrf: String { session.csrf }
    var admin: Bool { token.allows(.admin) }
    /// Whose rows the pages show: nil (everyone's) for an admin.
    var visibleTenant: String? { admin ? nil : token.tenant }
    var layout: (tenant: String, prefix: String, csrf: String, admin: Bool) { (token.tenant, token.prefix, csrf, admin) }
}
