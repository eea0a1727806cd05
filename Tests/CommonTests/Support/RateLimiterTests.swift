import Testing
@testable import WarrenConfig
@testable import WarrenJobs
@testable import WarrenResilience

@Suite struct TokenBucketTests {
    @Test func allowsABurstThenRefillsAtTheRate() {
        var bucket = TokenBucket(rate: 2, burst: 3, now: 0)
        #expect((0..<3).map { _ in bucket.take(now: 0).allowed } == [true, true, true])
        let refused = bucket.take(now: 0)
        #expect(!refused.allowed)
        #expect(refused.retryAfter == 1)
        #expect(refused.remaining == 0)
        #expect(refused.reset == 2, "3 tokens at 2/s")
        #expect(bucket.take(now: 0.5).allowed, "half a second refills one token")
        #expect(!bucket.take(now: 0.5).allowed)
        #expect(bucket.take(now: 100).remaining == 2, "never more than the burst")
    }

    @Test func slowRatesSayHowLongToWait() {
        var bucket = TokenBucket(rate: 0.1, burst: 1, now: 0)
        #expect(bucket.take(now: 0).allowed)
        #expect(bucket.take(now: 1).retryAfter == 9)
    }

    @Test func limitsComeFromTheEnvironmentByTier() throws {
        let limits = try RateLimiter.limits(environment: ["WARREN_RATE_LIMIT_FREE": "5, 10"])
        #expect(limits[.free] == RateLimiter.Limit(rate: 5, burst: 10))
        #expect(limits[.enterprise] == RateLimiter.defaults[.enterprise])
        #expect(throws: SettingsError.self) { try RateLimiter.limits(environment: ["WARREN_RATE_LIMIT_PREMIUM": "fast"]) }
        #expect(RateLimiter.defaults[.enterprise]!.rate > RateLimiter.defaults[.premium]!.rate)
        #expect(RateLimiter.defaults[.premium]!.rate > RateLimiter.defaults[.free]!.rate)
    }

    @Test func bucketsArePerKey() {
        let limiter = RateLimiter(limits: [.free: .init(rate: 0.001, burst: 1)])
        #expect(limiter.take(key: "a", tier: .free).allowed)
        #expect(!limiter.take(key: "a", tier: .free).allowed)
        #expect(limiter.take(key: "b", tier: .free).allowed)
    }
}
