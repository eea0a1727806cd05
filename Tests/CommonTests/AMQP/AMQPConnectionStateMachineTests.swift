import Testing
@testable import WarrenAMQP

/// Every transition of the connection's life, without a broker.
@Suite struct AMQPConnectionStateMachineTests {
    typealias Machine = AMQPConnectionStateMachine
    let refused = AMQPError(.connectionFailed, function: "amqp_socket_open_noblock", message: "connection refused")
    let reset = AMQPError(.connectionLost, function: "amqp_simple_wait_frame_noblock", message: "connection reset")

    /// Started, connected and set up: serving.
    func open(reconnect: Bool = true) -> Machine {
        var machine = Machine(reconnect: reconnect)
        let step1 = machine.start()
        #expect(step1 == .connect)
        machine.socketOpened()
        let step2 = machine.setupDone()
        #expect(step2 == .serve)
        return machine
    }

    /// Open, lost, backed off once, and reconnected up to `settingUp(attempt: 1)`.
    func settingUpAgain() -> Machine {
        var machine = open()
        _ = machine.lost(reset)
        _ = machine.servingEnded()
        _ = machine.backoffElapsed()
        machine.socketOpened()
        return machine
    }

    // MARK: - Connecting

    @Test func aFirstConnectThatSucceedsServes() {
        var machine = Machine(reconnect: true)
        #expect(machine.state == .idle)
        #expect(machine.refusal(for: "control")?.code == .notConnected)
        let step3 = machine.start()
        #expect(step3 == .connect)
        #expect(machine.state == .connecting(attempt: 0))
        machine.socketOpened()
        #expect(machine.state == .settingUp(attempt: 0))
        #expect(machine.refusal(for: "declare") == nil, "setup declares the topology on the new connection")
        #expect(machine.publishRefusal()?.code == .notConnected, "nothing is published before setup is done")
        #expect(!machine.everConnected)
        let step4 = machine.setupDone()
        #expect(step4 == .serve)
        #expect(machine.state == .open(blocked: false))
        #expect(machine.everConnected && machine.isOpen && machine.hasLiveSocket)
        #expect(machine.refusal(for: "control") == nil && machine.publishRefusal() == nil)
    }

    @Test func startingTwiceDoesNotConnectAgain() {
        var machine = open()
        let step5 = machine.start()
        #expect(step5 == .serve)
        #expect(machine.state == .open(blocked: false))
    }

    @Test func aFirstConnectThatFailsEndsWithItsErrorEvenWithReconnect() {
        var machine = Machine(reconnect: true)
        _ = machine.start()
        let step6 = machine.connectFailed(refused)
        #expect(step6 == .finish(refused))
        #expect(machine.state == .closed)
    }

    @Test func aFirstSetupThatFailsEndsWithItsError() {
        var machine = Machine(reconnect: true)
        _ = machine.start()
        machine.socketOpened()
        let denied = AMQPError(.serverClosed, function: "amqp_queue_declare", message: "access refused", replyCode: 403)
        let step7 = machine.connectFailed(denied)
        #expect(step7 == .finish(denied))
        #expect(machine.state == .closed)
    }

    // MARK: - Losing and reconnecting

    @Test func aLossFailsWhatIsInFlightAsMaybeRoutedThenBacksOffAndReconnects() {
        var machine = open()
        guard case .failInFlight(let lost) = machine.lost(reset) else {
            Issue.record("a loss while open fails what is in flight")
            return
        }
        #expect(lost.code == .connectionLost && lost.message.contains("may or may not have been routed"))
        #expect(machine.state == .lost && !machine.isOpen && !machine.hasLiveSocket)
        let step8 = machine.lost(reset)
        #expect(step8 == .ignore, "a second report of the same loss does nothing")
        let refusal = machine.refusal(for: "control")
        #expect(refusal?.code == .notConnected && refusal?.message.contains("connection reset") == true)
        let step9 = machine.servingEnded()
        #expect(step9 == .backOff(attempt: 0))
        #expect(machine.state == .backingOff(attempt: 0))
        let step10 = machine.lost(reset)
        #expect(step10 == .ignore)
        let step11 = machine.backoffElapsed()
        #expect(step11 == .connect)
        #expect(machine.state == .connecting(attempt: 1))
        machine.socketOpened()
        #expect(machine.lastLoss == nil)
        let step12 = machine.setupDone()
        #expect(step12 == .serve)
        #expect(machine.state == .open(blocked: false))
    }

    @Test func failedReconnectsBackOffLongerEachRound() {
        var machine = open()
        _ = machine.lost(reset)
        let step13 = machine.servingEnded()
        #expect(step13 == .backOff(attempt: 0))
        for round in 1...4 {
            let step14 = machine.backoffElapsed()
            #expect(step14 == .connect)
            let step15 = machine.connectFailed(refused)
            #expect(step15 == .backOff(attempt: round))
            #expect(machine.state == .backingOff(attempt: round))
            #expect(machine.refusal(for: "publish")?.code == .notConnected)
        }
        let step16 = machine.backoffElapsed()
        #expect(step16 == .connect)
        machine.socketOpened()
        let step17 = machine.setupDone()
        #expect(step17 == .serve)
        #expect(machine.state == .open(blocked: false), "the rounds start again from nothing once open")
        _ = machine.lost(reset)
        let step18 = machine.servingEnded()
        #expect(step18 == .backOff(attempt: 0))
    }

