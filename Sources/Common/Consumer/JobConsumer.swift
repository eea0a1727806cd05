import CoreMetrics
import Foundation
import Logging
import Metrics
import Synchronization
import Tracing
import WarrenObservability
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenResilience
import WarrenStore
import WarrenSupport

/// The consumer's metrics, created once (swift-metrics lookups are not free per job).
package struct ConsumerMetrics: Sendable {
    let outcomes: [String: Counter]
    let duration: Metrics.Timer
    let batchRows: Recorder
    let writeDuration: Metrics.Timer
    let writeFailures: Counter
    let inFlight: Gauge
    /// Enqueued-at to the start of work, of first deliveries (a retry's, a deferral's, a key's
    /// or a rate limit's wait is its own) ...
    let startLatency: Metrics.Timer
    /// ... and its first part: enqueued-at to the delivery read off the connection (publisher,
    /// broker, network, and the connection thread's wait for a core); the rest is the
    /// consumer's own (inbox, a free slot).
    let deliveryLatency: Metrics.Timer

    static let outcomeNames = ["succeeded", "retried", "deferred", "failed", "dead", "cancelled", "duplicate", "malformed", "handed_back",
                               "unstorable", "abandoned"]

    package init(tier: Tier) {
        let tierDimension = ("tier", tier.rawValue)
        var outcomes: [String: Counter] = [:]
        for name in Self.outcomeNames {
            outcomes[name] = Counter(label: "warren_consumer_jobs_total", dimensions: [tierDimension, ("outcome", name)])
        }
        self.outcomes = outcomes
        duration = Metrics.Timer(label: "warren_consumer_job_duration_seconds", dimensions: [tierDimension], preferredDisplayUnit: .seconds)
        batchRows = Recorder(label: "warren_consumer_batch_rows", dimensions: [tierDimension])
        writeDuration = Metrics.Timer(label: "warren_consumer_batch_write_seconds", dimensions: [tierDimension], preferredDisplayUnit: .seconds)
        writeFailures = Counter(label: "warren_consumer_batch_write_failures_total", dimensions: [tierDimension])
        inFlight = Gauge(label: "warren_consumer_jobs_in_flight", dimensions: [tierDimension])
        startLatency = Metrics.Timer(label: Self.startLatencyLabel, dimensions: [tierDimension], preferredDisplayUnit: .seconds)
        deliveryLatency = Metrics.Timer(label: Self.deliveryLatencyLabel, dimensions: [tierDimension], preferredDisplayUnit: .seconds)
    }

    package static let startLatencyLabel = "warren_consumer_start_latency_seconds"
    package static let deliveryLatencyLabel = "warren_consumer_delivery_latency_seconds"
    /// The latency histograms' buckets: a paid tier's start is a few ms.
    package static let latencyBuckets: [Duration] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000]
        .map { .milliseconds($0) }
    /// The latency histograms' buckets by label, for `Observability.bootstrap`.
    package static var durationBuckets: [String: [Duration]] {
        [startLatencyLabel: latencyBuckets, deliveryLatencyLabel: latencyBuckets]
    }

    func count(_ outcome: String) { outcomes[outcome]?.increment() }
}

