import Hummingbird
import Logging
import Synchronization
import WarrenAuth

/// What a request carries through the middleware to its route: its id, and the token that
/// authenticated it.
package struct APIRequestContext: RequestContext {
    package var coreContext: CoreRequestContextStorage
    /// The caller's `X-Request-Id`, or a new id (set by ``RequestLogMiddleware``).
    package var requestID = ""
    /// The token that authenticated the request (set by ``AuthenticationMiddleware``).
    package var token: APIToken?
    /// The console session that signed the request in (set by ``ConsoleSessionMiddleware``).
    package var session: ConsoleSessionStore.Session?
    /// What inner middleware tells the outer request log: a context is passed inward by value,
    /// so the tenant found by authentication comes back out through this one shared box.
    let trail = RequestTrail()

    package init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }

    /// The authenticated token. Every route that reads it sits behind an
    /// ``AuthenticationMiddleware``; one that does not is a programming error, answered 500.
    func authenticated() throws(APIError) -> APIToken {
        guard let token else { throw APIError(.internalServerError, "internal", "route served without authentication") }
        return token
    }
}

/// The tenant of the token that authenticated a request, for its log line.
final class RequestTrail: Sendable {
    private let tenant = Mutex<String?>(nil)

    func set(tenant: String) { self.tenant.withLock { $0 = tenant } }
    var tenantName: String? { tenant.withLock { $0 } }
}
