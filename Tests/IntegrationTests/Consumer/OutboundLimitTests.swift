import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres
import WarrenResilience
import WarrenSupport
import WarrenWorker

/// Fleet-wide outbound limits: jobs of a limited type, taken by two consumers, start no faster
/// than the limit's rate, spend no attempt waiting, and hold no slot while they wait.
@Suite(.enabled(if: TestServices.enabled))
struct OutboundLimitTests {
    @Test func twoConsumersTogetherStartJobsOfALimitedTypeAtMostAtItsRate() async throws {
        let base = ConsumerIntegrationTests()
        let limits = try OutboundLimits(environment: ["WARREN_RATE_LIMITS": "probe=4/s", "WARREN_RATE_LIMITED_TYPES": "noop=probe"])
        try await base.withWorld { world in
            try await base.withConsumer(world, configure: { $0.outboundLimits = limits; $0.consumerID = "one" }) { _ in
                try await base.withConsumer(world, configure: { $0.outboundLimits = limits; $0.consumerID = "two" }) { _ in
                    try await world.publish((0..<40).map { _ in base.job("noop") })
                    // Not limited: runs at once even behind the limited backlog.
                    try await world.publish([base.job("sleep", #"{"ms":1}"#)])
                    try await TestServices.waitUntil(timeout: .seconds(30), "the unlimited job ran while the limited ones waited") {
                        try await world.count("SELECT count(*) FROM job_runs WHERE type = 'sleep' AND status = 'succeeded'") == 1
                    }
                    #expect(try await world.count("SELECT count(*) FROM job_runs WHERE type = 'noop' AND status = 'succeeded'") < 40)
                    try await TestServices.waitUntil(timeout: .seconds(120), "all 40 limited jobs ran") {
                        try await world.count("SELECT count(*) FROM job_runs WHERE type = 'noop' AND status = 'succeeded'") == 40
                    }
                }
            }
            let starts = try await world.pool.query("""
                SELECT extract(epoch FROM started_at)::float8 FROM job_runs WHERE type = 'noop' ORDER BY started_at
                """).rows.map { try $0.double(0) }
            // A token bucket of 4 at 4/s: the tokens of any n consecutive jobs span at least
            // (n - 4) / 4 s. A job starts at most 20 ms before its token and at most one token
            // interval (250 ms) after it, so their starts span at least that less 0.3 s (30 ms
            // for the clocks of Postgres and the consumer).
            var violations: [String] = []
            for first in starts.indices {
                for last in starts.indices where last > first {
                    let least = Double(last - first + 1 - 4) / 4
                    if starts[last] - starts[first] < least - 0.3 {
                        violations.append("jobs \(first)...\(last) within \(starts[last] - starts[first]) s, at least \(least) s due")
                    }
                }
            }
            #expect(violations.isEmpty, "\(violations.prefix(5))")
            #expect(starts.last! - starts[0] >= 9 - 0.05, "40 jobs at 4/s after a burst of 4 take at least 9 s")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE type = 'noop' AND attempts <> 1") == 0,
                    "waiting for its turn spends no attempt")
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE type = 'noop' AND consumer_id = 'one'") > 0)
            #expect(try await world.count("SELECT count(*) FROM job_runs WHERE type = 'noop' AND consumer_id = 'two'") > 0)
            #expect(try await world.count("SELECT count(*) FROM message_logs WHERE event = 'retried' AND detail->>'deferred' = 'rate limit probe'") > 0)
        }
    }

    @Test func aTurnThatPassedLongAgoIsReservedAgainNotRunOn() async throws {
        let base = ConsumerIntegrationTests()
        let limits = try OutboundLimits(environment: ["WARREN_RATE_LIMITS": "slow=1/h", "WARREN_RATE_LIMITED_TYPES": "noop=slow"])
        try await base.withWorld { world in
            try await base.withConsumer(world, configure: { $0.outboundLimits = limits }) { _ in
                // The bucket's one token goes to the first job.
                let first = base.job("noop")
                try await world.publish([first])
                try await TestServices.waitUntil(timeout: .seconds(30), "the first job ran") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 1
                }
                // A job back from a backed-up queue with its turn a minute past: running on it
                // would go past the limit (the next token is an hour away).
                let late = base.job("noop")
                var message = late.outgoingMessage
                message.properties.headers[OutboundLimits.turnHeader] = .string(String(Timestamp.now().microseconds / 1_000 - 60_000))
                for result in await world.connection.publish([message]) { try result.get() }
                try await TestServices.waitUntil(timeout: .seconds(30), "the late job was deferred") {
                    try await world.count("""
                        SELECT count(*) FROM message_logs WHERE job_id = '\(late.id.lowercasedString)' AND detail->>'deferred' = 'rate limit slow'
                        """) == 1
                }
                #expect(try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 1, "it did not run")
            }
        }
    }

    @Test func whenTheTokenCannotBeReservedTheJobWaitsAndRunsNothing() async throws {
        let base = ConsumerIntegrationTests()
        let limits = try OutboundLimits(environment: ["WARREN_RATE_LIMITS": "probe=100/s", "WARREN_RATE_LIMITED_TYPES": "noop=probe"])
        try await base.withWorld { world in
            // Postgres refuses the reservation (its table is gone).
            try await world.pool.query("DROP TABLE rate_buckets")
            try await base.withConsumer(world, configure: { $0.outboundLimits = limits }) { _ in
                let job = base.job("noop")
                try await world.publish([job])
                try await TestServices.waitUntil(timeout: .seconds(30), "the job was deferred") {
                    try await world.count("""
                        SELECT count(*) FROM message_logs WHERE job_id = '\(job.id.lowercasedString)'
                          AND detail->>'deferred' = 'rate limit probe unavailable'
                        """) == 1
                }
                #expect(try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 0, "it did not run unlimited")
                #expect(try await world.count("SELECT count(*) FROM job_runs WHERE attempts <> 1") == 0, "no attempt spent")
            }
        }
    }
}