    @Test func aReconnectWhoseSetupFailsBacksOffKeepingTheConnectionAlive() {
        var machine = settingUpAgain()
        let denied = AMQPError(.serverClosed, function: "amqp_basic_consume", message: "access refused", replyCode: 403)
        let step19 = machine.connectFailed(denied)
        #expect(step19 == .backOff(attempt: 1))
    }

    @Test func aLossDuringSetupFailsInFlightAndLeavesTheFailureToTheSetupStep() {
        var machine = settingUpAgain()
        let step20 = machine.lost(reset)
        #expect(step20 == .failInFlight(Machine.connectionLostError(reset)))
        #expect(machine.state == .settingUp(attempt: 1))
        let step21 = machine.connectFailed(reset)
        #expect(step21 == .backOff(attempt: 1))
    }

    @Test func withoutReconnectALossEndsTheConnectionWithTheLoss() {
        var machine = open(reconnect: false)
        let step22 = machine.lost(reset)
        #expect(step22 == .failInFlight(Machine.connectionLostError(reset)))
        let step23 = machine.servingEnded()
        #expect(step23 == .finish(reset))
        #expect(machine.state == .closed)
    }

    @Test func lossesBeforeOrAfterTheConnectionAreIgnored() {
        var idle = Machine(reconnect: true)
        let step24 = idle.lost(reset)
        #expect(step24 == .ignore)
        var connecting = Machine(reconnect: true)
        _ = connecting.start()
        let step25 = connecting.lost(reset)
        #expect(step25 == .ignore)
        var closed = open()
        closed.closeRequested()
        _ = closed.servingEnded()
        let step26 = closed.lost(reset)
        #expect(step26 == .ignore, "closing")
        _ = closed.closedGracefully()
        let step27 = closed.lost(reset)
        #expect(step27 == .ignore, "closed")
    }

    // MARK: - Blocking

    @Test func aResourceAlarmBlocksPublishesButNotCommandsUntilItClears() {
        var machine = open()
        machine.blocked()
        #expect(machine.state == .open(blocked: true) && machine.isBlocked && machine.isOpen)
        #expect(machine.publishRefusal()?.code == .blocked)
        #expect(machine.refusal(for: "control") == nil)
        let step28 = machine.unblocked()
        #expect(step28, "queued publishes may go")
        #expect(machine.state == .open(blocked: false))
        let step29 = machine.unblocked()
        #expect(!step29, "a second unblock flushes nothing")
        #expect(machine.publishRefusal() == nil)
    }

    @Test func blockingOutsideOpenIsIgnoredAndALossClearsIt() {
        var machine = Machine(reconnect: true)
        machine.blocked()
        #expect(machine.state == .idle)
        var open = open()
        open.blocked()
        _ = open.lost(reset)
        _ = open.servingEnded()
        _ = open.backoffElapsed()
        open.socketOpened()
        _ = open.setupDone()
        #expect(open.state == .open(blocked: false), "a new connection starts unblocked")
    }

    // MARK: - Closing

    @Test func closingWhileOpenSaysGoodbyeThenEnds() {
        var machine = open()
        machine.closeRequested()
        #expect(machine.state == .closing && machine.closeWasRequested && machine.hasLiveSocket)
        #expect(machine.refusal(for: "control")?.code == .closed)
        #expect(machine.publishRefusal()?.code == .closed)
        let step30 = machine.servingEnded()
        #expect(step30 == .closeGracefully)
        let step31 = machine.closedGracefully()
        #expect(step31 == .finish(Machine.closedError))
        #expect(machine.state == .closed)
        machine.closeRequested()
        #expect(machine.state == .closed, "closing twice is harmless")
    }

    @Test func closingWhileBackingOffEndsWithoutAGoodbye() {
        var machine = open()
        _ = machine.lost(reset)
        _ = machine.servingEnded()
        machine.closeRequested()
        #expect(machine.state == .closed && machine.lastLoss == nil)
        let step32 = machine.backoffElapsed()
        #expect(step32 == .finish(Machine.closedError))
    }

    @Test func closingWhileSettingUpSaysGoodbyeAfterTheSetupOrEndsIfItFails() {
        var done = Machine(reconnect: true)
        _ = done.start()
        done.socketOpened()
        done.closeRequested()
        let step33 = done.setupDone()
        #expect(step33 == .closeGracefully)
        var failed = Machine(reconnect: true)
        _ = failed.start()
        failed.socketOpened()
        failed.closeRequested()
        let step34 = failed.connectFailed(refused)
        #expect(step34 == .finish(Machine.closedError))
        #expect(failed.state == .closed)
    }

    @Test func closingBeforeStartingEndsAtTheFirstStep() {
        var machine = Machine(reconnect: true)
        machine.closeRequested()
        #expect(machine.state == .closed)
        let step35 = machine.start()
        #expect(step35 == .finish(Machine.closedError))
        let step36 = machine.connectFailed(refused)
        #expect(step36 == .finish(Machine.closedError))
    }
}
