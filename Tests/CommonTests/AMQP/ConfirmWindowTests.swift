import Testing
@testable import WarrenAMQP

@Suite struct ConfirmWindowTests {
    @Test func sequencesStartAtOneAndIncrease() {
        var window = ConfirmWindow<String>()
        #expect(window.append("a") == 1)
        #expect(window.append("b") == 2)
        #expect(window.outstanding == 2)
        #expect(window.nextSequence == 3)
    }

    @Test func singleAckSettlesOnlyItsOwnNumber() {
        var window = ConfirmWindow<Int>()
        for value in 1...3 { _ = window.append(value) }
        let settled = window.settle(tag: 2, multiple: false)
        #expect(settled.map(\.pending) == [2])
        #expect(window.outstanding == 2)
        #expect(window.pending(1) == 1)
        #expect(window.pending(2) == nil)
    }

    @Test func multipleSettlesEverythingUpToTheTag() {
        var window = ConfirmWindow<Int>()
        for value in 1...5 { _ = window.append(value) }
        _ = window.settle(tag: 2, multiple: false)
        let settled = window.settle(tag: 4, multiple: true)
        #expect(settled.map(\.sequence) == [1, 3, 4])
        #expect(window.outstanding == 1)
        #expect(window.pending(5) == 5)
    }

    @Test func unknownAndRepeatedTagsAreIgnored() {
        var window = ConfirmWindow<Int>()
        _ = window.append(1)
        #expect(window.settle(tag: 7, multiple: true).isEmpty)
        #expect(window.settle(tag: 1, multiple: false).count == 1)
        #expect(window.settle(tag: 1, multiple: false).isEmpty)
        #expect(window.settle(tag: 0, multiple: true).isEmpty)
        #expect(window.outstanding == 0)
    }

    @Test func resetReturnsWhatWasOutstandingAndRestartsAtOne() {
        var window = ConfirmWindow<Int>()
        for value in 1...4 { _ = window.append(value) }
        _ = window.settle(tag: 3, multiple: false)
        #expect(window.reset() == [1, 2, 4])
        #expect(window.outstanding == 0)
        #expect(window.append(9) == 1)
    }

    @Test func longRunsCompactWithoutLosingTrack() {
        var window = ConfirmWindow<Int>()
        for round in 0..<10 {
            for value in 0..<1000 { _ = window.append(round * 1000 + value) }
            let settled = window.settle(tag: window.nextSequence - 1, multiple: true)
            #expect(settled.count == 1000)
            #expect(settled.first?.pending == round * 1000)
        }
        #expect(window.outstanding == 0)
        #expect(window.append(0) == 10_001)
    }
}
