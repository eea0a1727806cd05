import CDispatch
import CRabbitMQ
import Foundation
import Logging
import Synchronization
import WarrenSupport

/// The thread-confined side of an ``AMQPConnection``: it owns the librabbitmq connection
/// state and is the only code that calls into it.
///
/// `@unchecked Sendable` because it is handed to exactly one thread when created and used
/// only there afterwards (commands reach it through the connection's mailbox).
final class AMQPDriver: @unchecked Sendable {
    static let controlChannel: amqp_channel_t = 1
    static let publishChannel: amqp_channel_t = 2

    enum Settlement {
        case ack(multiple: Bool)
        case nack(multiple: Bool, requeue: Bool)
        case reject(requeue: Bool)
    }

    struct PendingPublish {
        var messageID: String?
        var complete: (Result<Void, AMQPError>) -> Void
    }

    struct QueuedPublish {
        var message: AMQPOutgoingMessage
        var complete: (Result<Void, AMQPError>) -> Void
    }

    final class Consumer {
        let request: ConsumeRequest
        let continuation: AsyncThrowingStream<AMQPDelivery, any Error>.Continuation
        var tag: String
        var channel: amqp_channel_t
        var cancelled = false
        /// Its stream has ended (after a cancel: once every frame read before the cancel-ok
        /// was dispatched, so no delivery is dropped on a finished stream).
        var finished = false
        /// Unacknowledged delivery tags on `channel` (reset with each new channel).
        var tags = DeliveryTagTracker()

        init(request: ConsumeRequest, continuation: AsyncThrowingStream<AMQPDelivery, any Error>.Continuation, tag: String, channel: amqp_channel_t) {
            self.request = request
            self.continuation = continuation
            self.tag = tag
            self.channel = channel
        }
    }

    /// Collects the results of one `publish([...])` call and completes it once all are in.
    final class BatchCollector {
        var results: [Result<Void, AMQPError>?]
        var remaining: Int
        let completion: ([Result<Void, AMQPError>]) -> Void

        init(count: Int, completion: @escaping ([Result<Void, AMQPError>]) -> Void) {
            results = Array(repeating: nil, count: count)
            remaining = count
            self.completion = completion
        }

        func set(_ index: Int, _ result: Result<Void, AMQPError>) {
            guard results[index] == nil else { return }
            results[index] = result
            remaining -= 1
            if remaining == 0 { completion(results.map { $0! }) }
        }
    }

    let connection: AMQPConnection
    var configuration: AMQPConfiguration { connection.configuration }
    var logger: Logger
    var state: amqp_connection_state_t?
    var socketFD: Int32 = -1
    /// Bumped on every new connection; deliveries carry it so stale tags are never acked.
    var generation: UInt64 = 0
    var confirms = ConfirmWindow<PendingPublish>()
    var waiting: [QueuedPublish] = []
    var waitingHead = 0
    /// basic.return arrives before the ack of the same message; keyed by message id.
    var returned: [String: (code: UInt16, text: String)] = [:]
    var consumers: [String: Consumer] = [:]
    var nextConsumerChannel: amqp_channel_t = 3
    /// Consumer channels whose consumer was cancelled and had every delivery settled, open
    /// and taken again before new ones: a consumer resubscribed with a new prefetch again and
    /// again never runs out of channels (see ``retireIfSettled(_:)``).
    var freeChannels: [amqp_channel_t] = []
    /// Cancelled consumers whose streams end once the frames already read are dispatched.
    var finishing: [Consumer] = []
    /// Connecting, open, blocked, lost, backing off, closing, closed: every decision about the
    /// connection's life is the machine's; this thread carries out its actions.
    var machine: AMQPConnectionStateMachine
    /// The next publish waits for the socket to take it without blocking (see `sendRoom`).
    var waitingForRoom = false

    init(connection: AMQPConnection) {
        self.connection = connection
        var logger = connection.logger
        logger[metadataKey: "amqp.connection"] = "\(connection.configuration.connectionName)"
        self.logger = logger
        self.machine = AMQPConnectionStateMachine(reconnect: connection.configuration.reconnect)
    }

    // MARK: - Thread main

