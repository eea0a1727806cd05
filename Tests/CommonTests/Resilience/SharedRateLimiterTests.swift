import Logging
import Synchronization
import Testing
@testable import WarrenJobs
@testable import WarrenPostgres
@testable import WarrenResilience
@testable import WarrenStore

/// The lease logic over a stand-in for the shared bucket (the SQL itself is tested against
/// Postgres in the integration tests): a bucket that never refills, counting its calls.
struct SharedRateLimiterTests {
    final class Bucket: Sendable {
        let state: Mutex<(tokens: Double, calls: Int, failing: Bool)>
        init(tokens: Double) { state = Mutex((tokens, 0, false)) }

        func take(want: Double) throws -> RateBucketStore.Grant {
            try state.withLock { state in
                state.calls += 1
                if state.failing { throw PostgresError(.connectionFailed, function: "test", message: "down") }
                let granted = min(want, state.tokens.rounded(.down))
                state.tokens -= granted
                return RateBucketStore.Grant(granted: granted, remaining: state.tokens)
            }
        }

        var calls: Int { state.withLock { $0.calls } }
    }

    /// Leases live a minute here and a lease request may take as long: on a loaded machine the
    /// defaults (1 s, 500 ms) dropped leases and fell back to local buckets mid-test (95 of 100
    /// admitted once). The tests that are about those times set them.
    func limiter(_ bucket: Bucket, rate: Double = 0.001, burst: Double, leaseLifetime: Duration = .seconds(60),
                 leaseTimeout: Duration = .seconds(60)) -> SharedRateLimiter {
        SharedRateLimiter(limits: [.free: .init(rate: rate, burst: burst)], leaseLifetime: leaseLifetime, leaseTimeout: leaseTimeout,
                          logger: Logger(label: "test")) { _, _, _, want in
            try bucket.take(want: want)
        }
    }

    @Test func replicasTogetherAdmitOnlyWhatTheSharedBucketHolds() async {
        let bucket = Bucket(tokens: 100)
        let replicas = [limiter(bucket, burst: 100), limiter(bucket, burst: 100), limiter(bucket, burst: 100)]
        let admitted = await withTaskGroup(of: Int.self) { group in
            for index in 0..<300 {
                group.addTask { await replicas[index % 3].take(key: "t", tier: .free).allowed ? 1 : 0 }
            }
            return await group.reduce(0, +)
        }
        #expect(admitted == 100, "each replica alone would have admitted 100")
        #expect(bucket.state.withLock { $0.tokens } == 0)
    }

    @Test func aReplicaLeasesSeveralTokensAtATimeAndSharesOneRequest() async {
        let bucket = Bucket(tokens: 10_000)
        let limiter = limiter(bucket, rate: 1_000, burst: 2_000)
        #expect(SharedRateLimiter.leaseSize(.init(rate: 1_000, burst: 2_000)) == 50)
        let admitted = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<500 { group.addTask { await limiter.take(key: "t", tier: .free).allowed ? 1 : 0 } }
            return await group.reduce(0, +)
        }
        #expect(admitted == 500)
        #expect(bucket.calls == 10, "500 requests in leases of 50: \(bucket.calls) calls")
    }

    @Test func anEmptyBucketIsAnsweredLocallyUntilATokenCanExist() async {
        let bucket = Bucket(tokens: 1)
        let limiter = limiter(bucket, rate: 0.01, burst: 1)
        #expect(await limiter.take(key: "t", tier: .free).allowed)
        let refused = await limiter.take(key: "t", tier: .free)
        #expect(!refused.allowed)
        #expect(refused.retryAfter >= 99, "one token at 0.01/s: \(refused.retryAfter) s")
        let calls = bucket.calls
        for _ in 0..<20 { #expect(await !limiter.take(key: "t", tier: .free).allowed) }
        #expect(bucket.calls == calls, "no more round trips while the bucket is known empty")
    }

    @Test func whenTheSharedBucketFailsTheReplicasOwnBucketDecides() async {
        let bucket = Bucket(tokens: 100)
        bucket.state.withLock { $0.failing = true }
        let limiter = limiter(bucket, burst: 3)
        let answers = await (0..<5).asyncMap { _ in await limiter.take(key: "t", tier: .free).allowed }
        #expect(answers == [true, true, true, false, false], "the local bucket of 3, not none and not unlimited")
        #expect(bucket.calls == 1, "one failed call, then a second of the local bucket")
    }

    @Test func aSharedBucketThatDoesNotAnswerIsNotWaitedFor() async {
        let limiter = SharedRateLimiter(limits: [.free: .init(rate: 0.001, burst: 2)], logger: Logger(label: "test")) { _, _, _, _ in
            try await Task.sleep(for: .seconds(3_600))
            return RateBucketStore.Grant(granted: 1, remaining: 0)
        }
        let started = ContinuousClock.now
        let first = await limiter.take(key: "t", tier: .free)
        #expect(first.allowed, "the replica's own bucket decided")
        #expect(ContinuousClock.now - started < .seconds(10), "the hung lease was not awaited")
    }

    @Test func keysHaveBucketsOfTheirOwn() async {
        let shared = Bucket(tokens: 1)
        let other = Bucket(tokens: 1)
        let limiter = SharedRateLimiter(limits: [.free: .init(rate: 0.001, burst: 1)], logger: Logger(label: "test")) { key, _, _, want in
            try (key == "a" ? shared : other).take(want: want)
        }
        #expect(await limiter.take(key: "a", tier: .free).allowed)
        #expect(await !limiter.take(key: "a", tier: .free).allowed)
        #expect(await limiter.take(key: "b", tier: .free).allowed)
    }
}

extension Sequence where Element: Sendable {
    func asyncMap<T>(_ transform: (Element) async -> T) async -> [T] {
        var out: [T] = []
        for element in self { out.append(await transform(element)) }
        return out
    }
}
