import WarrenSupport

/// How an ``AMQPConnection`` connects and behaves.
package struct AMQPConfiguration: Sendable {
    /// Brokers tried in turn (a comma-separated `WARREN_AMQP_URL` gives several).
    package var endpoints: [AMQPEndpoint]
    /// Shown in the management UI's connection list.
    package var connectionName: String
    package var heartbeat: Duration = .seconds(30)
    package var connectTimeout: Duration = .seconds(5)
    /// Upper bound for any synchronous AMQP method (declare, consume, close).
    package var rpcTimeout: Duration = .seconds(15)
    /// Put the publishing channel in confirm mode (every Warren publisher does).
    package var publisherConfirms = true
    /// Unconfirmed publishes allowed at once; more wait in order.
    package var confirmWindow = 1024
    /// Reconnect after a lost connection (consumers re-subscribe, the topology is redeclared).
    package var reconnect = true
    package var reconnectBackoff = Backoff(base: .milliseconds(200), cap: .seconds(15), floor: .milliseconds(50))

    package init(endpoints: [AMQPEndpoint], connectionName: String) {
        self.endpoints = endpoints
        self.connectionName = connectionName
        if let heartbeat = endpoints.first?.heartbeatSeconds { self.heartbeat = .seconds(heartbeat) }
        if let timeout = endpoints.first?.connectionTimeoutSeconds { self.connectTimeout = .seconds(timeout) }
    }

    /// From a URL or comma-separated URL list.
    package init(url: String, connectionName: String) throws(AMQPError) {
        self.init(endpoints: try AMQPEndpoint.list(url), connectionName: connectionName)
    }
}
