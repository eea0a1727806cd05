import CRabbitMQ

/// An error from the AMQP layer: which call failed, and the broker's or the library's words.
///
/// `description` is safe to show to users. `replyCode`/`replyText` are set when the broker
/// closed a channel or the connection (e.g. 404 NOT_FOUND, 406 PRECONDITION_FAILED).
package struct AMQPError: Error, Sendable, Equatable, CustomStringConvertible {
    package struct Code: Sendable, Hashable, CustomStringConvertible {
        fileprivate let name: String
        package var description: String { name }

        /// TCP connect, handshake or login failed.
        package static let connectionFailed = Code(name: "connectionFailed")
        /// The connection broke (socket error, heartbeat timeout, broker closed it).
        package static let connectionLost = Code(name: "connectionLost")
        /// The connection is reconnecting; the operation was not attempted.
        package static let notConnected = Code(name: "notConnected")
        /// The connection was closed by us.
        package static let closed = Code(name: "closed")
        /// The broker closed the channel or connection in reply to a command.
        package static let serverClosed = Code(name: "serverClosed")
        /// The broker answered basic.nack for a published message (e.g. reject-publish).
        package static let nacked = Code(name: "nacked")
        /// A mandatory message had no queue to go to (basic.return).
        package static let unroutable = Code(name: "unroutable")
        /// The broker blocked publishing (memory or disk alarm).
        package static let blocked = Code(name: "blocked")
        /// librabbitmq reported a failure.
        package static let library = Code(name: "library")
        /// Invalid configuration or arguments (e.g. a bad URL).
        package static let invalidArgument = Code(name: "invalidArgument")
    }

    package var code: Code
    /// The C function (or operation) that failed, e.g. `amqp_queue_declare`.
    package var function: String
    package var replyCode: UInt16?
    package var replyText: String?
    package var message: String

    package init(_ code: Code, function: String, message: String, replyCode: UInt16? = nil, replyText: String? = nil) {
        self.code = code
        self.function = function
        self.message = message
        self.replyCode = replyCode
        self.replyText = replyText
    }

    package var description: String {
        var text = "AMQP \(code) in \(function): \(message)"
        if let replyCode { text += " (broker reply \(replyCode)\(replyText.map { " \($0)" } ?? ""))" }
        return text
    }

    /// Whether the error means the connection is gone (as opposed to one operation failing).
    package var isConnectionLevel: Bool {
        code == .connectionLost || code == .connectionFailed || code == .library
    }

    /// The message certainly did not reach a queue: the broker refused it (basic.nack, or
    /// returned as unroutable), or it was never sent (not connected, blocked, closed, bad
    /// argument). A lost connection or a library error leaves it unknown.
    package var definitelyNotPublished: Bool {
        [Code.nacked, .unroutable, .notConnected, .blocked, .closed, .invalidArgument, .connectionFailed].contains(code)
    }

    /// Builds an error from a librabbitmq status code.
    package static func status(_ status: Int32, _ function: String, code: Code = .library) -> AMQPError {
        AMQPError(code, function: function, message: String(cString: amqp_error_string2(status)))
    }
}

/// Checks a librabbitmq status code; throws naming the function (like swift-nio's `syscall`).
@inline(__always)
package func amqpCheck(_ status: Int32, _ function: @autoclosure () -> String) throws(AMQPError) {
    if status < 0 { throw AMQPError.status(status, function()) }
}
