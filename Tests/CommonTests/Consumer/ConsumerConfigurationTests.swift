import Testing
@testable import WarrenConfig
@testable import WarrenJobs
@testable import WarrenSupport
@testable import WarrenWorker

@Suite struct RetryPolicyTests {
    @Test(arguments: [
        (0.2, "1s"), (1.0, "1s"), (2.0, "1s"), (2.5, "5s"), (5.0, "5s"), (12.0, "5s"), (13.0, "30s"),
        (60.0, "30s"), (70.0, "2m"), (200.0, "2m"), (300.0, "10m"), (3_000.0, "1h"), (86_400.0, "1h"),
    ])
    func picksTheNearestDelayQueueOnALogScale(_ seconds: Double, _ label: String) {
        #expect(RetryPolicy.nearestDelay(to: .milliseconds(Int64(seconds * 1_000))).label == label)
    }

    @Test func attemptsRunOutAtTheMaximum() {
        let policy = RetryPolicy(maxAttempts: 3)
        #expect(policy.allowsRetry(after: 1))
        #expect(policy.allowsRetry(after: 2))
        #expect(!policy.allowsRetry(after: 3))
        #expect(RetryPolicy(maxAttempts: 0).maxAttempts == 1)
    }

    @Test func aHandlersRetryAfterWinsOverTheBackoff() {
        var generator = SystemRandomNumberGenerator()
        let policy = RetryPolicy(maxAttempts: 5)
        #expect(policy.delayQueue(after: 1, retryAfter: .seconds(600), using: &generator).label == "10m")
        // Without one, the first retry's backoff is at most the base (1 s): the 1 s queue.
        #expect(policy.delayQueue(after: 1, retryAfter: nil, using: &generator).label == "1s")
    }
}

@Suite struct ConsumerConfigurationTests {
    @Test func tierDefaultsGiveThePaidTiersMore() {
        let enterprise = ConsumerConfiguration(tier: .enterprise)
        let free = ConsumerConfiguration(tier: .free)
        #expect(enterprise.prefetch > free.prefetch)
        #expect(enterprise.concurrency > free.concurrency)
        #expect(free.prefetch > UInt16(free.concurrency), "prefetch leaves room for a batch awaiting its write")
    }

    @Test func readsTheEnvironment() throws {
        let configuration = try ConsumerConfiguration(tier: .premium, environment: [
            "WARREN_CONCURRENCY": "7", "WARREN_PREFETCH": "70", "WARREN_BATCH_MAX_ROWS": "50", "WARREN_BATCH_MAX_DELAY_MS": "2",
            "WARREN_SHUTDOWN_GRACE_SECONDS": "1.5", "WARREN_RETRY_MAX_ATTEMPTS": "4", "WARREN_RETRY_BASE_SECONDS": "0.5",
            "WARREN_RETRY_MAX_ATTEMPTS_BY_TYPE": "email.send=9, report.build=1", "WARREN_CONSUMER_ID": "c-1",
        ])
        #expect(configuration.concurrency == 7)
        #expect(configuration.prefetch == 70)
        #expect(configuration.batchMaxRows == 50)
        #expect(configuration.batchMaxDelay == .milliseconds(2))
        #expect(configuration.shutdownGrace == .milliseconds(1_500))
        #expect(configuration.retryPolicy(for: "noop").maxAttempts == 4)
        #expect(configuration.retryPolicy(for: "email.send").maxAttempts == 9)
        #expect(configuration.retryPolicy(for: "report.build").maxAttempts == 1)
        #expect(configuration.retry.backoff.base == .milliseconds(500))
        #expect(configuration.consumerID == "c-1")
        #expect(configuration.keepPayloads == .failed, "by default only jobs that did not simply succeed keep their message")
        #expect(try ConsumerConfiguration(tier: .free, environment: ["WARREN_KEEP_PAYLOADS": "all"]).keepPayloads == .all)
    }

    @Test(arguments: [
        ("WARREN_CONCURRENCY", "0"), ("WARREN_PREFETCH", "70000"), ("WARREN_SHUTDOWN_GRACE_SECONDS", "soon"),
        ("WARREN_RETRY_MAX_ATTEMPTS_BY_TYPE", "email.send"), ("WARREN_RETRY_MAX_ATTEMPTS_BY_TYPE", "a=0"),
        ("WARREN_SLOW_JOB_SECONDS_BY_TYPE", "report.build"), ("WARREN_SLOW_JOB_SECONDS_BY_TYPE", "a=-1"),
        ("WARREN_SLOW_JOB_SECONDS_BY_TYPE", "=5"), ("WARREN_SLOW_JOB_SECONDS", "soon"), ("WARREN_PROGRESS_FLUSH_MS", "5"),
        ("WARREN_STALL_SECONDS", "0"), ("WARREN_KEEP_PAYLOADS", "some"),
    ])
    func badValuesNameTheirVariable(_ key: String, _ value: String) {
        let error = #expect(throws: SettingsError.self) { _ = try ConsumerConfiguration(tier: .free, environment: [key: value]) }
        #expect(error?.key == key)
    }
}
