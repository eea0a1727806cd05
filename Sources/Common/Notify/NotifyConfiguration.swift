import Foundation
import WarrenConfig
import WarrenResilience

/// Where and how `message.send` jobs are delivered, from the `WARREN_NOTIFY_*` variables (see
/// the README's configuration table).
package struct NotifyConfiguration: Sendable, Equatable {
    package enum Key {
        package static let url = "WARREN_NOTIFY_URL"
        package static let timeout = "WARREN_NOTIFY_TIMEOUT_SECONDS"
        package static let breakerOpen = "WARREN_NOTIFY_BREAKER_OPEN_SECONDS"
        package static let rateLimit = "WARREN_NOTIFY_RATE_LIMIT"
    }

    /// The notification service's endpoint (`http://127.0.0.1:8025/notify`); nil when
    /// `WARREN_NOTIFY_URL` is unset, and then every `message.send` job fails permanently.
    package var url: URL?
    /// One call's deadline, connecting included.
    package var timeout: Duration
    /// The circuit breaker of each destination (scheme, host and port of `url`).
    package var breaker: CircuitBreaker.Configuration
    /// Calls per second to the destination, across the fleet (`WARREN_NOTIFY_RATE_LIMIT`,
    /// `N/s`, `N/min` or `N/h`): see ``destinationLimit``.
    package var rateLimit: Double?

    package init(url: URL? = nil, timeout: Duration = .seconds(10), breaker: CircuitBreaker.Configuration = .init(), rateLimit: Double? = nil) {
        self.url = url
        self.timeout = timeout
        self.breaker = breaker
        self.rateLimit = rateLimit
    }

    /// Reads the variables; a URL that is not `http(s)://host...`, or a number out of range, is
    /// an error naming its variable.
    package init(environment: [String: String]) throws(SettingsError) {
        self.init()
        let reader = EnvironmentReader(environment)
        if let text = reader.string(Key.url) { url = try Self.parseURL(text) }
        if let duration = try reader.seconds(Key.timeout, 0.001...3_600) { timeout = duration }
        if let duration = try reader.seconds(Key.breakerOpen, 0...86_400) { breaker.openDuration = duration }
        if let text = reader.string(Key.rateLimit) {
            guard let rate = OutboundLimits.rate(text) else {
                throw SettingsError(key: Key.rateLimit, message: "expects N/s, N/min or N/h, got '\(text)'")
            }
            rateLimit = rate
        }
    }

    /// The outbound limit `message.send` jobs spend: one key per destination
    /// (`destination http://host:port`), so every consumer whose `WARREN_NOTIFY_URL` names the
    /// same service shares one bucket, whatever its tier. Nil without a URL or a rate.
    package var destinationLimit: OutboundLimits.Limit? {
        guard let url, let rateLimit else { return nil }
        return OutboundLimits.Limit(key: "destination " + Self.destination(of: url), rate: rateLimit, burst: max(1, rateLimit.rounded(.down)))
    }

    package static func parseURL(_ text: String) throws(SettingsError) -> URL {
        guard let components = URLComponents(string: text), let url = components.url else {
            throw SettingsError(key: Key.url, message: "is not a URL: '\(text)'")
        }
        guard let scheme = components.scheme?.lowercased(), scheme == "http" || scheme == "https" else {
            throw SettingsError(key: Key.url, message: "must be an http:// or https:// URL, got '\(text)'")
        }
        guard let host = components.host, !host.isEmpty else {
            throw SettingsError(key: Key.url, message: "has no host: '\(text)'")
        }
        return url
    }

    /// What a circuit breaker is kept for: scheme, host and port (`http://127.0.0.1:8025`),
    /// never the path or credentials.
    package static func destination(of url: URL) -> String {
        let components = URLComponents(url: url, resolvingAgainstBaseURL: false)
        let scheme = components?.scheme?.lowercased() ?? "http"
        let host = components?.host?.lowercased() ?? ""
        let port = components?.port ?? (scheme == "https" ? 443 : 80)
        let hostPart = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return "\(scheme)://\(hostPart):\(port)"
    }
}
