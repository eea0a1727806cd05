import Testing
@testable import WarrenAMQP

@Suite struct DeliveryTagTrackerTests {
    func tracker(receiving tags: ClosedRange<UInt64>) -> DeliveryTagTracker {
        var tracker = DeliveryTagTracker()
        for tag in tags { tracker.receive(tag) }
        return tracker
    }

    func pairs(_ acks: [(tag: UInt64, multiple: Bool)]) -> [String] { acks.map { "\($0.tag)\($0.multiple ? "+" : "")" } }

    @Test func aContiguousPrefixIsOneMultipleAck() {
        var tracker = tracker(receiving: 1...10)
        #expect(pairs(tracker.settle([3, 1, 2, 4])) == ["4+"])
        #expect(tracker.outstanding == 6)
        #expect(pairs(tracker.settle([5])) == ["5"])
    }

    @Test func tagsPastAGapAreSingleAcks() {
        var tracker = tracker(receiving: 1...10)
        #expect(pairs(tracker.settle([1, 2, 5, 7])) == ["2+", "5", "7"])
        // 3 and 4 close the gap; 5 was settled already, so the multiple-ack may cover it.
        #expect(pairs(tracker.settle([3, 4, 6])) == ["6+"])
        #expect(tracker.outstanding == 3)
        #expect(pairs(tracker.settle([8, 9, 10])) == ["10+"])
        #expect(tracker.outstanding == 0)
    }

    @Test func unknownAndRepeatedTagsAreNeverAcked() {
        var tracker = tracker(receiving: 1...3)
        #expect(pairs(tracker.settle([2])) == ["2"])
        #expect(pairs(tracker.settle([2, 42])) == [])
        #expect(pairs(tracker.settle([1, 2, 3])) == ["3+"])
        #expect(pairs(tracker.settle([1, 3])) == [])
    }

    /// Whatever the order, every tag is acked exactly once and a multiple-ack never covers
    /// an outstanding tag outside its batch.
    @Test func randomBatchesSettleEachTagOnce() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            let count = UInt64.random(in: 1...300, using: &generator)
            var tracker = tracker(receiving: 1...count)
            var remaining = Array(1...count).shuffled(using: &generator)
            var acked = Set<UInt64>()
            while !remaining.isEmpty {
                let size = Int.random(in: 1...min(40, remaining.count), using: &generator)
                let batch = Array(remaining.prefix(size))
                remaining.removeFirst(size)
                var covered = Set<UInt64>()
                for ack in tracker.settle(batch) {
                    if ack.multiple {
                        for tag in 1...ack.tag where !acked.contains(tag) { covered.insert(tag) }
                    } else {
                        covered.insert(ack.tag)
                    }
                    acked.formUnion(covered)
                }
                #expect(covered == Set(batch))
            }
            #expect(acked.count == Int(count))
            #expect(tracker.outstanding == 0)
        }
    }
}
