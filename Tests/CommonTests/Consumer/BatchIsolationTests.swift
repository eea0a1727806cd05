import Testing
@testable import WarrenJobs
@testable import WarrenStore
@testable import WarrenSupport
@testable import WarrenWorker

@Suite struct BatchIsolationTests {
    struct Refused: Error {}
    struct Down: Error {}

    /// A store that refuses any write holding one of `bad`, and records what it wrote.
    final class FakeStore: @unchecked Sendable {  // used from one task at a time
        var bad: Set<Int>
        var written: [Int] = []
        var writes = 0
        init(bad: Set<Int>) { self.bad = bad }
        func write(_ items: ArraySlice<Int>) throws {
            writes += 1
            if items.contains(where: bad.contains) { throw Refused() }
            written += items
        }
    }

    @Test(arguments: [[], [0], [999], [3, 4], [0, 500, 999], Array(0..<10)])
    func writesEveryItemButTheRefusedOnesExactlyOnce(_ bad: [Int]) async throws {
        let store = FakeStore(bad: Set(bad))
        let items = Array(0..<1_000)
        let refused = try await BatchIsolation.isolate(items[...], write: { try store.write($0) }, isDataError: { $0 is Refused })
        #expect(refused.map(\.item) == bad)
        #expect(store.written.sorted() == items.filter { !bad.contains($0) }, "each written once")
        // About 2·k·log2(n) writes, not n.
        #expect(store.writes <= 1 + 2 * max(bad.count, 1) * 10)
    }

    @Test func anErrorThatIsNotTheDataIsRethrown() async {
        await #expect(throws: Down.self) {
            _ = try await BatchIsolation.isolate([1, 2, 3][...], write: { _ in throw Down() }, isDataError: { $0 is Refused })
        }
    }
}

@Suite struct StorableTextTests {
    @Test func replacesNULInText() {
        #expect(StorableText.text("Ada\u{0}Evil") == ("Ada\u{FFFD}Evil", true))
        #expect(StorableText.text("plain") == ("plain", false))
    }