/// Works one tier's queue (or, as an overflow pool, several: see ``TierInbox``): takes
/// deliveries with per-consumer prefetch, runs each job's handler in a bounded task group, re-publishes retries and dead jobs with confirms, hands
/// outcomes to the ``ResultWriter`` (durable, then acked), and shuts down gracefully.
///
/// The connection's thread only moves frames; job code runs on Swift's cooperative pool.
package final class JobConsumer: Sendable {
    package let configuration: ConsumerConfiguration
    package let connection: AMQPConnection
    private let pool: PostgresPool
    private let store: JobRunStore
    /// Fleet-wide token buckets of the outbound limits.
    private let rateBuckets: RateBucketStore
    private let handlers: HandlerRegistry
    private let writer: ResultWriter
    /// The pool's own metrics (in flight, result batches) ...
    private let metrics: ConsumerMetrics
    /// ... and its jobs', by the job's tier.
    private let tierMetrics: [Tier: ConsumerMetrics]
    private let logger: Logger
    private let state = Mutex(State())
    /// Cancellation requests this consumer knows of (see ``JobCancellations``).
    package let cancellations = JobCancellations()
    /// Every running job's timeout, on one clock (see ``DeadlineWatcher``).
    private let deadlines = DeadlineWatcher()
    /// Slots of concurrency keys (see ``ConcurrencyLeases``) ...
    private let leases: ConcurrencyLeases
    /// ... the ones held by jobs running here (refreshed by ``refreshLeases()``) ...
    private let running = HeldLeases()
    /// ... and the jobs waiting for one, woken when a job of their key ends here.
    private let keyWakeups = KeyWakeups()
    private let freedKeys = FreedKeys()
    private let keyWaiting: GaugedCount
    /// Decides in Postgres whether a delivery may start (see ``StartGate``).
    private let gate: StartGate
    /// Set by ``stop()``: ends the gate's retries while Postgres is down.
    private let stopping: StopFlag
    /// This consumer's own queue on `warren.control` (exclusive: gone with the connection).
    private let controlQueue: String
    /// How often `api_jobs` is polled for cancellation requests the fanout may have missed.
    private let cancellationPoll: Duration = .seconds(2)
    /// Pressure reports, and this pool's grant when it gives way to a higher tier.
    private let admission: AdmissionControl
    /// Running jobs' progress reports and heartbeats (written in batches), and the quiet ones.
    package let progress: ProgressTracker

    private struct State {
        var stopRequested = false
        /// Every subscription that may still deliver, once subscribed: what ``stop()`` cancels
        /// (a lane whose prefetch changes has its new one here, and the old one until its
        /// cancel went through).
        var consumerTags: [String] = []
        /// Subscriptions started so far: makes each consumer tag unique on the connection.
        var subscriptionsStarted = 0
        var inFlight = 0
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
        var lastDelivery = ContinuousClock.now
        /// Past the shutdown deadline: outcomes of jobs still running are dropped (unacked).
        var abandoned = false
        var stoppedBecauseIdle = false
    }

    /// The process's scheduling priority, told when this pool gives way (see ``PriorityKeeper``).
    private let priority: PriorityKeeper?

    package init(configuration: ConsumerConfiguration, amqp: AMQPConfiguration, database: PostgresConfiguration,
                 handlers: HandlerRegistry, priority: PriorityKeeper? = nil, logger: Logger) {
        var logger = logger
        logger[metadataKey: "tier"] = "\(configuration.poolName)"
        logger[metadataKey: "consumer_id"] = "\(configuration.consumerID)"
        self.configuration = configuration
        self.logger = logger
        self.handlers = handlers
        let controlQueue = "warren.control.\(configuration.consumerID).\(JobID.make().lowercasedString.prefix(8))"
        self.controlQueue = controlQueue
        connection = AMQPConnection(configuration: amqp, logger: logger) { control in
            try Topology.standard.declare(on: control)
            try control.declareQueue(controlQueue, durable: false, exclusive: true, autoDelete: true)
            try control.bindQueue(controlQueue, exchange: Topology.controlExchange, routingKey: "")
        }
        pool = PostgresPool(configuration: database, logger: logger)
        store = JobRunStore(pool: pool, logger: logger)
        rateBuckets = RateBucketStore(pool: pool)
        leases = ConcurrencyLeases(pool: pool)
        keyWaiting = GaugedCount(Gauge(label: "warren_consumer_jobs_waiting_for_key", dimensions: [("tier", configuration.tier.rawValue)]))
        let tierMetrics = Dictionary(uniqueKeysWithValues: configuration.tiers.map { ($0, ConsumerMetrics(tier: $0)) })
        self.tierMetrics = tierMetrics
        metrics = tierMetrics[configuration.tier]!
        writer = ResultWriter(store: store, connection: connection, maxRows: configuration.batchMaxRows,
                              maxDelay: configuration.batchMaxDelay, metrics: metrics, logger: logger)
        admission = AdmissionControl(configuration: configuration)
        progress = ProgressTracker(settings: configuration.progress, tiers: configuration.tiers, logger: logger)
        self.priority = priority
        let stopping = StopFlag()
        self.stopping = stopping
        gate = StartGate(store: store, logger: logger, stopping: { stopping.isSet })
    }

    /// Runs until ``stop()`` (or, in drain mode, until the queue stayed empty long enough),
    /// then shuts down gracefully. Returns true when it stopped because it was idle.
    @discardableResult
    package func run() async throws -> Bool {
        let queues = configuration.tiers.map(\.queueName).joined(separator: ",")
        var subscriptions: [(tier: Tier, lane: Int, deliveries: AMQPDeliveries)] = []
        let controlMessages: AMQPDeliveries
        do {
            try await connection.connect()
            try await migrateWaitingForPostgres()
            // Hear new cancellation requests before loading the standing ones, so none falls
            // between the two; then take jobs.
            controlMessages = try await connection.consume(queue: controlQueue, prefetch: 256)
            try await loadCancellations()
            // Every lane of every tier, each with the whole prefetch: one tenant's lane alone
            // runs as fast as the tier did before lanes.
            for tier in configuration.tiers {
                for lane in 0..<Tier.lanes {
                    subscriptions.append((tier, lane, try await subscribe(tier, lane: lane, prefetch: configuration.prefetch)))
                }
            }
        } catch {
            await connection.close()
            await pool.close()
            if state.withLock({ $0.stopRequested }) { return false }  // asked to stop while starting
            throw error
        }
        let stopEarly = state.withLock { state -> Bool in
            state.consumerTags = subscriptions.map(\.deliveries.consumerTag)
            state.lastDelivery = .now
            return state.stopRequested
        }
        if stopEarly { cancelConsumer() }
        logger.info("consumer started", metadata: [
            "queue": "\(queues)", "prefetch": "\(configuration.prefetch)", "concurrency": "\(configuration.concurrency)",
            "handlers": "\(handlers.types.joined(separator: ","))",
        ])

        let writerTask = Task { await writer.run() }
        let deadlineTask = Task { await deadlines.run() }
        let controlTask = Task { await listen(to: controlMessages) }
        let pollTask = Task { await pollCancellations() }
        let leaseTask = Task { await refreshLeases() }
        let freedKeysTask = Task { await announceFreedKeys() }
        let progressTask = Task { [progress, pool] in await progress.run(store: ProgressStore(pool: pool)) }
        // A free slot takes the highest tier's delivery, lanes in turn (see TierInbox).
        let inbox = TierInbox(tiers: configuration.tiers)
        let reportTask = Task { await reportPressure(inbox: inbox) }
        let idleMonitor = configuration.exitWhenIdle.map { idle in Task { await watchForIdle(idle) } }
        let limiter = Limiter(limit: configuration.concurrency)

        let shutdownDeadline = Mutex(ContinuousClock.now)
        var deliveriesError: (any Error)?
        await withDiscardingTaskGroup { jobs in
            for subscription in subscriptions {
                jobs.addTask { await inbox.fill(subscription.tier, lane: subscription.lane, from: subscription.deliveries) }
            }
            let backlogTask = configuration.tiers.count > 1 ? Task { await countBacklogs(into: inbox) } : nil
            defer { backlogTask?.cancel() }
            let dispatching = StopFlag()
            defer { dispatching.set() }
            if admission.adapts {
                let lanes = subscriptions.map { (tier: $0.tier, lane: $0.lane, tag: $0.deliveries.consumerTag) }
                jobs.addTask { await self.adapt(lanes: lanes, inbox: inbox, limiter: limiter, until: dispatching) }
            }
            while true {
                await limiter.acquire()
                guard let delivery = await inbox.next() else {
                    limiter.release()
                    break
                }
                state.withLock { $0.lastDelivery = .now }
                begin()
                jobs.addTask {
                    await self.process(delivery, limiter: limiter)
                    self.end()
                    limiter.release()
                }
            }
            dispatching.set()
            if let error = inbox.failure {
                logger.error("deliveries ended with an error; shutting down", metadata: ["error": "\(error)"])
                deliveriesError = error
                // End the other subscriptions, so their readers return (and no prefetch change
                // starts new ones: it checks stopRequested under the same lock).
                state.withLock { $0.stopRequested = true }
                cancelConsumer()
            }
            let deadline = ContinuousClock.now + configuration.shutdownGrace
            shutdownDeadline.withLock { $0 = deadline }
            // No new deliveries. In-flight jobs, then the last results, get one grace period.
            let finished = await waitForInFlight(until: deadline)
            if !finished {
                let running = state.withLock { state -> Int in
                    state.abandoned = true
                    return state.inFlight
                }
                logger.warning("shutdown grace period over; handing back jobs still running (left unacked, the broker redelivers them)",
                               metadata: ["jobs": "\(running)"])
                jobs.cancelAll()
            }
        }
        idleMonitor?.cancel()
        deadlineTask.cancel()
        controlTask.cancel()
        pollTask.cancel()
        leaseTask.cancel()
        freedKeysTask.cancel()
        reportTask.cancel()
        progressTask.cancel()
        await progressTask.value  // its last reports, before the pool closes

        // Flush what finished, ack it, then close (unacked deliveries go back to the queue).
        writer.close()
        let flushed = await withTaskGroup(of: Bool.self) { group in
            group.addTask { await writerTask.value; return true }
            // Whatever is left of the grace period, but at least a moment to write.
            let deadline = max(shutdownDeadline.withLock { $0 }, .now + .milliseconds(500))
            group.addTask {
                try? await Task.sleep(until: deadline)
                return false
            }
            let first = await group.next() ?? true
            if !first { self.writer.abandon() }
            group.cancelAll()
            await group.waitForAll()
            return first
        }
        if !flushed { logger.warning("results still unwritten at the deadline were left unacked") }
        await connection.close()
        await pool.close()
        let idle = state.withLock { $0.stoppedBecauseIdle }
        if let deliveriesError {
            // The broker ended the subscription (its queue deleted, say): fail, so a supervisor
            // restarts this consumer rather than counting it as a clean exit.
            logger.info("consumer stopped", metadata: ["reason": "deliveries ended"])
            throw deliveriesError
        }
        logger.info("consumer stopped", metadata: ["reason": "\(idle ? "idle" : "shutdown")"])
        return idle
    }

    /// Applies migrations; while Postgres is unreachable, waits and retries (logging) rather
    /// than exiting, so a consumer started before its database does not crash-loop.
    private func migrateWaitingForPostgres() async throws {
        let backoff = Backoff(base: .milliseconds(250), cap: .seconds(10), floor: .milliseconds(100))
        var attempt = 0
        while true {
            do {
                _ = try await Migrator(migrations: Schema.migrations, logger: logger).migrate(pool)
                return
            } catch let error as PostgresError where error.isConnectionLevel {
                if state.withLock({ $0.stopRequested }) { throw error }
                let delay = backoff.delay(attempt: attempt)
                attempt += 1
                logger.warning("Postgres unreachable at start; retrying", metadata: ["error": "\(error)", "retry_in_ms": "\(delay.milliseconds)"])
                try await Task.sleep(for: delay)
            }
        }
    }

    /// Starts the graceful shutdown: cancel the consumer (no new deliveries), let in-flight
    /// jobs finish within `shutdownGrace`, flush, ack, close. Safe to call more than once.
    package func stop() {
        let first = state.withLock { state -> Bool in
            defer { state.stopRequested = true }
            return !state.stopRequested
        }
        stopping.set()
        if first {
            logger.info("shutting down: no new deliveries; finishing in-flight jobs",
                        metadata: ["grace_seconds": "\(configuration.shutdownGrace.milliseconds / 1_000)"])
            cancelConsumer()
        }
    }

    private func cancelConsumer() {
        let tags = state.withLock { $0.consumerTags }
        guard !tags.isEmpty else { return }
        Task { [connection, logger] in
            do {
                for tag in tags { try await connection.cancel(consumerTag: tag) }
            } catch {
                logger.warning("basic.cancel failed; closing the connection instead", metadata: ["error": "\(error)"])
                await connection.close()
            }
        }
    }

    /// Starts a consumer on `tier`'s `lane` with `prefetch`, its tag unique on the connection.
    private func subscribe(_ tier: Tier, lane: Int, prefetch: UInt16) async throws -> AMQPDeliveries {
        let started = state.withLock { state -> Int in
            defer { state.subscriptionsStarted += 1 }
            return state.subscriptionsStarted
        }
        var tag = "warren-\(configuration.consumerID)"
        if configuration.tiers.count > 1 { tag += "-\(tier.rawValue)" }
        if lane > 0 { tag += "-\(lane)" }
        if started >= configuration.tiers.count * Tier.lanes { tag += "-p\(prefetch)-\(started)" }
        return try await connection.consume(queue: tier.queueName(lane: lane), prefetch: prefetch,
                                            priority: configuration.subscriptionPriority, tag: tag)
    }

    // MARK: - Adaptive admission

    /// This consumer's ``ConsumerStatus`` (what admission grants it, its jobs in flight, its
    /// breakers not closed), for the producers' console; lost ones only age the picture.
    private func reportStatus() async {
        let grant = admission.currentGrant
        let status = ConsumerStatus(consumerID: configuration.consumerID, tiers: configuration.tiers, concurrency: grant.concurrency,
                                    configuredConcurrency: configuration.concurrency, prefetch: Int(grant.prefetch),
                                    inFlight: state.withLock { $0.inFlight }, openBreakers: BreakerBoard.shared.notClosed)
        if case .failure(let error)? = await connection.publish([ControlMessage.status(status).outgoing]).first {
            logger.debug("cannot send the consumer's status", metadata: ["error": "\(error)"])
        }
    }

    /// Sends this consumer's pressure reports (see ``AdmissionControl``) until cancelled. A
    /// tier is saturated here while every slot is busy, more of its deliveries wait in the
    /// inbox than max(concurrency, prefetch/2), or its queues hold ready jobs at the broker
    /// (a backlog its consumers have not taken yet: asked only when there is a report to send).
    private func reportPressure(inbox: TierInbox) async {
        let concurrency = configuration.concurrency
        let backlog = max(concurrency, Int(configuration.prefetch) / 2)
        let statusEvery = Int(ConsumerStatus.interval / AdmissionControl.reportInterval)
        var round = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: AdmissionControl.reportInterval)
            round += 1
            if round % statusEvery == 1 { await reportStatus() }
            let busy = state.withLock { $0.inFlight } >= concurrency
            let started = admission.latencies.tiers.filter { $0 != .free }
            var queued: Set<Tier> = []
            if !busy, !started.isEmpty {
                let counts = try? await connection.withControl { control in try started.map { ($0, try control.readyCount($0)) } }
                queued = Set((counts ?? []).filter { $0.1 > 0 }.map(\.0))
            }
            let reports = admission.reports(consumerID: configuration.consumerID) { busy || queued.contains($0) || inbox.held($0) >= backlog }
            guard !reports.isEmpty, !Task.isCancelled else { continue }
            let results = await connection.publish(reports.map { ControlMessage.pressure($0).outgoing })
            if case .failure(let error)? = results.first(where: { if case .failure = $0 { true } else { false } }) {
                logger.debug("cannot send pressure reports", metadata: ["error": "\(error)"])
            }
        }
    }

    /// A lower tier's pool: every ``AdmissionControl/decideInterval``, the grant for now;
    /// when it changes, the limiter at once and the prefetch by subscribing each lane again
    /// (on a freed channel or a new one) and cancelling the old subscription, whose deliveries
    /// still run. An old subscription whose cancel failed (the connection was down) stays in
    /// the state's tags, which ``stop()`` cancels, and is cancelled again next round. Ends once
    /// the consumer stops, with the limiter back at the configured concurrency (so the
    /// dispatch loop, waiting for a slot, sees the inbox end without waiting on a long job).
    private func adapt(lanes: [(tier: Tier, lane: Int, tag: String)], inbox: TierInbox, limiter: Limiter, until ended: StopFlag) async {
        var applied = configuration.prefetch
        var current = lanes.map(\.tag)
        var leftovers: [String] = []
        defer { limiter.resize(to: configuration.concurrency) }
        await withDiscardingTaskGroup { fills in
            while !stopping.isSet, !ended.isSet {
                try? await Task.sleep(for: AdmissionControl.decideInterval)
                if stopping.isSet || ended.isSet { break }
                if !leftovers.isEmpty { leftovers = await cancelSubscriptions(leftovers) }
                var backlog = false
                if admission.quiet() {
                    let watched = admission.watched
                    backlog = (try? await connection.withControl { control in try watched.contains { try control.readyCount($0) > 0 } }) ?? true
                }
                let grant = admission.decide(watchedBacklog: backlog)
                priority?.yield(admission.yielding)
                if let grant {
                    limiter.resize(to: grant.concurrency)
                    logger.info("admission changed", metadata: [
                        "concurrency": "\(grant.concurrency)", "prefetch": "\(grant.prefetch)", "admission": "\(admission.statusJSON)",
                    ])
                }
                let wanted = admission.granted.prefetch
                guard wanted != applied else { continue }
                do {
                    for (index, lane) in lanes.enumerated() {
                        guard !stopping.isSet, !ended.isSet else { break }
                        let deliveries = try await subscribe(lane.tier, lane: lane.lane, prefetch: wanted)
                        inbox.opened()
                        fills.addTask { await inbox.fill(lane.tier, lane: lane.lane, from: deliveries) }
                        let stoppingNow = state.withLock { state -> Bool in
                            if state.stopRequested { return true }
                            state.consumerTags.append(deliveries.consumerTag)
                            return false
                        }
                        if stoppingNow {
                            // stop() took its list before this one: it is ours to cancel.
                            _ = await cancelSubscriptions([deliveries.consumerTag])
                            break
                        }
                        leftovers = await cancelSubscriptions(leftovers + [current[index]])
                        current[index] = deliveries.consumerTag
                    }
                    applied = wanted
                } catch {
                    logger.warning("cannot change the prefetch; trying again", metadata: ["error": "\(error)", "prefetch": "\(wanted)"])
                }
            }
        }
    }

    /// Cancels `tags` (each dropped from the state's list once cancelled); returns those whose
    /// cancel failed.
    private func cancelSubscriptions(_ tags: [String]) async -> [String] {
        var failed: [String] = []
        for tag in tags {
            do {
                try await connection.cancel(consumerTag: tag)
                state.withLock { $0.consumerTags.removeAll { $0 == tag } }
            } catch {
                logger.warning("cannot cancel a replaced subscription yet; trying again", metadata: ["error": "\(error)", "consumer_tag": "\(tag)"])
                failed.append(tag)
            }
        }
        return failed
    }

    // MARK: - Admin port

    /// What `/readyz` reports down: the broker (connection lost) or the database (no answer).
    /// What `/readyz` reports down: the broker, the database, and `subscription` until the
    /// consumer has started taking jobs from its queue.
    package func unreachable() async -> [String] {
        let subscribed = state.withLock { !$0.consumerTags.isEmpty }
        return await Readiness.unreachable(broker: connection, database: pool) + (subscribed ? [] : ["subscription"])
    }

    /// `/status`: this consumer's tier, limits and what it holds right now, plus `extra`
    /// members (name and JSON text) from the parts around it (the notifier's breakers).
    package func statusJSON(extra: [(name: String, json: String)] = []) async -> String {
        let (inFlight, stopping) = state.withLock { ($0.inFlight, $0.stopRequested) }
        let members = extra.map { ",\(JSONText.quoted($0.name)):\($0.json)" }.joined()
        return #"{"service":"consumer","consumer_id":\#(JSONText.quoted(configuration.consumerID)),"tier":"\#(configuration.tier.rawValue)","queue":"\#(configuration.tier.queueName)","lanes":\#(Tier.lanes),"tiers":[\#(configuration.tiers.map { "\"\($0.rawValue)\"" }.joined(separator: ","))],"subscription_priority":\#(configuration.subscriptionPriority.map(String.init) ?? "0"),"concurrency":\#(configuration.concurrency),"prefetch":\#(configuration.prefetch),"admission":\#(admission.statusJSON),"nice":\#(priority?.current ?? 0),"in_flight":\#(inFlight),"unwritten_results":\#(writer.pending),"cancellation_requests":\#(cancellations.count),"stalled_jobs":\#(progress.stalledCount),"broker_connected":\#(connection.isConnected),"stopping":\#(stopping)\#(members)}"#
    }

    // MARK: - Cancellation requests

    /// The standing requests: jobs of this tier asked to cancel and not yet finished.
    private func loadCancellations() async throws {
        var ids: [UUID] = []
        for tier in configuration.tiers { ids += try await APIJobStore(pool: pool).openCancellations(tier: tier) }
        cancellations.request(ids)
        if !ids.isEmpty { logger.info("loaded cancellation requests", metadata: ["count": "\(ids.count)"]) }
    }

    /// Control messages from `warren.control`: cancellation requests the moment they are made,
    /// the fleet's pressure reports, and concurrency keys freed by other consumers.
    private func listen(to messages: AMQPDeliveries) async {
        do {
            for try await message in messages {
                switch ControlMessage(body: message.body) {
                case .pressure(let report)?:
                    admission.receive(report)
                case .keysFree(let keys, let from)?:
                    guard from != configuration.consumerID else { break }  // its own, woken already
                    for key in keys { keyWakeups.wakeOne(key) }
                case .cancel(let job, let tier)? where configuration.tiers.contains(tier):
                    let running = cancellations.request([job])
                    logger.info("cancellation requested", metadata: ["job_id": "\(job.lowercasedString)",
                                                                     "running": "\(running > 0)"])
                case .cancel?, .status?, nil:
                    break
                }
                try? await connection.ack(message)
            }
        } catch {
            if !Task.isCancelled { logger.warning("control messages ended", metadata: ["error": "\(error)"]) }
        }
    }

    /// Polls `api_jobs` for recent requests: the fanout reaches only consumers connected at
    /// the time, so this closes the gap of a reconnect (or a lost control message).
    private func pollCancellations() async {
        let store = APIJobStore(pool: pool)
        while !Task.isCancelled {
            try? await Task.sleep(for: cancellationPoll)
            guard !Task.isCancelled else { return }
            do {
                var ids: [UUID] = []
                for tier in configuration.tiers { ids += try await store.recentCancellations(tier: tier, seconds: 30) }
                let running = cancellations.request(ids.filter { !cancellations.isRequested($0) })
                if running > 0 { logger.info("cancelled running jobs found by polling", metadata: ["count": "\(running)"]) }
            } catch {
                logger.debug("cannot poll cancellation requests", metadata: ["error": "\(error)"])
            }
        }
    }

    // MARK: - In-flight accounting

    private func begin() {
        let running = state.withLock { state -> Int in
            state.inFlight += 1
            return state.inFlight
        }
        metrics.inFlight.record(running)
    }

    private func end() {
        let (running, waiters) = state.withLock { state -> (Int, [CheckedContinuation<Void, Never>]) in
            state.inFlight -= 1
            guard state.inFlight == 0 else { return (state.inFlight, []) }
            defer { state.idleWaiters.removeAll() }
            return (0, state.idleWaiters)
        }
        metrics.inFlight.record(running)
        for waiter in waiters { waiter.resume() }
    }

    /// True if every in-flight job finished before `deadline`.
    private func waitForInFlight(until deadline: ContinuousClock.Instant) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let idle = self.state.withLock { state -> Bool in
                        if state.inFlight == 0 { return true }
                        state.idleWaiters.append(continuation)
                        return false
                    }
                    if idle { continuation.resume() }
                }
                return true
            }
            group.addTask {
                try? await Task.sleep(until: deadline)
                return false
            }
            let first = await group.next() ?? true
            if !first {
                // Release the idle waiter so the group can finish.
                let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                    defer { state.idleWaiters.removeAll() }
                    return state.idleWaiters
                }
                for waiter in waiters { waiter.resume() }
            }
            group.cancelAll()
            return first
        }
    }

    /// Drain mode: stops once nothing arrived for `idle`, nothing is running or unwritten,
    /// and the broker says the queue is empty.
    private func watchForIdle(_ idle: Duration) async {
        let interval = min(Duration.milliseconds(250), idle / 4)
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            let (quietSince, running) = state.withLock { ($0.lastDelivery, $0.inFlight) }
            guard running == 0, writer.pending == 0, ContinuousClock.now - quietSince >= idle else { continue }
            let tiers = configuration.tiers
            guard let depth = try? await connection.withControl({ control in try tiers.reduce(0) { $0 + (try control.readyCount($1)) } }),
                  depth == 0 else { continue }
            logger.info("queue stayed empty; exiting (drain mode)", metadata: ["idle_ms": "\(idle.milliseconds)"])
            state.withLock { $0.stoppedBecauseIdle = true }
            stop()
            return
        }
    }

    /// An overflow pool's view of its queues: every 100 ms, which have ready messages (a
    /// backlog: see ``TierInbox``). A count that fails keeps the last one.
    private func countBacklogs(into inbox: TierInbox) async {
        let tiers = configuration.tiers
        while !Task.isCancelled {
            if let ready = try? await connection.withControl({ control in
                try tiers.map { tier in (tier, try control.readyCount(tier)) }
            }) {
                inbox.backlog(Set(ready.filter { $0.1 > 0 }.map(\.0)))
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    // MARK: - One delivery

    private func process(_ delivery: AMQPDelivery, limiter: Limiter) async {
        let job: JobEnvelope
        do throws(JobError) {
            job = try JobEnvelope(properties: delivery.properties, body: delivery.body)
            if !configuration.tiers.contains(job.tier) {
                throw JobError(field: JobEnvelope.Header.tier,
                               message: "job for tier \(job.tier.rawValue) arrived at a consumer of \(configuration.tiers.map(\.queueName).joined(separator: ", "))")
            }
        } catch {
            let reason = error.field.map { "malformed: \($0): \(error.message)" } ?? "malformed: \(error.message)"
            await deadLetterMalformed(delivery, reason: reason)
            return
        }
        var jobLogger = logger
        jobLogger[metadataKey: "job_id"] = "\(job.id.lowercasedString)"
        jobLogger[metadataKey: "job_type"] = "\(job.type)"
        jobLogger[metadataKey: "attempt"] = "\(job.attempt)"
        // The delivery's span, continuing the trace of the job's publish (its traceparent).
        let span = Traces.start("process \(job.type)", kind: .consumer, context: Traces.context(traceparent: job.traceparent))
        span?.attributes["warren.job_id"] = job.id.lowercasedString
        span?.attributes["warren.tier"] = job.tier.rawValue
        span?.attributes["warren.attempt"] = job.attempt
        span?.attributes["messaging.system"] = "rabbitmq"
        await Traces.within(span) { await dispatch(job, delivery: delivery, limiter: limiter, logger: jobLogger) }
    }

    /// Runs a well-formed delivery: at once, or once its concurrency key has a slot.
    private func dispatch(_ job: JobEnvelope, delivery: AMQPDelivery, limiter: Limiter, logger jobLogger: Logger) async {
        var jobLogger = jobLogger
        guard let key = job.concurrencyKey else {
            await work(job, delivery: delivery, logger: jobLogger)
            return
        }
        jobLogger[metadataKey: "concurrency_key"] = "\(key)"
        switch await keyTurn(key, job: job, limiter: limiter, logger: jobLogger) {
        case .held(let lease):
            running.add(lease)
            await work(job, delivery: delivery, logger: jobLogger)
            running.remove(lease)
            do {
                try await leases.release(lease)
            } catch {
                jobLogger.warning("cannot give back the job's concurrency slot; it expires on its own",
                                  metadata: ["error": "\(error)", "lease_seconds": "\(configuration.keyLeaseTTL.milliseconds / 1_000)"])
            }
            keyWakeups.wakeOne(key)
            freedKeys.add(key)  // and jobs of the key waiting in other consumers
        case .deferred(let plan):
            await carryOut(plan, job, delivery: delivery, startedAt: .now(), logger: jobLogger)
        case .handedBack:
            (tierMetrics[job.tier] ?? metrics).count("handed_back")  // stopping: left unacked, redelivered
        }
    }

    /// What became of a keyed job's wait for a slot of its key.
    private enum KeyTurn {
        case held(ConcurrencyLeases.Lease)
        /// Too many already wait here, or the slots cannot be read: back to a delay queue, no attempt spent.
        case deferred(Settlement)
        /// The consumer is stopping: left unacked.
        case handedBack
    }

    /// Waits for a slot of `key` (see ``ConcurrencyLeases``) without holding a worker slot:
    /// called with one; while the key is busy it gives it back, waits (woken, longest waiting
    /// first, when a slot of the key is given back here or by another consumer, see
    /// ``announceFreedKeys()``; else asking again after 25 ms, doubling to 2 s), and takes one
    /// again before it asks. Returns holding a worker slot.
    private func keyTurn(_ key: String, job: JobEnvelope, limiter: Limiter, logger: Logger) async -> KeyTurn {
        var random = SystemRandomNumberGenerator()
        var pause = Duration.milliseconds(25)
        var parked = false
        defer { if parked { keyWaiting.add(-1) } }
        while true {
            let lease: ConcurrencyLeases.Lease?
            do {
                lease = try await leases.acquire(key: key, limit: job.concurrencyLimit, job: job.id, holder: configuration.consumerID,
                                                 ttl: configuration.keyLeaseTTL)
            } catch {
                logger.warning("cannot take a slot of the job's concurrency key; deferring it", metadata: ["error": "\(error)"])
                return .deferred(Settlement.plan(job, .deferred(reason: "concurrency key \(key) unavailable", retryAfter: .seconds(5)),
                                                 policy: configuration.retryPolicy(for: job.type), using: &random))
            }
            if let lease { return .held(lease) }
            if !parked {
                guard keyWaiting.add(1) <= configuration.maxKeyWaiting else {
                    keyWaiting.add(-1)
                    return .deferred(Settlement.plan(job, .deferred(reason: "concurrency key \(key) busy", retryAfter: .seconds(1)),
                                                     policy: configuration.retryPolicy(for: job.type), using: &random))
                }
                parked = true
            }
            limiter.release()
            await keyWakeups.wait(key, upTo: pause)
            pause = min(pause * 2, Self.longestKeyPause)
            await limiter.acquire()
            if stopping.isSet { return .handedBack }
        }
    }

    /// Tells every consumer which concurrency keys' slots were given back here, so their jobs
    /// waiting for those keys ask at once (a hint: without it they ask at their next poll).
    private func announceFreedKeys() async {
        while let keys = await freedKeys.next() {
            if case .failure(let error)? = await connection.publish([ControlMessage.keysFree(keys, from: configuration.consumerID).outgoing]).first {
                logger.debug("cannot announce freed concurrency keys", metadata: ["error": "\(error)", "keys": "\(keys.count)"])
            }
        }
    }

    /// The longest a job waiting for its key goes without asking: slots given back wake a
    /// waiting job at once (here, or through ``announceFreedKeys()``), so the poll only covers a
    /// lost announcement or a dead holder's lease running out.
    static let longestKeyPause = Duration.seconds(2)

    /// Refreshes the leases of the keyed jobs running here, every third of their lifetime.
    private func refreshLeases() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: configuration.keyLeaseTTL / 3)
            let jobs = running.jobs
            guard !jobs.isEmpty else { continue }
            do {
                try await leases.refresh(holder: configuration.consumerID, jobs: jobs, ttl: configuration.keyLeaseTTL)
            } catch {
                logger.warning("cannot refresh the running jobs' concurrency leases", metadata: ["error": "\(error)", "jobs": "\(jobs.count)"])
            }
        }
    }

    /// One job, decoded (and holding its key's slot, if it has one): start, run, settle.
    private func work(_ job: JobEnvelope, delivery: AMQPDelivery, logger jobLogger: Logger) async {
        let metrics = tierMetrics[job.tier] ?? metrics

        var startedAt = Timestamp.now()
        if StartGate.mustClaim(job, redelivered: delivery.redelivered) {
            // Its start meets cancellations and the job's other deliveries on its row.
            let claim: JobRunStore.StartClaim
            do {
                claim = try await gate.claim(JobRunStore.Start(job: job, redelivered: delivery.redelivered,
                                                               consumerID: configuration.consumerID, startedAt: startedAt))
            } catch {
                // Cannot tell: hand it back rather than risk a second run.
                jobLogger.warning("cannot claim the job's start; handing it back", metadata: ["error": "\(error)"])
                try? await connection.nack(delivery, requeue: true)
                metrics.count("handed_back")
                return
            }
            if case .skip(let status) = claim {
                if status == JobStatus.cancelled.rawValue {
                    jobLogger.info("job cancelled before it started")
                    metrics.count("cancelled")
                    cancellations.forget(job.id)
                    writer.submit(.init(record: nil, delivery: delivery))
                } else {
                    jobLogger.info("delivery superseded (its job finished, moved on, or runs elsewhere); acking without running it",
                                   metadata: ["status": "\(status)", "seq": "\(job.seq)", "redelivered": "\(delivery.redelivered)"])
                    metrics.count("duplicate")
                    writer.submit(.init(record: JobRunRecord(job: job, run: nil, event: .duplicate,
                                                             detail: Self.detail(["status": status, "seq": "\(job.seq)"])),
                                        delivery: delivery))
                }
                return
            }
        } else if cancellations.isRequested(job.id) {
            // Asked to cancel before it started: never run it. (A job with no tenant cannot be
            // cancelled over the API; this covers a request known only in memory.)
            jobLogger.info("job cancelled before it started")
            metrics.count("cancelled")
            let run = JobRunRecord.Run(status: .cancelled, attempts: job.attempt, seq: job.seq, error: "cancelled before it started",
                                       consumerID: configuration.consumerID, startedAt: startedAt, finishedAt: startedAt)
            writer.submit(.init(record: JobRunRecord(job: job, run: run, event: .cancelled,
                                                     detail: Self.detail(["when": "before start"])), delivery: delivery))
            cancellations.forget(job.id)
            return
        } else {
            // The `running` mark rides with the next batch (no write of its own; a job that ends
            // within the same batch goes straight to its outcome).
            writer.submit(.init(record: JobRunRecord(job: job, run: JobRunRecord.Run(
                status: .running, attempts: job.attempt, seq: job.seq, consumerID: configuration.consumerID,
                startedAt: startedAt, finishedAt: nil), event: nil), delivery: nil))
        }
        if let limit = configuration.outboundLimits.byType[job.type],
           let plan = await rateLimitTurn(job, limit: limit, delivery: delivery, logger: jobLogger) {
            if state.withLock({ $0.abandoned }) {
                metrics.count("handed_back")  // past the shutdown deadline: leave it unacked
                return
            }
            await carryOut(plan, job, delivery: delivery, startedAt: startedAt, logger: jobLogger)
            return
        }
        // A rate-limited job starts once its turn came: that is its start.
        if configuration.outboundLimits.byType[job.type] != nil {
            startedAt = .now()
        } else if job.seq == 0, !delivery.redelivered, job.concurrencyKey == nil {
            // The tier's pressure: how long first deliveries waited (a retry's, a deferral's or
            // a key's wait is its own).
            let waited = max(0, startedAt.microseconds - job.enqueuedAt.microseconds)
            admission.latencies.record(job.tier, milliseconds: Int(waited / 1_000))
            // Wall clocks of two hosts: a skewed one reads as 0, never negative.
            metrics.startLatency.recordNanoseconds(waited * 1_000)
            metrics.deliveryLatency.recordNanoseconds(min(waited, max(0, delivery.receivedAt.microseconds - job.enqueuedAt.microseconds)) * 1_000)
        }
        let clockStart = ContinuousClock.now
        let outcome: JobOutcome
        if let handler = handlers.handler(for: job.type) {
            let context = JobContext(job: job, logger: jobLogger, deadline: clockStart + handler.timeout,
                                     consumerID: configuration.consumerID, progressSink: progress)
            progress.begin(job)
            // The handler's span: current while it runs, so message.send and HTTP handlers pass
            // its traceparent on.
            let ran = await Traces.within(Traces.start("run \(job.type)")) { await run(handler, context) }
            progress.end(job.id)
            guard let finished = ran else {
                // It ignored its cancellation past `abandonAfter`: its slot is freed and its
                // delivery left unacked (redelivered when this connection ends), never settled.
                jobLogger.error("handler ignored its cancellation; abandoned, its delivery left unacked",
                                metadata: ["abandon_after_ms": "\(configuration.abandonAfter.milliseconds)"])
                metrics.count("abandoned")
                return
            }
            outcome = finished
        } else {
            outcome = .permanentFailure(error: "unknown job type '\(job.type)' (this consumer runs: \(handlers.types.joined(separator: ", ")))")
        }
        metrics.duration.recordNanoseconds((ContinuousClock.now - clockStart).nanoseconds)
        if state.withLock({ $0.abandoned }) {
            // Shutdown deadline passed while it ran: leave it unacked for another consumer.
            metrics.count("handed_back")
            return
        }
        await settle(job, outcome, delivery: delivery, startedAt: startedAt, logger: jobLogger)
    }

    /// Runs a handler (in a task of its own) until it returns, its timeout passes (a retryable
    /// failure) or its job is asked to cancel. A cancelled handler gets `abandonAfter` to end;
    /// if it does not, the answer is nil and it is left running, unawaited, so neither the
    /// timeout nor shutdown waits on it.
    private func run(_ handler: any JobHandler, _ context: JobContext) async -> JobOutcome? {
        let result = OneShot<JobOutcome>()
        let task = Task { result.fulfil(await handler.run(context)) }
        return await withTaskCancellationHandler {
            let timedOut = JobOutcome.retry(error: "timed out after \(handler.timeout)", retryAfter: nil)
            let cancelled = JobOutcome.cancelled(reason: "cancelled while running")
            let (outcome, handlerEnded) = await Self.first(
                { () async -> (JobOutcome, Bool)? in await result.wait().map { ($0, true) } },
                { [cancellations] () async -> (JobOutcome, Bool)? in
                    await cancellations.wait(for: context.job.id) ? (cancelled, false) : nil
                },
                { [deadlines] () async -> (JobOutcome, Bool)? in await deadlines.wait(until: context.deadline) ? (timedOut, false) : nil })
                ?? (JobOutcome.retry("cancelled"), false)
            if handlerEnded { return outcome }
            task.cancel()
            let abandonAt = ContinuousClock.now + configuration.abandonAfter
            let ended = await Self.first({ () async -> Bool? in await result.wait().map { _ in true } },
                                         { [deadlines] () async -> Bool? in await deadlines.wait(until: abandonAt) ? false : nil }) ?? false
            return ended ? outcome : nil
        } onCancel: {
            task.cancel()
        }
    }

    /// The first non-nil answer of `racers` (each cancelled once one answers), or nil when
    /// the calling task is cancelled first. Every racer must return promptly on cancellation.
    private static func first<T: Sendable>(_ racers: (@Sendable () async -> T?)...) async -> T? {
        await withTaskGroup(of: T?.self) { group in
            for racer in racers { group.addTask { await racer() } }
            var answer: T?
            while answer == nil, let next = await group.next() {
                if let next {
                    answer = next
                    group.cancelAll()
                }
            }
            return answer
        }
    }

    /// Carries out the ``Settlement`` plan: the publish it needs (confirmed; on failure the
    /// delivery is handed back and nothing is recorded), then the row and event to the result
    /// writer, which acks once they are durable.
    /// A rate-limited job's turn: nil when it may run now; else the deferral until its turn.
    /// Its first delivery reserves the key's next token; a delivery carrying its turn does not.
    private func rateLimitTurn(_ job: JobEnvelope, limit: OutboundLimits.Limit, delivery: AMQPDelivery, logger: Logger) async -> Settlement? {
        let now = Timestamp.now()
        let turn: Int64
        if let text = delivery.properties.headers[OutboundLimits.turnHeader]?.stringValue, let carried = Int64(text),
           now.microseconds / 1_000 - carried <= limit.lateness.milliseconds {
            turn = carried
        } else {
            // No turn yet, or one that passed longer ago than a token's interval (the job
            // waited in a backed-up queue): running on it would bunch late jobs together past
            // the rate, so reserve again.
            do {
                let wait = try await rateBuckets.reserve(key: "limit:" + limit.key, rate: limit.rate, burst: limit.burst)
                turn = now.microseconds / 1_000 + wait.milliseconds
            } catch {
                // Cannot reserve: try again in a while, spending nothing.
                logger.warning("cannot reserve the job's rate-limit token; deferring it", metadata: ["error": "\(error)", "limit": "\(limit.key)"])
                var random = SystemRandomNumberGenerator()
                return Settlement.plan(job, .deferred(reason: "rate limit \(limit.key) unavailable", retryAfter: .seconds(5)),
                                       policy: configuration.retryPolicy(for: job.type), using: &random)
            }
        }
        let wait = Duration.milliseconds(turn - now.microseconds / 1_000)
        guard wait > .milliseconds(20) else { return nil }
        return Settlement.rateLimited(job, key: limit.key, wait: wait, turn: turn)
    }

    private func settle(_ job: JobEnvelope, _ outcome: JobOutcome, delivery: AMQPDelivery, startedAt: Timestamp, logger: Logger) async {
        var random = SystemRandomNumberGenerator()
        let plan = Settlement.plan(job, outcome, policy: configuration.retryPolicy(for: job.type), using: &random)
        if case .success(let result?) = outcome, plan.result != result {
            logger.warning("handler returned a result that is not JSON; storing it as a JSON string")
        }
        await carryOut(plan, job, delivery: delivery, startedAt: startedAt, logger: logger)
    }

    /// Publishes what `plan` needs (confirmed), then hands the row to the writer (acked once durable).
    private func carryOut(_ plan: Settlement, _ job: JobEnvelope, delivery: AMQPDelivery, startedAt: Timestamp, logger: Logger) async {
        let finishedAt = Timestamp.now()
        let metrics = tierMetrics[job.tier] ?? metrics
        if let publish = plan.publish {
            let message: AMQPOutgoingMessage
            switch publish {
            case .retry(let next, let delay, let headers):
                message = Self.retryMessage(next, after: delay, headers: headers)
            case .deadLetter(let reason, let lastError):
                message = job.deadLetterMessage(reason: reason, lastError: lastError)
            }
            do {
                try await connection.publish(message)
            } catch {
                logger.warning("republish failed; handing the job back", metadata: ["error": "\(error)", "outcome": "\(plan.counted)"])
                try? await connection.nack(delivery, requeue: true)
                metrics.count("handed_back")
                return
            }
        }
        switch plan.publish {
        case .retry?: logger.info("job will run again", metadata: ["outcome": "\(plan.counted)", "error": "\(plan.error ?? "")"])
        case .deadLetter?: logger.warning("job dead-lettered", metadata: ["status": "\(plan.status.rawValue)", "error": "\(plan.error ?? "")"])
        case nil where plan.status == .cancelled: logger.info("job cancelled while running", metadata: ["reason": "\(plan.error ?? "")"])
        case nil: break
        }
        metrics.count(plan.counted)
        var run = JobRunRecord.Run(status: plan.status, attempts: job.attempt, seq: plan.seq, result: plan.result, error: plan.error,
                                   consumerID: configuration.consumerID, startedAt: startedAt, finishedAt: finishedAt)
        // The message the row speaks for, kept when the job did not simply succeed: for a retry,
        // the copy on its way (what "retry now" sends on at once, JobRunStore.retryNow).
        if plan.status != .succeeded || configuration.keepPayloads == .all {
            if case .retry(let next, _, _)? = plan.publish { run.kept = KeptMessage(next) } else { run.kept = KeptMessage(job) }
        }
        let span = Traces.start("record \(plan.status.rawValue)")  // ended by the writer, once durable and acked
        writer.submit(.init(record: JobRunRecord(job: job, run: run, event: plan.event, detail: plan.detail.map(Self.detail),
                                                 loggedAt: finishedAt), delivery: delivery, span: span))
        if plan.forgetsCancellation { cancellations.forget(job.id) }
    }

    /// `job` (its attempt and seq already set) as a message to `warren.retry` for the delay queue `delay`.
    private static func retryMessage(_ job: JobEnvelope, after delay: Topology.RetryDelay, headers: [String: String]) -> AMQPOutgoingMessage {
        var message = job.outgoingMessage
        message.exchange = Topology.retryExchange
        message.properties.headers[JobEnvelope.Header.retryDelay] = .string(delay.label)
        for (name, value) in headers { message.properties.headers[name] = .string(String(value.prefix(1_000))) }
        return message
    }

    /// A message that is not a job: copied as it is to the dead queue with the reason, acked.
    private func deadLetterMalformed(_ delivery: AMQPDelivery, reason: String) async {
        var properties = delivery.properties
        properties.headers[JobEnvelope.Header.deadReason] = .string(String(reason.prefix(1_000)))
        properties.headers["x-warren-original-routing-key"] = .string(delivery.routingKey)
        let message = AMQPOutgoingMessage(exchange: Topology.deadExchange, routingKey: delivery.routingKey,
                                          properties: properties, body: delivery.body, mandatory: true)
        do {
            try await connection.publish(message)
        } catch {
            logger.warning("dead-letter publish of a malformed message failed; handing it back", metadata: ["error": "\(error)"])
            try? await connection.nack(delivery, requeue: true)
            return
        }
        logger.warning("malformed message dead-lettered", metadata: ["reason": "\(reason)",
                                                                     "message_id": "\(delivery.properties.messageID ?? "-")"])
        metrics.count("malformed")
        writer.submit(.init(record: nil, delivery: delivery))
    }

    private static func detail(_ fields: [String: String]) -> [UInt8] { Array(JSONText.object(fields).utf8) }
}

