import Foundation
import Logging
import Synchronization
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenSupport
import WarrenWorker

/// Outcomes Postgres cannot store, and handlers that will not stop: neither may hold up the
/// rest of a tier.
extension ConsumerIntegrationTests {
    /// A thousand ordinary jobs with unstorable outcomes among them: a result with `\u0000`
    /// (jsonb refuses it, 22P05), an error with a NUL byte (it cut the text array: 22P02), a
    /// result number beyond `numeric` (22003). On main the batch was retried forever and no
    /// row of the tier was ever written.
    @Test func unstorableOutcomesInABatchOfAThousandNeverHoldTheOthers() async throws {
        try await withWorld { world in
            var handlers = HandlerRegistry.builtIn
            try handlers.register(EchoHandler())
            let nulResult = job(EchoHandler.jobType, #"{"result": {"note": "bad\u0000input", "kept": "\\u0000"}}"#)
            let nulError = job(EchoHandler.jobType, #"{"fail": "bad\u0000input"}"#)
            let hugeNumber = job(EchoHandler.jobType, #"{"result": {"n": 1e200000}}"#)
            var jobs = (0..<1_000).map { _ in job("noop") }
            jobs.insert(nulResult, at: 300)
            jobs.insert(nulError, at: 600)
            jobs.insert(hugeNumber, at: 900)
            try await world.publish(jobs)
            try await withConsumer(world, handlers: handlers) { _ in
                try await TestServices.waitUntil("every job has its row and the queue is empty") {
                    let rows = try await world.count("SELECT count(*) FROM job_runs WHERE status IN ('succeeded', 'failed')")
                    let left = try await world.depth(Tier.free.queueName)
                    return rows == jobs.count && left == 0
                }
            }
            let rows = Dictionary(uniqueKeysWithValues: try await world.rows().map { ($0.id, $0) })
            #expect(rows[nulResult.id]?.status == "succeeded")
            #expect(rows[nulResult.id]?.result == #"{"kept": "\\u0000", "note": "bad�input"}"#,
                    "the NUL escape became U+FFFD; an escaped backslash before u0000 was left alone")
            #expect(rows[nulError.id]?.status == "failed")
            #expect(rows[nulError.id]?.error == "bad\u{FFFD}input")
            #expect(rows[hugeNumber.id]?.status == "succeeded")
            #expect(rows[hugeNumber.id]?.result == #""{\"n\": 1e200000}""#, "stored as a JSON string of its text")
            // What was changed is recorded with the event.
            let details = try await world.pool.query("""
                SELECT job_id, detail->>'sanitized', detail->>'result_stored_as_text' FROM message_logs
                WHERE detail ? 'sanitized' OR detail ? 'result_stored_as_text'
                """).rows
            let notes = Dictionary(uniqueKeysWithValues: try details.map { (try $0.uuid(0), ($0[1], $0[2])) })
            #expect(notes[nulResult.id]?.0 == "result")
            #expect(notes[nulError.id]?.0 == "error")
            #expect(notes[hugeNumber.id]?.1?.contains("22003") == true)
        }
    }

    /// A row Postgres refuses in every form (here a CHECK constraint a DBA added) is
    /// dead-lettered with the reason; the thousand around it are written and acked.
    @Test func anOutcomeRefusedInEveryFormIsDeadLetteredAndTheRestAreAcked() async throws {
        try await withWorld { world in
            try await world.pool.query("ALTER TABLE job_runs ADD CONSTRAINT no_refused_jobs CHECK (type <> 'test.refused')")
            var handlers = HandlerRegistry.builtIn
            try handlers.register(RefusedHandler())
            let refused = job(RefusedHandler.jobType)
            var jobs = (0..<1_000).map { _ in job("noop") }
            jobs.insert(refused, at: 500)
            try await world.publish(jobs)
            let started = ContinuousClock.now
            try await withConsumer(world, handlers: handlers) { _ in
                try await TestServices.waitUntil("the others written, the refused one dead-lettered, the queue empty") {
                    let rows = try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'")
                    let dead = try await world.depth(Topology.deadQueue)
                    let left = try await world.depth(Tier.free.queueName)
                    return rows == 1_000 && dead == 1 && left == 0
                }
            }
            TestServices.logger.info("1,000 rows and one dead letter", metadata: ["ms": "\((ContinuousClock.now - started).milliseconds)"])
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE type = 'test.refused'") == 0)
            let dead = try await world.drain(Topology.deadQueue, expecting: 1)
            #expect(dead.first?.properties.messageID == refused.id.lowercasedString)
            #expect(dead.first?.properties.headers[JobEnvelope.Header.deadReason]?.stringValue == "unstorable-outcome")
            #expect(dead.first?.properties.headers[JobEnvelope.Header.lastError]?.stringValue?.contains("no_refused_jobs") == true)
        }
    }

    /// A handler that ignores cancellation is abandoned after its timeout and `abandonAfter`:
    /// its slot goes to the next job and its delivery stays unacked (no row, no retry).
    @Test func aHandlerThatIgnoresCancellationIsAbandonedAndFreesItsSlot() async throws {
        try await withWorld { world in
            let stubborn = StubbornHandler()
            var handlers = HandlerRegistry.builtIn
            try handlers.register(stubborn)
            let stuck = job(StubbornHandler.jobType)
            let after = job("noop")
            try await world.publish([stuck, after])
            try await withConsumer(world, handlers: handlers, configure: {
                $0.concurrency = 1
                $0.abandonAfter = .milliseconds(300)
            }) { _ in
                try await TestServices.waitUntil("the job behind the stubborn one ran in its slot") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 1
                }
            }
            #expect(stubborn.started == 1)
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE job_id = '\(stuck.id.lowercasedString)' AND status <> 'running'") == 0,
                    "never settled: no retry, no outcome")
            // Unacked, so back on the queue once the consumer's connection closed.
            try await TestServices.waitUntil("the abandoned delivery is back on the queue") {
                try await world.depth(Tier.free.queueName) == 1
            }
            stubborn.release()
        }
    }
}