    @Test(arguments: [
        (#"{"a":"x\u0000y"}"#, #"{"a":"x\ufffdy"}"#),
        (#"["\u0000","\u0000"]"#, #"["\ufffd","\ufffd"]"#),
        (#"{"\u0000":1}"#, #"{"\ufffd":1}"#),
        (#"{"a":"\\u0000"}"#, nil),  // an escaped backslash, then the letters u0000
        (#"{"a":"\\\u0000"}"#, #"{"a":"\\\ufffd"}"#),
        (#"{"a":"\u00001"}"#, #"{"a":"\ufffd1"}"#),
        (#"{"a":"\u0001"}"#, nil),
        (#"{"a":1}"#, nil),
    ] as [(String, String?)])
    func replacesOnlyRealNULEscapesInJSON(_ input: String, _ expected: String?) throws {
        let output = StorableText.json(Array(input.utf8)).map { String(decoding: $0, as: UTF8.self) }
        #expect(output == expected)
        if let output { try JSONScanner.validate(Array(output.utf8)) }
    }

    @Test func aRecordIsMadeStorableAndSaysWhatChanged() throws {
        var job = JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8))
        job.tenant = "acme\u{0}"
        let run = JobRunRecord.Run(status: .failed, attempts: 1, result: Array(#"{"a":"\u0000"}"#.utf8), error: "bad\u{0}input",
                                   consumerID: "c", startedAt: .now(), finishedAt: .now())
        let record = JobRunRecord(job: job, run: run, event: .failed, detail: Array(#"{"error":"bad\u0000input"}"#.utf8)).storable()
        #expect(record.job.tenant == "acme\u{FFFD}")
        #expect(record.run?.error == "bad\u{FFFD}input")
        #expect(record.run?.result == Array(#"{"a":"\ufffd"}"#.utf8))
        let detail = String(decoding: try #require(record.detail), as: UTF8.self)
        #expect(detail == #"{"error":"bad\ufffdinput","sanitized":"tenant,error,result"}"#)
        try JSONScanner.validate(Array(detail.utf8))
    }

    @Test func aKeptMessageHoldsThePayloadAndTheHeadersNoColumnHolds() throws {
        var job = JobEnvelope(type: "noop", tier: .free, payload: Array(#"{"b":1, "a":2}"#.utf8), concurrencyKey: "k\u{0}ey",
                              concurrencyLimit: 3)
        job.attempt = 4
        job.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        let kept = KeptMessage(job)
        #expect(kept.payload == #"{"b":1, "a":2}"#, "byte for byte")
        #expect(kept.headersJSON == #"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","x-warren-attempt":"4","#
                + #""x-warren-concurrency-key":"k\#u{FFFD}ey","x-warren-concurrency-limit":"3"}"#)
        try JSONScanner.validate(Array(kept.headersJSON.utf8))
        #expect(KeptMessage(JobEnvelope(type: "noop", tier: .free, payload: Array("[]".utf8))).headersJSON == #"{"x-warren-attempt":"1"}"#)
        // The last degraded form drops it with the result.
        var run = JobRunRecord.Run(status: .dead, attempts: 4, error: "e", consumerID: "c", startedAt: .now(), finishedAt: .now())
        run.kept = kept
        #expect(JobRunRecord(job: job, run: run, event: .deadLettered).degraded(step: 2, reason: "x")?.run?.kept == nil)
    }

    @Test func degradedFormsKeepTheResultAsTextThenDropIt() throws {
        let job = JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8))
        let run = JobRunRecord.Run(status: .succeeded, attempts: 1, result: Array(#"{"n":1e200000}"#.utf8), error: nil,
                                   consumerID: "c", startedAt: .now(), finishedAt: .now())
        let record = JobRunRecord(job: job, run: run, event: .succeeded)
        let first = try #require(record.degraded(step: 1, reason: "22003: value overflows numeric format"))
        #expect(first.run?.result == Array(#""{\"n\":1e200000}""#.utf8))
        #expect(first.detail == Array(#"{"result_stored_as_text":"22003: value overflows numeric format"}"#.utf8))
        let second = try #require(record.degraded(step: 2, reason: "x"))
        #expect(second.run?.result == nil)
        #expect(second.detail == Array(#"{"unstorable":"x"}"#.utf8))
        #expect(record.degraded(step: 3, reason: "x") == nil)
        var noResult = record
        noResult.run?.result = nil
        #expect(noResult.degraded(step: 1, reason: "x") == nil, "nothing to keep as text")
    }
}

@Suite struct DeadlineWatcherTests {
    @Test func firesOnlyWaitersWhoseDeadlinePassed() async {
        let watcher = DeadlineWatcher(tick: .seconds(3_600))  // fired by hand below
        let start = ContinuousClock.now
        async let early = watcher.wait(until: start + .seconds(10))
        async let late = watcher.wait(until: start + .seconds(20))
        while watcher.count < 2 { await Task.yield() }
        watcher.fire(now: start + .seconds(10))
        #expect(await early == true)
        #expect(watcher.count == 1, "the later one still waits")
        watcher.fire(now: start + .seconds(20))
        #expect(await late == true)
        #expect(watcher.count == 0)
    }

    @Test func aCancelledWaitEndsAtOnceAndLeavesNothingBehind() async {
        let watcher = DeadlineWatcher(tick: .seconds(3_600))
        let task = Task { await watcher.wait(until: .now + .seconds(3_600)) }
        while watcher.count < 1 { await Task.yield() }
        task.cancel()
        #expect(await task.value == false)
        #expect(watcher.count == 0)
    }

    @Test func aPastDeadlineAnswersAtOnce() async {
        #expect(await DeadlineWatcher().wait(until: .now - .seconds(1)) == true)
    }

    @Test func oneShotHandsTheValueToEveryWaiterAndACancelledWaitGetsNil() async {
        let shot = OneShot<Int>()
        let cancelled = Task { await shot.wait() }
        cancelled.cancel()
        #expect(await cancelled.value == nil)
        async let first = shot.wait()
        shot.fulfil(7)
        shot.fulfil(8)
        #expect(await first == 7)
        #expect(await shot.wait() == 7)
    }
}

@Suite struct HandlerRegistryTests {
    @Test func registeringATypeTwiceIsAnError() throws {
        var registry = HandlerRegistry.builtIn
        #expect(throws: HandlerRegistry.DuplicateType.self) { try registry.register(NoopHandler()) }
        #expect(registry.types == ["fail", "noop", "sleep"])
    }
}