/// A counting semaphore for the bounded job group: `acquire` waits while `limit` jobs run.
/// ``resize(to:)`` changes the limit: a lower one takes effect as running jobs end (none is
/// stopped), a higher one wakes waiters at once.
final class Limiter: Sendable {
    private struct State {
        var limit: Int
        var inUse = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    init(limit: Int) { state = Mutex(State(limit: limit)) }

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state -> Bool in
                if state.inUse < state.limit {
                    state.inUse += 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
    }

    func release() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.inUse -= 1
            return Self.admit(&state)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Slots taken and tasks waiting for one, now.
    var usage: (inUse: Int, waiting: Int) { state.withLock { ($0.inUse, $0.waiters.count) } }

    func resize(to limit: Int) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.limit = max(1, limit)
            return Self.admit(&state)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// The waiters that fit under the limit now, counted in.
    private static func admit(_ state: inout State) -> [CheckedContinuation<Void, Never>] {
        var admitted: [CheckedContinuation<Void, Never>] = []
        while state.inUse < state.limit, !state.waiters.isEmpty {
            state.inUse += 1
            admitted.append(state.waiters.removeFirst())
        }
        return admitted
    }
}

/// The concurrency leases of the jobs running in one consumer.
final class HeldLeases: Sendable {
    private let leases = Mutex<Set<ConcurrencyLeases.Lease>>([])
    func add(_ lease: ConcurrencyLeases.Lease) { _ = leases.withLock { $0.insert(lease) } }
    func remove(_ lease: ConcurrencyLeases.Lease) { _ = leases.withLock { $0.remove(lease) } }
    var jobs: [UUID] { leases.withLock { $0.map(\.job) } }
}

/// Concurrency keys whose slots were given back here and not yet announced on
/// `warren.control` (``ControlMessage/keysFree(_:from:)``): collected while an announcement is out,
/// so a busy consumer sends one message for many keys.
final class FreedKeys: Sendable {
    private struct State {
        var keys: [String] = []
        var pending: Set<String> = []
        var waiter: CheckedContinuation<[String]?, Never>?
        var closed = false
    }

