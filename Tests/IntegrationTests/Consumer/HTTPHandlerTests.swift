import Foundation
import Testing
@testable import WarrenJobs
@testable import WarrenPostgres
import WarrenSupport

/// `consumer` with `WARREN_HTTP_HANDLERS` calling the sample receiver of the docs
/// (`Examples/http-receiver/receiver.py`, plain Python): every status class, a forged signature
/// refused, and the destination's breaker opening. Real broker, Postgres and receiver.
@Suite(.enabled(if: TestServices.enabled))
struct HTTPHandlerTests {
    static let secret = "s3cret-shared-with-the-receiver"
    static let receiverScript = Products.repositoryRoot.appendingPathComponent("Examples/http-receiver/receiver.py").path

    /// The sample receiver on a free port; each call it answered is a line on its stderr.
    func receiver(secret: String = secret) async throws -> (process: RunningProduct, port: Int) {
        let process = try RunningProduct(executable: URL(fileURLWithPath: "/usr/bin/python3"), [Self.receiverScript, "0"],
                                         environment: ["WARREN_HTTP_HANDLER_SECRET": secret])
        return (process, try await process.listeningPort("port"))
    }

    func calls(_ receiver: RunningProduct, answered status: Int? = nil) -> Int {
        receiver.stderr.split(separator: "\n").filter { line in
            line.contains("\"POST /jobs HTTP/1.1\"") && (status.map { line.contains("\" \($0) ") } ?? true)
        }.count
    }

    func consumer(_ world: ConsumerIntegrationTests.World, port: Int, secret: String = secret,
                  extra: [String: String] = [:]) throws -> RunningProduct {
        try RunningProduct("consumer", ["--tier", "free", "--concurrency", "1"], environment: world.environment.merging([
            "WARREN_HTTP_HANDLERS": "demo.call=http://127.0.0.1:\(port)/jobs,demo.nowhere=http://127.0.0.1:1/jobs",
            "WARREN_HTTP_HANDLER_SECRET": secret, "WARREN_RETRY_MAX_ATTEMPTS": "2",
            "WARREN_RETRY_BASE_SECONDS": "0.01", "WARREN_RETRY_CAP_SECONDS": "0.01",
        ].merging(extra) { $1 }) { $1 })
    }

    func row(_ world: ConsumerIntegrationTests.World, _ id: UUID) async throws -> (status: String, attempts: Int, error: String?, result: String?) {
        let rows = try await world.pool.query("SELECT status, attempts, error, result::text FROM job_runs WHERE job_id = $1", [id]).rows
        return try #require(rows.first.map { (try $0.string(0), try $0.int(1), $0[2], $0[3]) })
    }