/// `{"result": <json>}` succeeds with that result; `{"fail": "<text>"}` fails for good with it.
struct EchoHandler: JobHandler {
    static let jobType = "test.echo"
    let type = jobType
    func run(_ context: JobContext) async -> JobOutcome {
        let bytes = context.job.payload
        guard let members = try? JSONScanner.objectMembers(bytes) else { return .permanentFailure(error: "not an object") }
        for member in members {
            switch member.key {
            case "result": return .success(result: Array(bytes[member.value]))
            case "fail": return .permanentFailure(error: (try? JSONScanner.string(bytes, at: member.value)) ?? "?")
            default: continue
            }
        }
        return .success
    }
}

/// Succeeds: its row is what the test's CHECK constraint refuses.
struct RefusedHandler: JobHandler {
    static let jobType = "test.refused"
    let type = jobType
    func run(_ context: JobContext) async -> JobOutcome { .success }
}

/// Ignores cancellation: blocks a thread-free wait until the test releases it, with a 200 ms timeout.
final class StubbornHandler: JobHandler {
    static let jobType = "test.stubborn"
    let type = jobType
    var timeout: Duration { .milliseconds(200) }
    private let state = Mutex((started: 0, released: false, waiters: [CheckedContinuation<Void, Never>]()))

    var started: Int { state.withLock { $0.started } }

    func release() {
        let waiters = state.withLock { state in
            state.released = true
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func run(_ context: JobContext) async -> JobOutcome {
        // A continuation with no cancellation handler: cancelling the task does not end it.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let released = state.withLock { state -> Bool in
                state.started += 1
                if !state.released { state.waiters.append(continuation) }
                return state.released
            }
            if released { continuation.resume() }
        }
        return .success
    }
}