    /// The most keys in one announcement.
    static let maxPerMessage = 256

    private let state = Mutex(State())

    func add(_ key: String) {
        let waiter = state.withLock { state -> CheckedContinuation<[String]?, Never>? in
            guard !state.closed else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            if state.pending.insert(key).inserted { state.keys.append(key) }
            return nil
        }
        waiter?.resume(returning: [key])
    }

    /// Whether a reader waits in ``next()``.
    var hasReader: Bool { state.withLock { $0.waiter != nil } }

    /// The keys freed since the last call (waiting for one); nil once the caller is cancelled.
    func next() async -> [String]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<[String]?, Never>) in
                let ready = state.withLock { state -> [String]?? in
                    if state.closed { return .some(nil) }
                    guard !state.keys.isEmpty else {
                        state.waiter = continuation
                        return nil
                    }
                    let taken = Array(state.keys.prefix(Self.maxPerMessage))
                    state.keys.removeFirst(taken.count)
                    state.pending.subtract(taken)
                    return .some(taken)
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<[String]?, Never>? in
                state.closed = true
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }
}

/// Jobs waiting for a slot of their concurrency key, by key, in the order they began to wait.
/// A slot given back (here, or announced by another consumer) wakes the longest waiting job of
/// its key (``wakeOne(_:)``): one slot serves one job, and waking them all would send every
/// waiting job to Postgres to find the slot taken. Each also asks again after its pause.
final class KeyWakeups: Sendable {
    private struct Waiter {
        var id: UInt64
        var continuation: CheckedContinuation<Void, Never>
    }

