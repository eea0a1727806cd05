import Synchronization

/// A circuit breaker for one downstream destination: stops calling it while it keeps failing,
/// then lets a single trial call find out whether it is back.
///
/// - **Closed**: every call goes through; the results of the last `window` calls are kept.
///   Once `failureThreshold` of them failed, the breaker opens.
/// - **Open** for `openDuration`: no call goes through; ``acquire()`` answers `.rejected` with
///   the time left, so the caller can defer its work rather than fail it.
/// - **Half-open** once that time is over: the next ``acquire()`` gets the one trial permit;
///   the others are still rejected while the trial is in flight. A trial that succeeds closes
///   the breaker (with an empty window); one that fails opens it for another `openDuration`.
///
/// A caller that got a permit reports how the call went with ``record(_:succeeded:)``, or
/// ``release(_:)`` when it never finished (cancelled): that counts neither way, and a released
/// trial lets the next caller try. Results of calls admitted before the last change of state
/// (say, slow calls that finish after the breaker opened) are ignored: only calls made under
/// the current state decide the next one.
///
/// Thread-safe; time comes from `now`, so tests drive it with a clock of their own.
package final class CircuitBreaker: Sendable {
    package struct Configuration: Sendable, Equatable {
        /// How many of the latest call results are kept while closed.
        package var window: Int
        /// Failures among them that open the breaker.
        package var failureThreshold: Int
        /// How long it stays open before a trial call is let through.
        package var openDuration: Duration
        /// What a caller rejected while the half-open trial is in flight is told to wait.
        package var trialRetryAfter: Duration

        package init(window: Int = 10, failureThreshold: Int = 5, openDuration: Duration = .seconds(30),
                     trialRetryAfter: Duration = .seconds(1)) {
            self.window = max(1, window)
            self.failureThreshold = min(max(1, failureThreshold), self.window)
            self.openDuration = max(.zero, openDuration)
            self.trialRetryAfter = max(.zero, trialRetryAfter)
        }
    }

    package enum State: String, Sendable, Equatable {
        case closed
        case halfOpen = "half_open"
        case open

        /// The metric value: 0 closed, 1 half-open, 2 open.
        package var gaugeValue: Int {
            switch self {
            case .closed: 0
            case .halfOpen: 1
            case .open: 2
            }
        }
    }

    /// Leave to make one call; hand it back through ``record(_:succeeded:)`` or ``release(_:)``.
    package struct Permit: Sendable, Equatable {
        fileprivate let generation: UInt64
        /// True for the half-open state's single trial call.
        package let isTrial: Bool
    }

    package enum Admission: Sendable, Equatable {
        case allowed(Permit)
        /// No call now; try again after `retryAfter`.
        case rejected(retryAfter: Duration)
    }

    /// What the breaker looks like at one instant (for `/status` and metrics).
    package struct Snapshot: Sendable, Equatable {
        package var state: State
        /// Results kept in the window (closed state only) and how many of them failed.
        package var recentCalls: Int
        package var recentFailures: Int
        /// Open: the time until a trial is let through.
        package var halfOpensIn: Duration?
        /// Times the breaker has opened since it was made.
        package var timesOpened: Int
    }

    private struct Machine {
        var state: State = .closed
        /// Closed: results of the latest calls, oldest first (true = failed).
        var results: [Bool] = []
        var openUntil: ContinuousClock.Instant?
        var trialInFlight = false
        /// Bumped on every change of state: results of permits from an older one are ignored.
        var generation: UInt64 = 0
        var timesOpened = 0

        mutating func open(now: ContinuousClock.Instant, for duration: Duration) {
            state = .open
            openUntil = now + duration
            results.removeAll()
            trialInFlight = false
            generation &+= 1
            timesOpened += 1
        }

        /// Open with its time over is half-open, waiting for a trial.
        mutating func advance(now: ContinuousClock.Instant) {
            if state == .open, let openUntil, now >= openUntil {
                state = .halfOpen
                self.openUntil = nil
                trialInFlight = false
                generation &+= 1
            }
        }
    }

    package let configuration: Configuration
    private let now: @Sendable () -> ContinuousClock.Instant
    private let machine = Mutex(Machine())

    package init(configuration: Configuration = Configuration(),
                 now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }) {
        self.configuration = configuration
        self.now = now
    }

    /// Asks to make a call.
    package func acquire() -> Admission {
        let now = now()
        return machine.withLock { machine -> Admission in
            machine.advance(now: now)
            switch machine.state {
            case .closed:
                return .allowed(Permit(generation: machine.generation, isTrial: false))
            case .open:
                return .rejected(retryAfter: max(.zero, (machine.openUntil ?? now) - now))
            case .halfOpen:
                if machine.trialInFlight { return .rejected(retryAfter: configuration.trialRetryAfter) }
                machine.trialInFlight = true
                return .allowed(Permit(generation: machine.generation, isTrial: true))
            }
        }
    }

    /// Reports how a permitted call went. A failure is a sign the destination is unwell (no
    /// answer, a 5xx, a 429), not a request it refused on its merits.
    package func record(_ permit: Permit, succeeded: Bool) {
        let now = now()
        machine.withLock { machine in
            guard permit.generation == machine.generation else { return }
            switch machine.state {
            case .closed:
                machine.results.append(!succeeded)
                if machine.results.count > configuration.window { machine.results.removeFirst(machine.results.count - configuration.window) }
                if machine.results.count(where: { $0 }) >= configuration.failureThreshold {
                    machine.open(now: now, for: configuration.openDuration)
                }
            case .halfOpen:
                guard permit.isTrial, machine.trialInFlight else { return }
                if succeeded {
                    machine.state = .closed
                    machine.results.removeAll()
                    machine.trialInFlight = false
                    machine.generation &+= 1
                } else {
                    machine.open(now: now, for: configuration.openDuration)
                }
            case .open:
                return
            }
        }
    }

    /// Hands back a permit whose call never finished (cancelled): no result is recorded, and a
    /// trial permit goes to the next caller.
    package func release(_ permit: Permit) {
        machine.withLock { machine in
            if permit.isTrial, permit.generation == machine.generation, machine.state == .halfOpen {
                // A new generation, so the released permit can no longer decide anything.
                machine.trialInFlight = false
                machine.generation &+= 1
            }
        }
    }

    /// The state now (an open breaker whose time is over reads half-open).
    package var snapshot: Snapshot {
        let now = now()
        return machine.withLock { machine in
            machine.advance(now: now)
            return Snapshot(state: machine.state, recentCalls: machine.results.count,
                            recentFailures: machine.results.count(where: { $0 }),
                            halfOpensIn: machine.state == .open ? max(.zero, (machine.openUntil ?? now) - now) : nil,
                            timesOpened: machine.timesOpened)
        }
    }
}

/// The circuit breakers of this process by destination name, so that the consumer can say which
/// are not closed (``ConsumerStatus``) without knowing who made them. A breaker registered again
/// under the same name replaces the first.
package final class BreakerBoard: Sendable {
    package static let shared = BreakerBoard()

    private let breakers = Mutex([String: CircuitBreaker]())

    package init() {}

    package func register(_ breaker: CircuitBreaker, as name: String) {
        breakers.withLock { $0[name] = breaker }
    }

    /// The destinations whose breaker is open or half-open, sorted.
    package var notClosed: [String] {
        breakers.withLock { $0 }.filter { $0.value.snapshot.state != .closed }.map(\.key).sorted()
    }
}