    func run() {
        var action = machine.start()
        while true {
            switch action {
            case .connect:
                do {
                    try connectAny()
                    action = machine.setupDone()
                    if machine.isOpen { announceOpen() }
                } catch {
                    action = machine.connectFailed(error)
                    if case .backOff(let attempt) = action {
                        logger.warning("AMQP reconnect failed; retrying", metadata: [
                            "error": "\(error)", "amqp.attempt": "\(attempt + 1)",
                        ])
                    }
                }
            case .serve:
                serve()
                action = machine.servingEnded()
            case .backOff(let attempt):
                idle(for: configuration.reconnectBackoff.delay(attempt: attempt))
                action = machine.backoffElapsed()
            case .closeGracefully:
                closeGracefully()
                action = machine.closedGracefully()
            case .finish(let error):
                finish(failing: error)
                return
            }
        }
    }

    /// Waits for `duration` while disconnected, failing commands that need a connection.
    private func idle(for duration: Duration) {
        let deadline = ContinuousClock.now + duration
        while case .backingOff = machine.state {
            drainMailbox()
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .zero, case .backingOff = machine.state else { return }
            let mask = warren_wait(-1, connection.wakeFD, Int32(clamping: max(1, remaining.milliseconds)))
            if mask & 2 != 0 { warren_eventfd_drain(connection.wakeFD) }
        }
    }

    /// The connected loop: run commands, read frames, sleep in poll(2) when there is nothing.
    private func serve() {
        let pollInterval = Int32(clamping: min(500, max(50, configuration.heartbeat.milliseconds / 4)))
        while machine.isOpen {
            drainMailbox()
            guard machine.isOpen else { return }
            var frames = 0
            while frames < 256, let state, machine.isOpen {
                var frame = amqp_frame_t()
                let status = warren_poll_frame(state, &frame)
                if status == AMQP_STATUS_TIMEOUT.rawValue { break }
                if status != AMQP_STATUS_OK.rawValue {
                    lose(AMQPError.status(status, "amqp_simple_wait_frame_noblock", code: .connectionLost))
                    break
                }
                dispatch(frame)
                frames += 1
            }
            // Every frame librabbitmq queued while it waited for an RPC's reply (a cancel-ok)
            // is dispatched: the cancelled consumers' streams may end.
            if !finishing.isEmpty, let state, amqp_frames_enqueued(state) == 0 { finishCancelled() }
            guard machine.isOpen else { return }
            if waitingForRoom { flushWaiting() }
            if let state { amqp_maybe_release_buffers(state) }
            if frames == 0 && mailboxIsEmpty {
                let mask = warren_wait(socketFD, connection.wakeFD, pollInterval)
                if mask & 2 != 0 { warren_eventfd_drain(connection.wakeFD) }
            }
        }
    }

    private var mailboxIsEmpty: Bool { connection.shared.withLock { $0.mailbox.isEmpty } }

    private func drainMailbox() {
        let commands = connection.shared.withLock { shared -> [AMQPConnection.Command] in
            let commands = shared.mailbox
            shared.mailbox.removeAll(keepingCapacity: true)
            return commands
        }
        for command in commands { command.run(self) }
    }

    // MARK: - Connecting

    private func connectAny() throws(AMQPError) {
        var lastError = AMQPError(.connectionFailed, function: "connect", message: "no endpoint configured")
        for endpoint in configuration.endpoints {
            do {
                try open(endpoint)
                logger.info("AMQP connected", metadata: ["amqp.endpoint": "\(endpoint)"])
                return
            } catch {
                lastError = error
                logger.debug("AMQP endpoint failed", metadata: ["amqp.endpoint": "\(endpoint)", "error": "\(error)"])
            }
        }
        throw lastError
    }

