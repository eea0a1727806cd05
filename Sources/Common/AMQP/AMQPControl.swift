import CRabbitMQ

/// Synchronous AMQP methods on the control channel. Only handed out on the connection's own
/// thread (inside ``AMQPConnection/withControl(_:)`` or the `setup` hook); not Sendable.
///
/// A refused command (e.g. 406 PRECONDITION_FAILED for inequivalent queue arguments, 404 for
/// a passive declare of a missing queue) throws `serverClosed` with the broker's reply; the
/// control channel is reopened so the connection stays usable.
package struct AMQPControl {
    let driver: AMQPDriver

    init(driver: AMQPDriver) { self.driver = driver }

    private func state(_ function: String) throws(AMQPError) -> amqp_connection_state_t {
        try driver.requireConnected(function)
        guard let state = driver.state else { throw AMQPError(.notConnected, function: function, message: "not connected") }
        return state
    }

    package func declareExchange(_ name: String, type: String, durable: Bool = true, autoDelete: Bool = false,
                                 isInternal: Bool = false, arguments: AMQPTable = AMQPTable()) throws(AMQPError) {
        let state = try state("amqp_exchange_declare")
        let arena = CArena()
        amqp_exchange_declare(state, AMQPDriver.controlChannel, arena.bytes(name), arena.bytes(type), 0,
                              durable ? 1 : 0, autoDelete ? 1 : 0, isInternal ? 1 : 0, arena.table(arguments))
        try driver.check(amqp_get_rpc_reply(state), "amqp_exchange_declare(\(name))", code: .serverClosed, state: state)
    }

    /// Declares a queue; returns its name (server-named when `name` is empty) and counts.
    @discardableResult
    package func declareQueue(_ name: String, durable: Bool = true, exclusive: Bool = false, autoDelete: Bool = false,
                              arguments: AMQPTable = AMQPTable()) throws(AMQPError) -> (name: String, messages: UInt32, consumers: UInt32) {
        try queueDeclare(name, passive: false, durable: durable, exclusive: exclusive, autoDelete: autoDelete, arguments: arguments)
    }

    /// Passive declare: the queue's ready-message and consumer counts; 404 if it does not exist.
    package func queueDepth(_ name: String) throws(AMQPError) -> (messages: UInt32, consumers: UInt32) {
        let ok = try queueDeclare(name, passive: true, durable: false, exclusive: false, autoDelete: false, arguments: AMQPTable())
        return (ok.messages, ok.consumers)
    }

    private func queueDeclare(_ name: String, passive: Bool, durable: Bool, exclusive: Bool, autoDelete: Bool,
                              arguments: AMQPTable) throws(AMQPError) -> (name: String, messages: UInt32, consumers: UInt32) {
        let state = try state("amqp_queue_declare")
        let arena = CArena()
        let ok = amqp_queue_declare(state, AMQPDriver.controlChannel, arena.bytes(name), passive ? 1 : 0, durable ? 1 : 0,
                                    exclusive ? 1 : 0, autoDelete ? 1 : 0, arena.table(arguments))
        try driver.check(amqp_get_rpc_reply(state), "amqp_queue_declare(\(name))", code: .serverClosed, state: state)
        guard let ok else { throw AMQPError(.library, function: "amqp_queue_declare", message: "no declare-ok") }
        return (String(amqpBytes: ok.pointee.queue), ok.pointee.message_count, ok.pointee.consumer_count)
    }

    package func bindQueue(_ queue: String, exchange: String, routingKey: String, arguments: AMQPTable = AMQPTable()) throws(AMQPError) {
        let state = try state("amqp_queue_bind")
        let arena = CArena()
        amqp_queue_bind(state, AMQPDriver.controlChannel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey), arena.table(arguments))
        try driver.check(amqp_get_rpc_reply(state), "amqp_queue_bind(\(queue) <- \(exchange))", code: .serverClosed, state: state)
    }

    /// Removes a binding; removing one that does not exist is not an error.
    package func unbindQueue(_ queue: String, exchange: String, routingKey: String, arguments: AMQPTable = AMQPTable()) throws(AMQPError) {
        let state = try state("amqp_queue_unbind")
        let arena = CArena()
        amqp_queue_unbind(state, AMQPDriver.controlChannel, arena.bytes(queue), arena.bytes(exchange), arena.bytes(routingKey), arena.table(arguments))
        try driver.check(amqp_get_rpc_reply(state), "amqp_queue_unbind(\(queue) <- \(exchange))", code: .serverClosed, state: state)
    }

    /// Deletes a queue; returns how many messages it held.
    @discardableResult
    package func deleteQueue(_ name: String) throws(AMQPError) -> UInt32 {
        let state = try state("amqp_queue_delete")
        let arena = CArena()
        let ok = amqp_queue_delete(state, AMQPDriver.controlChannel, arena.bytes(name), 0, 0)
        try driver.check(amqp_get_rpc_reply(state), "amqp_queue_delete(\(name))", code: .serverClosed, state: state)
        return ok?.pointee.message_count ?? 0
    }

    /// Removes every ready message from a queue; returns how many.
    @discardableResult
    package func purgeQueue(_ name: String) throws(AMQPError) -> UInt32 {
        let state = try state("amqp_queue_purge")
        let arena = CArena()
        let ok = amqp_queue_purge(state, AMQPDriver.controlChannel, arena.bytes(name))
        try driver.check(amqp_get_rpc_reply(state), "amqp_queue_purge(\(name))", code: .serverClosed, state: state)
        return ok?.pointee.message_count ?? 0
    }

    package func deleteExchange(_ name: String) throws(AMQPError) {
        let state = try state("amqp_exchange_delete")
        let arena = CArena()
        amqp_exchange_delete(state, AMQPDriver.controlChannel, arena.bytes(name), 0)
        try driver.check(amqp_get_rpc_reply(state), "amqp_exchange_delete(\(name))", code: .serverClosed, state: state)
    }
}
