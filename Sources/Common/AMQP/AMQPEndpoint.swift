import Foundation

/// One broker address parsed from an `amqp://user:pass@host:port/vhost` URL.
///
/// The vhost is the percent-decoded path without its leading slash (`%2f` is `/`); an empty
/// path means `/`. Query parameters `heartbeat` and `connection_timeout` (seconds) are read.
package struct AMQPEndpoint: Sendable, Equatable, CustomStringConvertible {
    package var host: String
    package var port: Int
    package var user: String
    package var password: String
    package var vhost: String
    package var heartbeatSeconds: Int?
    package var connectionTimeoutSeconds: Int?

    package init(host: String, port: Int = 5672, user: String = "guest", password: String = "guest", vhost: String = "/") {
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.vhost = vhost
    }

    /// Parses one URL. Throws `invalidArgument` naming what is wrong.
    package init(url text: String) throws(AMQPError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        func invalid(_ why: String) -> AMQPError {
            AMQPError(.invalidArgument, function: "AMQPEndpoint(url:)", message: "\(why) in AMQP URL '\(AMQPEndpoint.redacted(trimmed))'")
        }
        guard let components = URLComponents(string: trimmed) else { throw invalid("cannot parse") }
        guard components.scheme?.lowercased() == "amqp" else {
            throw invalid(components.scheme?.lowercased() == "amqps" ? "TLS (amqps) is not supported" : "scheme must be amqp")
        }
        guard let host = components.host, !host.isEmpty else { throw invalid("missing host") }
        self.host = host
        self.port = components.port ?? 5672
        guard (1...65535).contains(port) else { throw invalid("port out of range") }
        self.user = components.user ?? "guest"
        self.password = components.password ?? "guest"
        var path = components.percentEncodedPath
        if path.hasPrefix("/") { path.removeFirst() }
        if path.isEmpty {
            vhost = "/"
        } else {
            guard !path.contains("/"), let decoded = path.removingPercentEncoding else { throw invalid("bad vhost") }
            vhost = decoded
        }
        for item in components.queryItems ?? [] {
            switch item.name {
            case "heartbeat":
                guard let value = item.value.flatMap(Int.init), value >= 0 else { throw invalid("bad heartbeat") }
                heartbeatSeconds = value
            case "connection_timeout":
                guard let value = item.value.flatMap(Int.init), value > 0 else { throw invalid("bad connection_timeout") }
                connectionTimeoutSeconds = value
            default:
                continue
            }
        }
    }

    /// Parses a comma-separated list of URLs (a cluster), tried in turn when connecting.
    package static func list(_ text: String) throws(AMQPError) -> [AMQPEndpoint] {
        let parts = text.split(separator: ",").map { String($0) }.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        guard !parts.isEmpty else {
            throw AMQPError(.invalidArgument, function: "AMQPEndpoint.list", message: "no AMQP URL given")
        }
        var endpoints: [AMQPEndpoint] = []
        for part in parts { endpoints.append(try AMQPEndpoint(url: part)) }
        return endpoints
    }

    /// The URL with the password replaced, for logs.
    package var description: String {
        let encodedVhost = vhost.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? vhost
        return "amqp://\(user):***@\(host):\(port)/\(encodedVhost)"
    }

    static func redacted(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.password != nil else { return url }
        components.password = "***"
        return components.string ?? url
    }
}