    private let state = Mutex<(next: UInt64, waiters: [String: [Waiter]])>((0, [:]))

    func wait(_ key: String, upTo pause: Duration) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let id = state.withLock { state -> UInt64 in
                state.next += 1
                state.waiters[key, default: []].append(Waiter(id: state.next, continuation: continuation))
                return state.next
            }
            Task {
                try? await Task.sleep(for: pause)
                self.resume(key, id)
            }
        }
    }

    private func resume(_ key: String, _ id: UInt64) {
        let waiter = state.withLock { state -> Waiter? in
            guard let index = state.waiters[key]?.firstIndex(where: { $0.id == id }) else { return nil }
            defer { if state.waiters[key]?.isEmpty == true { state.waiters[key] = nil } }
            return state.waiters[key]?.remove(at: index)
        }
        waiter?.continuation.resume()
    }

    /// How many jobs wait for `key` here.
    func waiting(_ key: String) -> Int { state.withLock { $0.waiters[key]?.count ?? 0 } }

    /// Wakes the job that has waited longest for `key` here, if any (it asks for the slot; if
    /// another took it first, it waits again).
    func wakeOne(_ key: String) {
        let waiter = state.withLock { state -> Waiter? in
            guard var waiting = state.waiters[key], !waiting.isEmpty else { return nil }
            let first = waiting.removeFirst()
            state.waiters[key] = waiting.isEmpty ? nil : waiting
            return first
        }
        waiter?.continuation.resume()
    }
}

/// A count with a gauge of it: ``add(_:)`` returns the new value.
final class GaugedCount: Sendable {
    private let value = Mutex(0)
    private let gauge: Gauge
    init(_ gauge: Gauge) { self.gauge = gauge }
    @discardableResult
    func add(_ delta: Int) -> Int {
        let now = value.withLock { value -> Int in
            value += delta
            return value
        }
        gauge.record(now)
        return now
    }
}