    private func open(_ endpoint: AMQPEndpoint) throws(AMQPError) {
        guard let newState = amqp_new_connection() else {
            throw AMQPError(.connectionFailed, function: "amqp_new_connection", message: "out of memory")
        }
        var ok = false
        defer { if !ok { amqp_destroy_connection(newState) } }
        guard let socket = amqp_tcp_socket_new(newState) else {
            throw AMQPError(.connectionFailed, function: "amqp_tcp_socket_new", message: "cannot create socket")
        }
        var connectTimeout = timeval(configuration.connectTimeout)
        var rpcTimeout = timeval(configuration.rpcTimeout)
        let status = amqp_socket_open_noblock(socket, endpoint.host, Int32(endpoint.port), &connectTimeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            throw AMQPError.status(status, "amqp_socket_open_noblock(\(endpoint.host):\(endpoint.port))", code: .connectionFailed)
        }
        amqpCheckQuietly(amqp_set_handshake_timeout(newState, &connectTimeout))
        amqpCheckQuietly(amqp_set_rpc_timeout(newState, &rpcTimeout))
        let heartbeat = Int32(clamping: configuration.heartbeat.components.seconds)
        let login = warren_amqp_login(newState, endpoint.vhost, 0, 131_072, heartbeat, endpoint.user, endpoint.password, configuration.connectionName)
        try check(login, "amqp_login", code: .connectionFailed, state: newState)
        amqp_channel_open(newState, Self.controlChannel)
        try check(amqp_get_rpc_reply(newState), "amqp_channel_open", code: .connectionFailed, state: newState)
        if configuration.publisherConfirms {
            amqp_channel_open(newState, Self.publishChannel)
            try check(amqp_get_rpc_reply(newState), "amqp_channel_open", code: .connectionFailed, state: newState)
            amqp_confirm_select(newState, Self.publishChannel)
            try check(amqp_get_rpc_reply(newState), "amqp_confirm_select", code: .connectionFailed, state: newState)
        }
        state = newState
        socketFD = amqp_get_sockfd(newState)
        generation += 1
        machine.socketOpened()
        confirms = ConfirmWindow()
        returned.removeAll()
        nextConsumerChannel = 3
        freeChannels.removeAll()
        waitingForRoom = false
        ok = true
        do {
            if let setup = connection.setup { try setup(AMQPControl(driver: self)) }
            try resubscribeConsumers()
        } catch {
            let failure = error as? AMQPError ?? AMQPError(.connectionFailed, function: "setup", message: "\(error)")
            destroy()
            throw failure
        }
    }

