import Synchronization
import Testing
@testable import WarrenResilience

/// A clock the test moves by hand: no sleeps.
final class ManualClock: Sendable {
    private let instant = Mutex(ContinuousClock.now)
    var now: ContinuousClock.Instant { instant.withLock { $0 } }
    func advance(by duration: Duration) { instant.withLock { $0 += duration } }
}

@Suite struct CircuitBreakerTests {
    let clock = ManualClock()

    func breaker(window: Int = 10, threshold: Int = 5, open: Duration = .seconds(30)) -> CircuitBreaker {
        let clock = clock
        return CircuitBreaker(configuration: .init(window: window, failureThreshold: threshold, openDuration: open),
                              now: { clock.now })
    }

    /// Acquires a permit (failing the test when refused) and records the call's result.
    func call(_ breaker: CircuitBreaker, succeeds: Bool, sourceLocation: SourceLocation = #_sourceLocation) {
        guard case .allowed(let permit) = breaker.acquire() else {
            Issue.record("expected a call to be allowed", sourceLocation: sourceLocation)
            return
        }
        breaker.record(permit, succeeded: succeeds)
    }

    func rejection(_ breaker: CircuitBreaker) -> Duration? {
        if case .rejected(let retryAfter) = breaker.acquire() { return retryAfter }
        return nil
    }

    @Test func staysClosedBelowTheThresholdAndOpensAtFiveFailuresOfTheLastTen() {
        let breaker = breaker()
        for _ in 0..<4 { call(breaker, succeeds: false) }
        for _ in 0..<6 { call(breaker, succeeds: true) }
        #expect(breaker.snapshot.state == .closed)
        #expect(breaker.snapshot.recentCalls == 10)
        #expect(breaker.snapshot.recentFailures == 4)
        // The window slides: the oldest failure drops out as this one comes in (still 4).
        call(breaker, succeeds: false)
        #expect(breaker.snapshot.recentFailures == 4)
        #expect(breaker.snapshot.state == .closed)
        // Three more only push the older failures out ...
        for _ in 0..<3 { call(breaker, succeeds: false) }
        #expect(breaker.snapshot.state == .closed, "window [S S S S S S F F F F]: 4 failures")
        // ... and the next one pushes out a success: five failures.
        call(breaker, succeeds: false)
        #expect(breaker.snapshot.state == .open, "window [S S S S S F F F F F]")
        #expect(breaker.snapshot.timesOpened == 1)
    }

    @Test func fiveFailuresOpenItEvenBeforeTenCalls() {
        let breaker = breaker()
        for _ in 0..<5 { call(breaker, succeeds: false) }
        #expect(breaker.snapshot.state == .open)
    }

    @Test func openRejectsWithTheTimeLeftThenHalfOpensAfterTheOpenPeriod() {
        let breaker = breaker()
        for _ in 0..<5 { call(breaker, succeeds: false) }
        #expect(rejection(breaker) == .seconds(30))
        clock.advance(by: .seconds(12))
        #expect(rejection(breaker) == .seconds(18))
        #expect(breaker.snapshot.halfOpensIn == .seconds(18))
        clock.advance(by: .seconds(18))
        #expect(breaker.snapshot.state == .halfOpen, "an open breaker whose time is over reads half-open")
        #expect(breaker.snapshot.halfOpensIn == nil)
    }

    @Test func halfOpenAdmitsExactlyOneTrialAndDefersTheRestWhileItRuns() {
        let breaker = breaker()
        for _ in 0..<5 { call(breaker, succeeds: false) }
        clock.advance(by: .seconds(30))
        guard case .allowed(let trial) = breaker.acquire() else {
            Issue.record("the first call after the open period is the trial")
            return
        }
        #expect(trial.isTrial)
        #expect(rejection(breaker) == breaker.configuration.trialRetryAfter)
        #expect(rejection(breaker) != nil)
        #expect(breaker.snapshot.state == .halfOpen)
        breaker.record(trial, succeeded: true)
        #expect(breaker.snapshot.state == .closed)
    }

