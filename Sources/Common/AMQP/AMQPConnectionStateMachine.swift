/// The life of one AMQP connection as a value: the driver thread feeds it what happened and
/// carries out the action it returns, so every decision about connecting, losing, backing off,
/// blocking and closing sits here, testable without a broker (the shape of postgres-nio's
/// `ConnectionStateMachine`). ``AMQPDriver`` owns exactly one, on its own thread.
///
/// ```
/// idle ─start→ connecting ─socketOpened→ settingUp ─setupDone→ open(blocked: false ⇄ true)
///                ↑     │ failed               │ failed                │ lost
///                │     ↓                      ↓                       ↓
///                └─elapsed── backingOff ←─────┴──── servingEnded ── lost
/// open, settingUp ─closeRequested→ closing ─closedGracefully→ closed
/// idle, connecting, backingOff ─closeRequested→ closed
/// ```
///
/// A connection that never came up, or that may not reconnect, ends `closed` at its first
/// failure; one that was up reconnects for as long as it is not closed.
struct AMQPConnectionStateMachine: Equatable {
    enum State: Equatable {
        /// Not started.
        case idle
        /// Trying each endpoint in turn; `attempt` counts failed rounds since the last open.
        case connecting(attempt: Int)
        /// Transport, login and channels are up; `setup` (topology) and the consumers'
        /// resubscription are running. Commands from `setup` may run; nothing is published.
        case settingUp(attempt: Int)
        /// Serving. `blocked`: the broker's resource alarm holds publishers back.
        case open(blocked: Bool)
        /// Was open and broke; serving is winding down (what was in flight has been failed).
        case lost
        /// Waiting before the next connect round (reconnecting).
        case backingOff(attempt: Int)
        /// Close asked while open: the broker is told, then the thread ends.
        case closing
        /// The thread ends (or has ended); nothing is accepted again.
        case closed
    }

    /// What the driver does next.
    enum Action: Equatable {
        /// Try the endpoints once (``socketOpened()`` / ``setupDone()`` or ``connectFailed(_:)`` follow).
        case connect
        /// Serve frames and commands until the state leaves `open` (then ask ``servingEnded()``).
        case serve
        /// Wait with `configuration.reconnectBackoff.delay(attempt:)`, serving the mailbox
        /// (commands fail as not connected), then ``backoffElapsed()``.
        case backOff(attempt: Int)
        /// Send connection.close and drop the socket, then ``closedGracefully()``.
        case closeGracefully
        /// End the thread: fail everything pending with `error`, finish the consumers' streams
        /// (without error when the close was asked for).
        case finish(AMQPError)
    }

    /// What to do at once when the connection breaks.
    enum LossAction: Equatable {
        /// Already lost or closing: nothing more.
        case ignore
        /// Drop the socket and fail every unconfirmed and queued publish with `error` (it may
        /// or may not have been routed: the caller decides).
        case failInFlight(AMQPError)
    }

    let reconnect: Bool
    private(set) var state: State = .idle
    /// Whether it has been open once: only then does a failure lead to reconnecting.
    private(set) var everConnected = false
    /// Why the connection was last lost, while it is not open again (for the not-connected errors).
    private(set) var lastLoss: AMQPError?
    /// Whether the close was asked for (consumers' streams then end without an error).
    private(set) var closeWasRequested = false

    init(reconnect: Bool) {
        self.reconnect = reconnect
    }

    var isOpen: Bool { if case .open = state { true } else { false } }
    var isBlocked: Bool { state == .open(blocked: true) }
    /// Whether the socket of this connection is still in use (acks may still be sent on it).
    var hasLiveSocket: Bool {
        switch state {
        case .settingUp, .open, .closing: true
        case .idle, .connecting, .lost, .backingOff, .closed: false
        }
    }

    mutating func start() -> Action {
        guard state == .idle else { return state == .closed ? .finish(Self.closedError) : .serve }
        state = .connecting(attempt: 0)
        return .connect
    }

    /// Login and channels succeeded on an endpoint.
    mutating func socketOpened() {
        guard case .connecting(let attempt) = state else { return }
        state = .settingUp(attempt: attempt)
        lastLoss = nil
    }

    /// `setup` and the resubscriptions succeeded: the connection serves.
    mutating func setupDone() -> Action {
        switch state {
        case .settingUp:
            state = .open(blocked: false)
            everConnected = true
            return .serve
        case .closing:
            // Closed while setting up: say goodbye to the broker.
            return .closeGracefully
        case .closed:
            return .finish(Self.closedError)
        case .lost:
            return servingEnded()
        case .idle, .connecting, .open, .backingOff:
            return .serve
        }
    }