    /// The machine says open: tell the callers waiting in `connect()`.
    private func announceOpen() {
        let waiters = connection.shared.withLock { shared in
            shared.connected = true
            shared.blocked = false
            defer { shared.connectWaiters.removeAll() }
            return shared.connectWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Subscribes the consumers again on a new connection. A queue that is gone (404) ends its
    /// consumer's deliveries with the error; any other failure (access refused while
    /// permissions change, the connection dropping again) fails this connection attempt with
    /// every consumer kept, so the reconnect loop tries again after its backoff.
    private func resubscribeConsumers() throws {
        finishCancelled(retiring: false)  // their channels were the last connection's
        let active = consumers.values.filter { !$0.cancelled }
        consumers.removeAll()
        for consumer in active {
            do {
                let (tag, channel) = try subscribe(consumer.request, tag: consumer.tag)
                consumer.tag = tag
                consumer.channel = channel
                consumer.tags = DeliveryTagTracker()
                consumers[tag] = consumer
            } catch where error.replyCode != 404 {
                for kept in active { consumers[kept.tag] = kept }
                throw error
            } catch {
                consumer.continuation.finish(throwing: error)
            }
        }
    }

    private func destroy() {
        if let state { amqp_destroy_connection(state) }
        state = nil
        socketFD = -1
        connection.shared.withLock { $0.connected = false }
    }

    /// The connection broke: fail what depended on it and let `run` reconnect.
    func lose(_ error: AMQPError) {
        guard case .failInFlight(let lost) = machine.lost(error) else { return }
        logger.error("AMQP connection lost", metadata: ["error": "\(error)"])
        destroy()
        for pending in confirms.reset() { pending.complete(.failure(lost)) }
        failWaiting(lost)
        // Cancelled consumers get nothing more on this connection.
        if !finishing.isEmpty { finishCancelled() }
    }

    private func failWaiting(_ error: AMQPError) {
        let queued = waiting[waitingHead...]
        waiting.removeAll()
        waitingHead = 0
        for item in queued { item.complete(.failure(error)) }
    }

    private func closeGracefully() {
        if let state {
            amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        }
        destroy()
    }

    /// Ends the thread: fails everything still pending, finishes consumer streams, wakes
    /// connect and close waiters, and releases the wake-up descriptor.
    private func finish(failing error: AMQPError) {
        destroy()
        for pending in confirms.reset() { pending.complete(.failure(error)) }
        failWaiting(error)
        finishing.removeAll()
        for consumer in consumers.values {
            if machine.closeWasRequested { consumer.continuation.finish() } else { consumer.continuation.finish(throwing: error) }
        }
        consumers.removeAll()
        let (commands, connectWaiters, closeWaiters) = connection.shared.withLock { shared in
            shared.finished = true
            shared.connected = false
            defer {
                shared.mailbox.removeAll()
                shared.connectWaiters.removeAll()
                shared.closeWaiters.removeAll()
            }
            return (shared.mailbox, shared.connectWaiters, shared.closeWaiters)
        }
        for command in commands { command.fail(error) }
        for waiter in connectWaiters { waiter.resume(throwing: error) }
        close(connection.wakeFD)
        for waiter in closeWaiters { waiter.resume() }
        if !machine.everConnected { logger.debug("AMQP connection ended", metadata: ["error": "\(error)"]) }
    }

    func requestClose() { machine.closeRequested() }

    func requireConnected(_ operation: String) throws(AMQPError) {
        if let refusal = machine.refusal(for: operation) { throw refusal }
        if state == nil { throw AMQPError(.notConnected, function: operation, message: "not connected") }
    }

    // MARK: - Frames

    private func dispatch(_ frame: amqp_frame_t) {
        guard frame.frame_type == UInt8(AMQP_FRAME_METHOD), let state else { return }
        let method = frame.payload.method
        switch method.id {
        case WARREN_BASIC_DELIVER:
            let deliver = method.decoded.assumingMemoryBound(to: amqp_basic_deliver_t.self).pointee
            var message = amqp_message_t()
            let reply = amqp_read_message(state, frame.channel, &message, 0)
            guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
                lose(replyError(reply, "amqp_read_message", code: .connectionLost))
                return
            }
            var delivery = AMQPDelivery(
                deliveryTag: deliver.delivery_tag,
                redelivered: deliver.redelivered != 0,
                exchange: String(amqpBytes: deliver.exchange),
                routingKey: String(amqpBytes: deliver.routing_key),
                consumerTag: String(amqpBytes: deliver.consumer_tag),
                properties: AMQPProperties(copying: message.properties),
                body: [UInt8](amqpBytes: message.body),
                channel: frame.channel,
                generation: generation)
            amqp_destroy_message(&message)
            delivery.receivedAt = .now()
            if let consumer = consumers[delivery.consumerTag] {
                consumer.tags.receive(delivery.deliveryTag)
                if consumer.finished {
                    // Cannot happen after a cancel-ok (the broker sends nothing more); were it
                    // to, hand it back rather than hold it unacked on an open channel.
                    logger.warning("delivery for a consumer whose stream ended; requeued", metadata: ["amqp.consumer_tag": "\(consumer.tag)"])
                    try? settle(delivery, kind: .reject(requeue: true))
                } else {
                    consumer.continuation.yield(delivery)
                }
            }
        case WARREN_BASIC_ACK:
            let ack = method.decoded.assumingMemoryBound(to: amqp_basic_ack_t.self).pointee
            settleConfirms(tag: ack.delivery_tag, multiple: ack.multiple != 0, nacked: false)
        case WARREN_BASIC_NACK:
            let nack = method.decoded.assumingMemoryBound(to: amqp_basic_nack_t.self).pointee
            settleConfirms(tag: nack.delivery_tag, multiple: nack.multiple != 0, nacked: true)
        case WARREN_BASIC_RETURN:
            let ret = method.decoded.assumingMemoryBound(to: amqp_basic_return_t.self).pointee
            var message = amqp_message_t()
            let reply = amqp_read_message(state, frame.channel, &message, 0)
            guard reply.reply_type == AMQP_RESPONSE_NORMAL else {
                lose(replyError(reply, "amqp_read_message", code: .connectionLost))
                return
            }
            let properties = AMQPProperties(copying: message.properties)
            amqp_destroy_message(&message)
            if let id = properties.messageID {
                returned[id] = (ret.reply_code, String(amqpBytes: ret.reply_text))
            }
        case WARREN_BASIC_CANCEL:
            let cancel = method.decoded.assumingMemoryBound(to: amqp_basic_cancel_t.self).pointee
            let tag = String(amqpBytes: cancel.consumer_tag)
            if let consumer = consumers[tag] {
                consumer.cancelled = true
                logger.warning("AMQP consumer cancelled by the broker", metadata: ["amqp.consumer_tag": "\(tag)", "amqp.queue": "\(consumer.request.queue)"])
                consumer.continuation.finish(throwing: AMQPError(.serverClosed, function: "basic.cancel", message: "the broker cancelled consumer \(tag) on \(consumer.request.queue) (queue deleted?)"))
            }
        case WARREN_CHANNEL_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
            var ok = amqp_channel_close_ok_t()
            amqp_send_method(state, frame.channel, WARREN_CHANNEL_CLOSE_OK, &ok)
            // A publishing or consuming channel closed under us: start clean on a new connection.
            lose(AMQPError(.serverClosed, function: "channel \(frame.channel)", message: "the broker closed the channel",
                           replyCode: close.reply_code, replyText: String(amqpBytes: close.reply_text)))
        case WARREN_CONNECTION_CLOSE:
            let close = method.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
            var ok = amqp_connection_close_ok_t()
            amqp_send_method(state, 0, WARREN_CONNECTION_CLOSE_OK, &ok)
            lose(AMQPError(.serverClosed, function: "connection", message: "the broker closed the connection",
                           replyCode: close.reply_code, replyText: String(amqpBytes: close.reply_text)))
        case WARREN_CONNECTION_BLOCKED:
            let blocked = method.decoded.assumingMemoryBound(to: amqp_connection_blocked_t.self).pointee
            machine.blocked()
            connection.shared.withLock { $0.blocked = true }
            logger.warning("AMQP publishing blocked by the broker", metadata: ["reason": "\(String(amqpBytes: blocked.reason))"])
        case WARREN_CONNECTION_UNBLOCKED:
            guard machine.unblocked() else { break }
            connection.shared.withLock { $0.blocked = false }
            logger.info("AMQP publishing unblocked")
            flushWaiting()
        default:
            break
        }
    }

    // MARK: - Publishing

    func enqueuePublishes(_ messages: [AMQPOutgoingMessage], completion: @escaping ([Result<Void, AMQPError>]) -> Void) {
        let collector = BatchCollector(count: messages.count, completion: completion)
        do throws(AMQPError) {
            if let refusal = machine.publishRefusal() { throw refusal }
        } catch {
            for index in messages.indices { collector.set(index, .failure(error)) }
            return
        }
        for (index, message) in messages.enumerated() {
            waiting.append(QueuedPublish(message: message) { collector.set(index, $0) })
        }
        flushWaiting()
    }

    private func flushWaiting() {
        let window = configuration.publisherConfirms ? max(1, configuration.confirmWindow) : Int.max
        let burst = min(waiting.count - waitingHead, window - confirms.outstanding)
        // A burst goes out in full TCP segments; the uncork sends the tail at once.
        let corked = burst > 1 && socketFD >= 0
        if corked { warren_set_cork(socketFD, 1) }
        waitingForRoom = false
        var room = 0  // bytes the socket surely takes, asked again only when it runs short
        while waitingHead < waiting.count, confirms.outstanding < window, machine.state == .open(blocked: false) {
            let item = waiting[waitingHead]
            let need = item.message.body.count + Self.publishOverhead
            if confirms.outstanding > 0, room < need + Self.roomMargin {
                room = sendRoom()
                if room < need + Self.roomMargin {
                    waitingForRoom = true  // the confirms (or the serve loop) bring us back
                    break
                }
            }
            room -= need
            waitingHead += 1
            publishNow(item)
        }
        if corked && socketFD >= 0 { warren_set_cork(socketFD, 0) }
        if waitingHead == waiting.count {
            waiting.removeAll(keepingCapacity: true)
            waitingHead = 0
        }
    }

    /// Frame headers and properties of one publish, at most (beside its body).
    static let publishOverhead = 4_096
    /// Left free in the socket so heartbeats and acks can always be written.
    static let roomMargin = 65_536

    /// Bytes the socket takes without blocking. librabbitmq waits for a full socket with no
    /// timeout and services heartbeats only between calls: a write into a link that went
    /// silent would hold this thread for good, and the loss would never be noticed. So a
    /// publish waits in `flushWaiting` for room while earlier ones are unconfirmed (their
    /// confirms, or the heartbeat timeout, come through the serve loop); with none
    /// outstanding it always goes.
    private func sendRoom() -> Int {
        guard socketFD >= 0 else { return Int.max }
        let room = warren_send_room(socketFD)
        return room < 0 ? Int.max : room
    }

    private func publishNow(_ item: QueuedPublish) {
        guard let state else {
            item.complete(.failure(AMQPError(.notConnected, function: "amqp_basic_publish", message: "not connected")))
            return
        }
        let arena = CArena()
        let message = item.message
        var properties = message.properties.cProperties(in: arena)
        let status = amqp_basic_publish(
            state, Self.publishChannel, arena.bytes(message.exchange), arena.bytes(message.routingKey),
            message.mandatory ? 1 : 0, 0, &properties, arena.bytes(message.body))
        guard status == AMQP_STATUS_OK.rawValue else {
            // The message may be half-written; the connection is unusable either way.
            item.complete(.failure(AMQPError.status(status, "amqp_basic_publish", code: .connectionLost)))
            lose(AMQPError.status(status, "amqp_basic_publish", code: .connectionLost))
            return
        }
        if configuration.publisherConfirms {
            _ = confirms.append(PendingPublish(messageID: message.properties.messageID, complete: item.complete))
        } else {
            item.complete(.success(()))
        }
    }

    private func settleConfirms(tag: UInt64, multiple: Bool, nacked: Bool) {
        for (_, pending) in confirms.settle(tag: tag, multiple: multiple) {
            if let id = pending.messageID, let ret = returned.removeValue(forKey: id) {
                pending.complete(.failure(AMQPError(.unroutable, function: "basic.return",
                                                    message: "no queue is bound for this message", replyCode: ret.code, replyText: ret.text)))
            } else if nacked {
                pending.complete(.failure(AMQPError(.nacked, function: "basic.nack",
                                                    message: "the broker refused the message (queue full with reject-publish, or an internal error)")))
            } else {
                pending.complete(.success(()))
            }
        }
        flushWaiting()
    }

    // MARK: - Consuming

    func startConsumer(_ request: ConsumeRequest, continuation: AsyncThrowingStream<AMQPDelivery, any Error>.Continuation) throws -> String {
        try requireConnected("amqp_basic_consume")
        let (tag, channel) = try subscribe(request, tag: request.requestedTag)
        consumers[tag] = Consumer(request: request, continuation: continuation, tag: tag, channel: channel)
        return tag
    }

    /// Opens a consumer channel (or takes a freed one), sets its prefetch and starts
    /// basic.consume on it. Returns the consumer tag and the channel.
    private func subscribe(_ request: ConsumeRequest, tag: String) throws(AMQPError) -> (String, amqp_channel_t) {
        guard let state else { throw AMQPError(.notConnected, function: "amqp_basic_consume", message: "not connected") }
        let channel: amqp_channel_t
        if let free = freeChannels.popLast() {
            channel = free  // open already, its last consumer cancelled and settled
        } else {
            channel = nextConsumerChannel
            nextConsumerChannel += 1
            amqp_channel_open(state, channel)
            try check(amqp_get_rpc_reply(state), "amqp_channel_open", code: .connectionLost, state: state)
        }
        amqp_basic_qos(state, channel, 0, request.prefetch, 0)
        try check(amqp_get_rpc_reply(state), "amqp_basic_qos", code: .serverClosed, state: state, channel: channel)
        let arena = CArena()
        var arguments = AMQPTable()
        if let priority = request.priority { arguments["x-priority"] = .int(Int64(priority)) }
        let ok = amqp_basic_consume(state, channel, arena.bytes(request.queue), arena.bytes(tag), 0, 0, 0, arena.table(arguments))
        try check(amqp_get_rpc_reply(state), "amqp_basic_consume(\(request.queue))", code: .serverClosed, state: state, channel: channel)
        guard let ok else { throw AMQPError(.library, function: "amqp_basic_consume", message: "no consume-ok") }
        logger.debug("AMQP consumer started", metadata: ["amqp.queue": "\(request.queue)", "amqp.prefetch": "\(request.prefetch)"])
        return (String(amqpBytes: ok.pointee.consumer_tag), channel)
    }

    /// basic.cancel: no deliveries after the cancel-ok. Frames read while waiting for it
    /// (deliveries sent before it) are queued by librabbitmq and dispatched by the serve loop,
    /// so the stream ends only once they are (``finishCancelled()``). Once every delivery of
    /// the consumer is settled its channel is freed for the next one (``retireIfSettled(_:)``).
    func cancelConsumer(_ tag: String) throws {
        try requireConnected("amqp_basic_cancel")
        guard let consumer = consumers[tag], !consumer.cancelled, let state else { return }
        consumer.cancelled = true
        // Listed first: if the RPC fails, the connection is lost and ``lose(_:)`` ends the stream.
        finishing.append(consumer)
        let arena = CArena()
        amqp_basic_cancel(state, consumer.channel, arena.bytes(tag))
        try check(amqp_get_rpc_reply(state), "amqp_basic_cancel", code: .serverClosed, state: state, channel: consumer.channel)
    }

    /// Ends the streams of consumers cancelled here, and frees the channels of those with
    /// nothing left to settle.
    private func finishCancelled(retiring: Bool = true) {
        let ended = finishing
        finishing.removeAll()
        for consumer in ended where !consumer.finished {
            consumer.finished = true
            consumer.continuation.finish()
            if retiring { retireIfSettled(consumer) }
        }
    }

    /// Frees a cancelled, ended consumer's channel once none of its deliveries is unsettled:
    /// the next subscription takes it (a new `basic.qos` applies to consumers started after it,
    /// and with nothing of the old consumer outstanding a `multiple` ack of the new one covers
    /// only its own tags). The channel is not closed: a quorum queue applies the acks of a
    /// closing channel after it returns the channel's messages (its settles are low-priority
    /// commands, overtaken by the channel's `down`), so messages acked just before a
    /// channel.close came back redelivered in `ResubscribeTests`.
    private func retireIfSettled(_ consumer: Consumer) {
        guard consumer.cancelled, consumer.finished, consumer.tags.outstanding == 0, consumers[consumer.tag] === consumer,
              machine.hasLiveSocket else { return }
        consumers[consumer.tag] = nil
        freeChannels.append(consumer.channel)
    }

    func settle(_ delivery: AMQPDelivery, kind: Settlement) throws {
        guard delivery.generation == generation, machine.hasLiveSocket, let state else {
            throw AMQPError(.connectionLost, function: "settle", message: "delivery \(delivery.deliveryTag) came on an earlier connection; the broker has requeued it")
        }
        // Never settle a tag twice (the broker would close the channel): the tracker knows
        // what is outstanding.
        // (A retired consumer had nothing outstanding, so a delivery of it is settled already;
        // its channel may serve another consumer now.)
        guard let consumer = consumers[delivery.consumerTag] else {
            throw AMQPError(.invalidArgument, function: "settle", message: "delivery \(delivery.deliveryTag) is not outstanding (settled already?)")
        }
        let multiple: Bool
        switch kind {
        case .ack(let flag), .nack(let flag, _): multiple = flag
        case .reject: multiple = false
        }
        if multiple {
            consumer.tags.settleAll(upTo: delivery.deliveryTag)
        } else if consumer.tags.settle(CollectionOfOne(delivery.deliveryTag)).isEmpty {
            throw AMQPError(.invalidArgument, function: "settle", message: "delivery \(delivery.deliveryTag) is not outstanding (settled already?)")
        }
        defer { if consumer.cancelled { retireIfSettled(consumer) } }
        let status: Int32
        let function: String
        switch kind {
        case .ack(let multiple):
            status = amqp_basic_ack(state, delivery.channel, delivery.deliveryTag, multiple ? 1 : 0)
            function = "amqp_basic_ack"
        case .nack(let multiple, let requeue):
            status = amqp_basic_nack(state, delivery.channel, delivery.deliveryTag, multiple ? 1 : 0, requeue ? 1 : 0)
            function = "amqp_basic_nack"
        case .reject(let requeue):
            status = amqp_basic_reject(state, delivery.channel, delivery.deliveryTag, requeue ? 1 : 0)
            function = "amqp_basic_reject"
        }
        if status != AMQP_STATUS_OK.rawValue {
            let error = AMQPError.status(status, function, code: .connectionLost)
            lose(error)
            throw error
        }
    }

    /// Acks a batch, with `multiple` where the tags allow. Returns the deliveries that came on
    /// an earlier connection (the broker requeued those; they were not acked).
    func ackBatch(_ deliveries: [AMQPDelivery]) throws -> [AMQPDelivery] {
        guard machine.hasLiveSocket, let state else { return deliveries }
        var stale: [AMQPDelivery] = []
        var byConsumer: [String: [UInt64]] = [:]
        for delivery in deliveries {
            if delivery.generation != generation || consumers[delivery.consumerTag] == nil {
                stale.append(delivery)
            } else {
                byConsumer[delivery.consumerTag, default: []].append(delivery.deliveryTag)
            }
        }
        for (tag, tags) in byConsumer {
            guard let consumer = consumers[tag] else { continue }
            for ack in consumer.tags.settle(tags) {
                let status = amqp_basic_ack(state, consumer.channel, ack.tag, ack.multiple ? 1 : 0)
                if status != AMQP_STATUS_OK.rawValue {
                    let error = AMQPError.status(status, "amqp_basic_ack", code: .connectionLost)
                    lose(error)
                    throw error
                }
            }
            if consumer.cancelled { retireIfSettled(consumer) }
        }
        return stale
    }

    // MARK: - RPC replies

    /// Throws for a failed RPC. A server channel close is answered (close-ok) and, for the
    /// control channel, the channel is reopened so later commands work; a connection-level
    /// failure marks the connection lost.
    func check(_ reply: amqp_rpc_reply_t, _ function: String, code: AMQPError.Code, state: amqp_connection_state_t,
               channel: amqp_channel_t = AMQPDriver.controlChannel) throws(AMQPError) {
        guard reply.reply_type != AMQP_RESPONSE_NORMAL else { return }
        var error = replyError(reply, function, code: code)
        guard self.state == state else {
            // Still connecting (login, channel open, confirm.select): the caller destroys it.
            error.code = code
            throw error
        }
        if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, reply.reply.id == WARREN_CHANNEL_CLOSE {
            var ok = amqp_channel_close_ok_t()
            amqp_send_method(state, channel, WARREN_CHANNEL_CLOSE_OK, &ok)
            if channel == Self.controlChannel {
                amqp_channel_open(state, channel)
                if amqp_get_rpc_reply(state).reply_type != AMQP_RESPONSE_NORMAL {
                    lose(AMQPError(.connectionLost, function: "amqp_channel_open", message: "cannot reopen the control channel"))
                }
            }
        } else if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION, reply.reply.id == WARREN_CONNECTION_CLOSE {
            var ok = amqp_connection_close_ok_t()
            amqp_send_method(state, 0, WARREN_CONNECTION_CLOSE_OK, &ok)
            lose(error)
        } else {
            lose(error)
        }
        throw error
    }

    func replyError(_ reply: amqp_rpc_reply_t, _ function: String, code: AMQPError.Code) -> AMQPError {
        switch reply.reply_type {
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return AMQPError.status(reply.library_error, function, code: code)
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if reply.reply.id == WARREN_CONNECTION_CLOSE {
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                return AMQPError(.serverClosed, function: function, message: "the broker closed the connection",
                                 replyCode: close.reply_code, replyText: String(amqpBytes: close.reply_text))
            }
            if reply.reply.id == WARREN_CHANNEL_CLOSE {
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                return AMQPError(.serverClosed, function: function, message: "the broker refused the command",
                                 replyCode: close.reply_code, replyText: String(amqpBytes: close.reply_text))
            }
            return AMQPError(.serverClosed, function: function, message: "unexpected server method \(reply.reply.id)")
        default:
            return AMQPError(code, function: function, message: "no reply from the library")
        }
    }
}

/// Ignores a status that only matters for diagnostics (setting timeouts cannot fail on a new state).
@inline(__always)
private func amqpCheckQuietly(_ status: Int32) {}

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}

