import Logging
import Metrics
import Synchronization
import WarrenJobs
import WarrenStore
import WarrenSupport

/// Per-key token buckets that hold across every `producer serve` replica.
///
/// The bucket lives in Postgres (``RateBucketStore``). A replica does not ask it for every
/// request: it leases a few tokens at a time (a twentieth of the smaller of rate and burst,
/// at least one) and spends them locally; a lease unspent after a second is dropped. Tokens
/// leave the shared bucket only when leased, so N replicas together never admit more than the
/// bucket allows; what a dropped lease held is lost (the fleet admits a little less, never
/// more). Replicas of one key asking at once share one lease request. When the bucket is
/// empty, the replica answers 429 locally until a token can exist again.
///
/// If Postgres cannot be asked, or does not answer within 500 ms, the replica falls back to its own in-memory bucket
/// (``RateLimiter``) for a second at a time, logging it and counting
/// `warren_rate_limit_fallback_total`: limits per replica rather than none, and the API stays
/// up.
package final class SharedRateLimiter: Sendable {
    package typealias Take = @Sendable (_ key: String, _ rate: Double, _ burst: Double, _ want: Double) async throws -> RateBucketStore.Grant

    private struct Lease {
        var tokens: Double
        /// The shared bucket's tokens left when the lease was taken.
        var shared: Double
        var expires: ContinuousClock.Instant
    }

    private struct State {
        var leases: [String: Lease] = [:]
        /// Keys whose shared bucket was empty: no token before then.
        var emptyUntil: [String: ContinuousClock.Instant] = [:]
        var fetching: [String: Task<Void, Never>] = [:]
        /// While set, Postgres failed: the local buckets decide.
        var fallbackUntil: ContinuousClock.Instant?
    }

    package let limits: [Tier: RateLimiter.Limit]
    private let take: Take
    private let local: RateLimiter
    private let logger: Logger
    private let state = Mutex(State())
    /// How long a lease's unspent tokens may be spent (1 s) ...
    private let leaseLifetime: Duration
    /// ... and how long a lease request may take before the replica's own bucket decides (500 ms).
    private let leaseTimeout: Duration

    private struct LeaseTimeout: Error, CustomStringConvertible {
        var after: Duration
        var description: String { "the shared bucket did not answer within \(after)" }
    }

    /// `body`'s answer, or ``LeaseTimeout`` once `timeout` passed, without waiting for `body`.
    private static func within<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let race = FirstAnswer<T>()
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            race.set(continuation)
            let work = Task {
                do { race.finish(.success(try await body())) } catch { race.finish(.failure(error)) }
            }
            Task {
                try? await Task.sleep(for: timeout)
                race.finish(.failure(LeaseTimeout(after: timeout)))
                work.cancel()
            }
        }
    }

    /// Resumes a continuation with the first result it is given.
    private final class FirstAnswer<T: Sendable>: Sendable {
        private let continuation = Mutex<CheckedContinuation<T, any Error>?>(nil)

        func set(_ continuation: CheckedContinuation<T, any Error>) { self.continuation.withLock { $0 = continuation } }

        func finish(_ result: Result<T, any Error>) {
            continuation.withLock { continuation -> CheckedContinuation<T, any Error>? in
                defer { continuation = nil }
                return continuation
            }?.resume(with: result)
        }
    }

    package init(limits: [Tier: RateLimiter.Limit] = RateLimiter.defaults, leaseLifetime: Duration = .seconds(1),
                 leaseTimeout: Duration = .milliseconds(500), logger: Logger, take: @escaping Take) {
        self.leaseLifetime = leaseLifetime
        self.leaseTimeout = leaseTimeout
        self.limits = limits
        self.take = take
        self.local = RateLimiter(limits: limits)
        self.logger = logger
    }

    package convenience init(limits: [Tier: RateLimiter.Limit] = RateLimiter.defaults, store: RateBucketStore,
                             leaseTimeout: Duration = .milliseconds(500), logger: Logger) {
        self.init(limits: limits, leaseTimeout: leaseTimeout, logger: logger) { key, rate, burst, want in
            try await store.take(key: "token:" + key, rate: rate, burst: burst, want: want)
        }
    }

    /// How many tokens one lease asks for.
    static func leaseSize(_ limit: RateLimiter.Limit) -> Double { max(1, (min(limit.rate, limit.burst) / 20).rounded(.down)) }

    /// Takes one request's token for `key`.
    package func take(key: String, tier: Tier) async -> TokenBucket.Decision {
        let limit = limits[tier] ?? RateLimiter.defaults[tier]!
        // Each round either decides or waits for a lease request (which grants, finds the
        // bucket empty, or fails). Under contention this replica's other requests may spend a
        // lease first; a request still undecided after 2 s is refused for a second.
        let giveUp = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < giveUp {
            enum Step {
                case decided(TokenBucket.Decision)
                case useLocal
                case wait(Task<Void, Never>)
            }
            let now = ContinuousClock.now
            let step = state.withLock { state -> Step in
                if let until = state.fallbackUntil {
                    if until > now { return .useLocal }
                    state.fallbackUntil = nil
                }
                if var lease = state.leases[key], lease.expires > now, lease.tokens >= 1 {
                    lease.tokens -= 1
                    state.leases[key] = lease
                    return .decided(Self.allowed(lease, limit))
                }
                if let until = state.emptyUntil[key], until > now { return .decided(Self.denied(until - now, limit)) }
                if let task = state.fetching[key] { return .wait(task) }
                let task = Task { await self.lease(key: key, limit: limit) }
                state.fetching[key] = task
                return .wait(task)
            }
            switch step {
            case .decided(let decision): return decision
            case .useLocal: return local.take(key: key, tier: tier)
            case .wait(let task): await task.value
            }
        }
        return Self.denied(.seconds(1), limit)
    }

    /// Asks the shared bucket for a lease and records the answer.
    private func lease(key: String, limit: RateLimiter.Limit) async {
        let grant: RateBucketStore.Grant?
        do {
            // A slow answer counts as none: requests wait at most this for a lease (the query
            // is left to finish on its own; what it grants then is lost, never over-admitted).
            grant = try await Self.within(leaseTimeout) { try await self.take(key, limit.rate, limit.burst, Self.leaseSize(limit)) }
        } catch {
            grant = nil
            Counter(label: "warren_rate_limit_fallback_total").increment()
            logger.warning("rate limit: cannot reach the shared bucket; this replica's own bucket decides for 1 s",
                           metadata: ["error": "\(error)"])
        }
        let now = ContinuousClock.now
        state.withLock { state in
            state.fetching[key] = nil
            guard let grant else {
                state.fallbackUntil = now + .seconds(1)
                return
            }
            if grant.granted >= 1 {
                let left = state.leases[key].flatMap { $0.expires > now ? $0.tokens : nil } ?? 0
                state.leases[key] = Lease(tokens: left + grant.granted, shared: grant.remaining, expires: now + leaseLifetime)
                state.emptyUntil[key] = nil
            } else {
                state.leases[key] = nil
                state.emptyUntil[key] = now + .milliseconds(Int64(((1 - grant.remaining) / limit.rate * 1_000).rounded(.up)))
            }
            if state.leases.count + state.emptyUntil.count > 10_000 {
                state.leases = state.leases.filter { $0.value.expires > now }
                state.emptyUntil = state.emptyUntil.filter { $0.value > now }
            }
        }
    }

    private static func allowed(_ lease: Lease, _ limit: RateLimiter.Limit) -> TokenBucket.Decision {
        let left = lease.shared + lease.tokens
        return TokenBucket.Decision(allowed: true, remaining: Int(left.rounded(.down)), retryAfter: 0,
                                    reset: Int(((limit.burst - left) / limit.rate).rounded(.up)))
    }

    private static func denied(_ wait: Duration, _ limit: RateLimiter.Limit) -> TokenBucket.Decision {
        let seconds = Double(wait.components.seconds) + Double(wait.components.attoseconds) / 1e18
        return TokenBucket.Decision(allowed: false, remaining: 0, retryAfter: max(1, Int(seconds.rounded(.up))),
                                    reset: Int((limit.burst / limit.rate).rounded(.up)))
    }
}
