import Foundation
import Testing
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// The shared token bucket's one statement, against Postgres.
@Suite(.enabled(if: TestServices.enabled))
struct RateBucketStoreTests {
    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    @Test func aNewBucketStartsFullGrantsWholeTokensAndRefillsAtItsRate() async throws {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let store = RateBucketStore(pool: pool)
            let first = try await store.take(key: "k", rate: 0.001, burst: 5.5, want: 3)
            #expect(first == .init(granted: 3, remaining: 2.5))
            let second = try await store.take(key: "k", rate: 0.001, burst: 5.5, want: 3)
            #expect(second.granted == 2, "only whole tokens: \(second)")
            #expect(abs(second.remaining - 0.5) < 0.01)
            let empty = try await store.take(key: "k", rate: 0.001, burst: 5.5, want: 3)
            #expect(empty.granted == 0)
            #expect(try await store.take(key: "other", rate: 0.001, burst: 1, want: 1).granted == 1, "keys are apart")

            // A fast bucket refills: set its last touch a second back.
            // The clock starts before the first take: its statement's now() is where the bucket's time begins.
            let before = ContinuousClock.now
            _ = try await store.take(key: "fast", rate: 100, burst: 1_000, want: 1_000)
            try await pool.query("UPDATE rate_buckets SET updated_at = updated_at - interval '1 second' WHERE key = 'fast'")
            let refilled = try await store.take(key: "fast", rate: 100, burst: 1_000, want: 1_000)
            // One second at 100/s, plus whatever passed between the statements (a loaded machine).
            let passed = Self.seconds(ContinuousClock.now - before)
            #expect(refilled.granted >= 100 && refilled.granted <= (100 * (1 + passed)).rounded(.up) + 1,
                    "one second at 100/s (and \(passed) s more): \(refilled)")
        }
    }

    @Test func concurrentTakersNeverShareATokenOrCreditTimeTwice() async throws {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let store = RateBucketStore(pool: pool)
            // 0.5 tokens a second: over this test's few seconds at most a couple more appear.
            let started = ContinuousClock.now
            let granted = try await withThrowingTaskGroup(of: Double.self) { group in
                for _ in 0..<40 { group.addTask { try await store.take(key: "k", rate: 0.5, burst: 20, want: 1).granted } }
                return try await group.reduce(0, +)
            }
            let elapsed = ContinuousClock.now - started
            let bound = 20 + 0.5 * Double(elapsed.components.seconds + 1)
            #expect(granted >= 20 && granted <= bound.rounded(.down), "\(granted) granted in \(elapsed), at most \(bound)")
        }
    }

    @Test func bucketsIdleForADayArePruned() async throws {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let store = RateBucketStore(pool: pool)
            _ = try await store.take(key: "idle", rate: 1, burst: 1, want: 1)
            _ = try await store.take(key: "busy", rate: 1, burst: 1, want: 1)
            // A bucket with reservations of future tokens: idle or not, it owes them.
            for _ in 0..<5 { _ = try await store.reserve(key: "owed", rate: 0.0001, burst: 1) }
            try await pool.query("UPDATE rate_buckets SET updated_at = now() - interval '25 hours' WHERE key IN ('idle', 'owed')")
            #expect(try await store.prune() == 1)
            let keys = try await pool.query("SELECT key FROM rate_buckets ORDER BY key").rows.map { try $0.string(0) }
            #expect(keys == ["busy", "owed"])
        }
    }

    @Test func reservationsBorrowFromTheFutureInOrder() async throws {
        try await TestServices.withSchema { pool in
            _ = try await Migrator(migrations: Schema.migrations, logger: TestServices.logger).migrate(pool)
            let store = RateBucketStore(pool: pool)
            var waits: [Duration] = []
            let started = ContinuousClock.now
            for _ in 0..<4 { waits.append(try await store.reserve(key: "k", rate: 1, burst: 2)) }
            // Time passing between the statements refills the bucket: the waits shrink by it.
            let passed = Duration.milliseconds(Int64(Self.seconds(ContinuousClock.now - started) * 1_000) + 10)
            #expect(waits[0] == .zero && waits[1] == .zero, "a full bucket of 2: \(waits)")
            #expect(waits[2] > .seconds(1) - passed && waits[2] <= .seconds(1), "the third token a second away: \(waits)")
            #expect(waits[3] > .seconds(2) - passed && waits[3] <= .seconds(2), "the fourth two: \(waits)")
            #expect(waits[3] - waits[2] > .milliseconds(990) - passed, "one token a second apart: \(waits)")
        }
    }
}