    @Test func aSuccessfulTrialClosesWithAnEmptyWindow() {
        let breaker = breaker()
        for _ in 0..<5 { call(breaker, succeeds: false) }
        clock.advance(by: .seconds(30))
        call(breaker, succeeds: true)
        #expect(breaker.snapshot == .init(state: .closed, recentCalls: 0, recentFailures: 0, halfOpensIn: nil, timesOpened: 1))
        // The old failures are gone: four new ones do not open it.
        for _ in 0..<4 { call(breaker, succeeds: false) }
        #expect(breaker.snapshot.state == .closed)
    }

    @Test func aFailedTrialReopensForAnotherFullPeriod() {
        let breaker = breaker()
        for _ in 0..<5 { call(breaker, succeeds: false) }
        clock.advance(by: .seconds(45))
        call(breaker, succeeds: false)
        #expect(breaker.snapshot.state == .open)
        #expect(breaker.snapshot.timesOpened == 2)
        #expect(rejection(breaker) == .seconds(30), "counted from the failed trial, not from the first opening")
        clock.advance(by: .seconds(30))
        guard case .allowed(let trial) = breaker.acquire() else {
            Issue.record("a new trial after the second open period")
            return
        }
        #expect(trial.isTrial)
    }

    @Test func aReleasedTrialLetsTheNextCallerTry() {
        let breaker = breaker()
        for _ in 0..<5 { call(breaker, succeeds: false) }
        clock.advance(by: .seconds(30))
        guard case .allowed(let first) = breaker.acquire() else {
            Issue.record("trial expected")
            return
        }
        #expect(rejection(breaker) != nil)
        breaker.release(first)
        #expect(breaker.snapshot.state == .halfOpen)
        guard case .allowed(let second) = breaker.acquire() else {
            Issue.record("the released trial goes to the next caller")
            return
        }
        #expect(second.isTrial)
        // The released permit can no longer decide anything.
        breaker.record(first, succeeded: false)
        #expect(breaker.snapshot.state == .halfOpen)
        breaker.record(second, succeeded: true)
        #expect(breaker.snapshot.state == .closed)
    }

    @Test func resultsOfCallsAdmittedUnderAnEarlierStateAreIgnored() {
        let breaker = breaker()
        // Six slow calls admitted while closed; five fail and open the breaker.
        var slow: [CircuitBreaker.Permit] = []
        for _ in 0..<6 {
            guard case .allowed(let permit) = breaker.acquire() else { return }
            slow.append(permit)
        }
        for permit in slow.prefix(5) { breaker.record(permit, succeeded: false) }
        #expect(breaker.snapshot.state == .open)
        // The sixth finishes late, with a success: it must not close an open breaker.
        breaker.record(slow[5], succeeded: true)
        #expect(breaker.snapshot.state == .open)
        clock.advance(by: .seconds(30))
        guard case .allowed(let trial) = breaker.acquire() else { return }
        // A late failure from the closed days must not reopen it while the trial runs.
        breaker.record(slow[5], succeeded: false)
        #expect(breaker.snapshot.state == .halfOpen)
        breaker.record(trial, succeeded: true)
        #expect(breaker.snapshot.state == .closed)
    }

    @Test func releasedCallsCountNeitherWay() {
        let breaker = breaker()
        for _ in 0..<10 {
            guard case .allowed(let permit) = breaker.acquire() else { return }
            breaker.release(permit)
        }
        #expect(breaker.snapshot.recentCalls == 0)
    }

    @Test func configurationIsKeptSane() {
        let configuration = CircuitBreaker.Configuration(window: 0, failureThreshold: 50, openDuration: .seconds(-1))
        #expect(configuration.window == 1)
        #expect(configuration.failureThreshold == 1)
        #expect(configuration.openDuration == .zero)
        #expect(CircuitBreaker.State.closed.gaugeValue == 0)
        #expect(CircuitBreaker.State.halfOpen.gaugeValue == 1)
        #expect(CircuitBreaker.State.open.gaugeValue == 2)
        #expect(CircuitBreaker.State.halfOpen.rawValue == "half_open")
    }

    @Test func concurrentCallersGetExactlyOneTrial() async {
        let breaker = breaker()
        for _ in 0..<5 { call(breaker, succeeds: false) }
        clock.advance(by: .seconds(30))
        let trials = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<64 {
                group.addTask {
                    if case .allowed(let permit) = breaker.acquire(), permit.isTrial { return 1 }
                    return 0
                }
            }
            return await group.reduce(0, +)
        }
        #expect(trials == 1)
    }
}
