import Synchronization
import Testing
@testable import WarrenSupport
@testable import WarrenWorker

/// Waiting for a concurrency key's slot: a slot given back wakes the longest waiting job of
/// that key only, and freed keys are announced in batches without repeats.
@Suite struct KeyWakeupsTests {
    final class Woken: Sendable {
        let order = Mutex<[Int]>([])
        var value: [Int] { order.withLock { $0 } }
    }

    /// Polls `condition` every few milliseconds for up to 10 s.
    func eventually(_ condition: () -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while !condition() {
            guard ContinuousClock.now < deadline else { return false }
            try await Task.sleep(for: .milliseconds(5))
        }
        return true
    }

    @Test func aFreedSlotWakesTheLongestWaitingJobOfItsKeyOnly() async throws {
        let wakeups = KeyWakeups()
        let woken = Woken()
        var tasks: [Task<Void, Never>] = []
        for index in 0..<3 {
            tasks.append(Task {
                await wakeups.wait("k", upTo: .seconds(600))
                woken.order.withLock { $0.append(index) }
            })
            #expect(try await eventually { wakeups.waiting("k") == index + 1 }, "waiter \(index) is waiting")
        }
        Task { await wakeups.wait("other", upTo: .seconds(600)) }
        #expect(try await eventually { wakeups.waiting("other") == 1 })

        wakeups.wakeOne("k")
        #expect(try await eventually { woken.value == [0] }, "the first to wait")
        #expect(wakeups.waiting("k") == 2 && wakeups.waiting("other") == 1, "the others wait on")
        wakeups.wakeOne("k")
        wakeups.wakeOne("k")
        wakeups.wakeOne("k")  // nobody left: nothing happens
        for task in tasks { await task.value }
        #expect(woken.value == [0, 1, 2])
        wakeups.wakeOne("other")
    }

    @Test func aWaitEndsAfterItsPauseWithoutAWakeUp() async throws {
        let wakeups = KeyWakeups()
        await wakeups.wait("k", upTo: .milliseconds(20))
        #expect(wakeups.waiting("k") == 0)
    }

    @Test func freedKeysAreCollectedWithoutRepeatsAndEndWithTheirReader() async throws {
        let freed = FreedKeys()
        freed.add("a")
        freed.add("b")
        freed.add("a")
        #expect(await freed.next() == ["a", "b"])
        for index in 0..<(FreedKeys.maxPerMessage + 1) { freed.add("key-\(index)") }
        #expect(await freed.next()?.count == FreedKeys.maxPerMessage)
        #expect(await freed.next() == ["key-\(FreedKeys.maxPerMessage)"])
        let reader = Task { await freed.next() }
        #expect(try await eventually { freed.hasReader }, "the reader waits for a key")
        freed.add("c")
        #expect(await reader.value == ["c"])
        let cancelled = Task { await freed.next() }
        cancelled.cancel()
        #expect(await cancelled.value == nil)
        freed.add("d")
        #expect(await freed.next() == nil, "closed once its reader was cancelled")
    }
}