    /// No endpoint could be opened, or `setup` failed on the one that was.
    mutating func connectFailed(_ error: AMQPError) -> Action {
        switch state {
        case .connecting(let attempt), .settingUp(let attempt):
            guard everConnected, reconnect else {
                state = .closed
                return .finish(error)
            }
            state = .backingOff(attempt: attempt)
            return .backOff(attempt: attempt)
        case .closing, .closed:
            state = .closed
            return .finish(Self.closedError)
        case .idle, .open, .lost, .backingOff:
            state = .closed
            return .finish(error)
        }
    }

    mutating func backoffElapsed() -> Action {
        switch state {
        case .backingOff(let attempt):
            state = .connecting(attempt: attempt + 1)
            return .connect
        case .closing, .closed:
            state = .closed
            return .finish(Self.closedError)
        case .idle, .connecting, .settingUp, .open, .lost:
            return .connect
        }
    }

    /// A read, write or RPC failed at the connection level, or the broker closed a channel or
    /// the connection.
    mutating func lost(_ error: AMQPError) -> LossAction {
        switch state {
        case .open:
            lastLoss = error
            state = .lost
            return .failInFlight(Self.connectionLostError(error))
        case .settingUp:
            // The setup step fails with it and reports ``connectFailed(_:)``.
            lastLoss = error
            return .failInFlight(Self.connectionLostError(error))
        case .idle, .connecting, .lost, .backingOff, .closing, .closed:
            return .ignore
        }
    }

    /// The serve loop returned (the state left `open`).
    mutating func servingEnded() -> Action {
        switch state {
        case .lost:
            guard reconnect else {
                state = .closed
                return .finish(lastLoss ?? Self.closedError)
            }
            // A short wait (attempt 0's delay) before the first reconnect.
            state = .backingOff(attempt: 0)
            return .backOff(attempt: 0)
        case .backingOff(let attempt):
            return .backOff(attempt: attempt)
        case .closing:
            return .closeGracefully
        case .closed:
            return .finish(Self.closedError)
        case .open:
            return .serve
        case .idle, .connecting, .settingUp:
            return .connect
        }
    }

    mutating func closeRequested() {
        closeWasRequested = true
        switch state {
        case .open, .settingUp:
            state = .closing
        case .idle, .connecting, .lost, .backingOff:
            // Nothing to say goodbye to: the current step ends the thread.
            state = .closed
            lastLoss = nil
        case .closing, .closed:
            break
        }
    }

    mutating func closedGracefully() -> Action {
        state = .closed
        return .finish(Self.closedError)
    }

    mutating func blocked() {
        if case .open = state { state = .open(blocked: true) }
    }

    /// Returns whether queued publishes may go out now.
    mutating func unblocked() -> Bool {
        guard state == .open(blocked: true) else { return false }
        state = .open(blocked: false)
        return true
    }

    /// Why a command (control method, consume, cancel) cannot run now, or nil if it can.
    func refusal(for operation: String) -> AMQPError? {
        switch state {
        case .open, .settingUp:
            return nil
        case .closing, .closed:
            return AMQPError(.closed, function: operation, message: "connection is closing")
        case .idle, .connecting, .lost, .backingOff:
            if let lastLoss {
                return AMQPError(.notConnected, function: operation, message: "not connected (\(lastLoss.message)); reconnecting")
            }
            return AMQPError(.notConnected, function: operation, message: "not connected")
        }
    }

    /// Why a publish cannot be taken now (not open, or blocked by a resource alarm), or nil.
    func publishRefusal() -> AMQPError? {
        if case .settingUp = state {
            return AMQPError(.notConnected, function: "amqp_basic_publish", message: "not connected (setting up)")
        }
        if let refusal = refusal(for: "amqp_basic_publish") { return refusal }
        if isBlocked {
            return AMQPError(.blocked, function: "amqp_basic_publish", message: "the broker is blocking publishers (resource alarm)")
        }
        return nil
    }

    static let closedError = AMQPError(.closed, function: "close", message: "connection closed")

    static func connectionLostError(_ error: AMQPError) -> AMQPError {
        AMQPError(.connectionLost, function: error.function,
                  message: "connection lost before the broker confirmed (\(error.message)); the message may or may not have been routed")
    }
}