    @Test func eachStatusClassHasItsOutcome() async throws {
        let (receiver, port) = try await receiver()
        defer { receiver.signal(SIGKILL) }
        try await ConsumerIntegrationTests().withWorld { world in
            let payloads = [#"{"report": "daily"}"#, #"{"status": 422}"#, #"{"status": 503, "retry_after": 1}"#,
                            #"{"status": 500}"#, #"{"status": 429}"#]
            var jobs = payloads.map { JobEnvelope(type: "demo.call", tier: .free, payload: Array($0.utf8)) }
            jobs.append(JobEnvelope(type: "demo.nowhere", tier: .free, payload: Array("{}".utf8)))
            try await world.publish(jobs)
            let consumer = try consumer(world, port: port)
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(90), "every job reached its end") {
                try await world.count("SELECT count(*) FROM job_runs WHERE status IN ('succeeded', 'failed', 'dead')") == jobs.count
            }
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)

            let ok = try await row(world, jobs[0].id)
            #expect(ok.status == "succeeded" && ok.attempts == 1)
            #expect(ok.result == #"{"done": {"report": "daily"}, "job_id": "\#(jobs[0].id.lowercasedString)"}"#,
                    "the 2xx JSON body is the result, and the receiver saw the job's id: \(ok)")
            let refused = try await row(world, jobs[1].id)
            #expect(refused.status == "failed" && refused.attempts == 1 && refused.error?.contains("answered 422") == true, "\(refused)")
            for (index, status) in [(2, 503), (3, 500), (4, 429)] {
                let retried = try await row(world, jobs[index].id)
                #expect(retried.status == "dead" && retried.attempts == 2 && retried.error?.contains("answered \(status)") == true,
                        "retried, then dead: \(retried)")
                #expect(calls(receiver, answered: status) == 2, "two calls answered \(status)")
            }
            let nowhere = try await row(world, jobs[5].id)
            #expect(nowhere.status == "dead" && nowhere.attempts == 2 && nowhere.error?.contains("cannot reach") == true, "\(nowhere)")
            #expect(calls(receiver) == 1 + 1 + 2 + 2 + 2, "one call per attempt")
        }
    }

    @Test func aCallPastItsTimeoutIsRetriedAndCountsAgainstTheDestination() async throws {
        let (receiver, port) = try await receiver()
        defer { receiver.signal(SIGKILL) }
        try await ConsumerIntegrationTests().withWorld { world in
            let slow = JobEnvelope(type: "demo.call", tier: .free, payload: Array(#"{"sleep": 3}"#.utf8))
            try await world.publish([slow])
            let consumer = try consumer(world, port: port, extra: ["WARREN_HTTP_HANDLER_TIMEOUT_SECONDS": "0.5"])
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "the slow job is dead after two attempts") {
                try await world.count("SELECT count(*) FROM job_runs WHERE status = 'dead'") == 1
            }
            let row = try await row(world, slow.id)
            #expect(row.attempts == 2 && row.error?.contains("timed out") == true, "\(row)")
            #expect(try await world.count("""
                SELECT count(*) FROM message_logs WHERE job_id = '\(slow.id.lowercasedString)'::uuid AND event = 'retried'
                """) == 1, "the first timeout was retried")
        }
    }

    @Test func aForgedSignatureIsRefusedByTheReceiver() async throws {
        let (receiver, port) = try await receiver()
        defer { receiver.signal(SIGKILL) }
        try await ConsumerIntegrationTests().withWorld { world in
            let job = JobEnvelope(type: "demo.call", tier: .free, payload: Array(#"{"transfer": 1000000}"#.utf8))
            try await world.publish([job])
            let forger = try consumer(world, port: port, secret: "not-the-shared-secret-at-all")
            defer { forger.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "the forged call was answered") {
                try await world.count("SELECT count(*) FROM job_runs WHERE status = 'failed'") == 1
            }
            let forged = try await row(world, job.id)
            #expect(forged.error?.contains(#"answered 401: {"error": "bad signature"}"#) == true, "\(forged)")
            #expect(calls(receiver, answered: 401) == 1 && calls(receiver, answered: 200) == 0, "the receiver did no work")
        }
    }

    @Test func theDestinationsBreakerOpensAndLaterJobsWaitWithoutACall() async throws {
        let (receiver, port) = try await receiver()
        defer { receiver.signal(SIGKILL) }
        try await ConsumerIntegrationTests().withWorld { world in
            let jobs = (0..<10).map { _ in JobEnvelope(type: "demo.call", tier: .free, payload: Array(#"{"status": 500}"#.utf8)) }
            try await world.publish(jobs)
            // One attempt each: five failures of the last ten open the breaker for a minute.
            let consumer = try consumer(world, port: port, extra: ["WARREN_RETRY_MAX_ATTEMPTS": "1", "WARREN_NOTIFY_BREAKER_OPEN_SECONDS": "60"])
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(60), "five jobs dead, five deferred by the open breaker") {
                let dead = try await world.count("SELECT count(*) FROM job_runs WHERE status = 'dead'")
                let deferred = try await world.count("""
                    SELECT count(DISTINCT job_id) FROM message_logs WHERE event = 'retried' AND detail ? 'deferred'
                    """)
                return dead == 5 && deferred == 5
            }
            #expect(calls(receiver) == 5, "no call while the breaker is open")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE status = 'dead'") == 5,
                    "a deferred job spent no attempt: with one attempt each, a spent one would be dead")
        }
    }
}