/// One lineage per job: an older delivery of a job that has moved on never runs.
extension ConsumerIntegrationTests {
    /// Attempt 1 fails and its retry (seq 1) is confirmed and recorded, but the ack of attempt
    /// 1 is lost with the connection, so attempt 1 comes back redelivered. On main it ran again
    /// (its row was `retrying`, not terminal): a second retry, two lineages of one job.
    @Test func aRedeliveryOfAnAttemptAlreadyRetriedIsSupersededAndNeverRuns() async throws {
        try await withWorld { world in
            let flaky = FailingOnceHandler()
            var handlers = HandlerRegistry.builtIn
            try handlers.register(flaky)
            let first = job(FailingOnceHandler.jobType)
            try await world.publish([first])
            // A long retry delay keeps the retry parked in warren.retry.30s while the test works.
            let slowRetry: (inout ConsumerConfiguration) -> Void = {
                $0.retry = RetryPolicy(maxAttempts: 3, backoff: Backoff(base: .seconds(30), cap: .seconds(30), floor: .seconds(30)))
            }
            try await withConsumer(world, handlers: handlers, configure: slowRetry) { _ in
                try await TestServices.waitUntil("attempt 1 failed and its retry is recorded") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'retrying' AND seq = 1") == 1
                }
            }
            #expect(flaky.runs(of: first.id) == 1)
            #expect(try await world.depth("warren.retry.30s") == 1)

            // Attempt 1's message again, flagged redelivered (taken unacked, connection dropped).
            try await world.redeliver(first)
            try await withConsumer(world, handlers: handlers, configure: slowRetry) { _ in
                try await TestServices.waitUntil("the stale delivery was recorded as superseded and acked") {
                    try await world.duplicatesAcked(1)
                }
            }
            #expect(flaky.runs(of: first.id) == 1, "the superseded attempt did not run")
            #expect(try await world.depth("warren.retry.30s") == 1, "no second retry: one lineage")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE status = 'retrying' AND seq = 1") == 1)
        }
    }

    /// A duplicate of a message that is running right now (a second copy, not redelivered)
    /// waits for nothing and never runs; the running one finishes.
    @Test func aSecondCopyOfARunningJobDoesNotRunBesideIt() async throws {
        try await withWorld { world in
            let gate = StubbornHandler()
            var handlers = HandlerRegistry.builtIn
            try handlers.register(gate)
            var running = job(StubbornHandler.jobType)
            running.seq = 1  // a republished message: its start is claimed
            try await world.publish([running])
            try await withConsumer(world, handlers: handlers, configure: { $0.abandonAfter = .seconds(60) }) { _ in
                try await TestServices.waitUntil("the first copy runs") { gate.started == 1 }
                try await world.publish([running])
                try await TestServices.waitUntil("the second copy was recorded as a duplicate and acked") {
                    try await world.duplicatesAcked(1)
                }
                #expect(gate.started == 1)
                gate.release()
            }
        }
    }
}

/// Fails the first run of each job (retryable), succeeds after; counts runs per job.
final class FailingOnceHandler: JobHandler {
    static let jobType = "test.fail-once"
    let type = jobType
    private let counts = Mutex([UUID: Int]())

    func runs(of job: UUID) -> Int { counts.withLock { $0[job] ?? 0 } }

    func run(_ context: JobContext) async -> JobOutcome {
        let runs = counts.withLock { counts -> Int in
            counts[context.job.id, default: 0] += 1
            return counts[context.job.id]!
        }
        return runs == 1 ? .retry("first run fails") : .success
    }
}

/// The admin port comes first: a consumer whose port is taken stops before it holds any work.
extension ConsumerIntegrationTests {
    /// On main the consumer subscribed while its admin server was still binding, so it had
    /// taken (and could run) jobs when it died of `bind(...): Address already in use`, a
    /// message that named neither the port nor how to pick another.
    @Test func aConsumerWhoseAdminPortIsTakenExitsNamingItAndTakesNoJob() async throws {
        try await withWorld { world in
            let squatter = try TCPProxy(upstreamPort: 9)  // only its listening socket matters
            defer { squatter.cut() }
            let waiting = job("noop")
            try await world.publish([waiting])
            let run = try await Products.run("consumer", ["--tier", "free", "--admin-port", "\(squatter.port)"],
                                             environment: world.environment.merging(["WARREN_ADMIN_HOST": "127.0.0.1"]) { $1 })
            #expect(run.status != 0)
            #expect(run.stderr.contains("admin port \(squatter.port)"), "\(run.stderr.suffix(800))")
            #expect(run.stderr.contains("--admin-port") && run.stderr.contains("WARREN_ADMIN_PORT"), "\(run.stderr.suffix(800))")
            #expect(try await world.count("SELECT count(*) FROM job_runs") == 0, "no job was run or recorded")
            #expect(try await world.depth(Tier.free.queueName) == 1, "the job is still waiting, never taken")
        }
    }
}
