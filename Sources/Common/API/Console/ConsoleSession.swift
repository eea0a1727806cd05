import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import WarrenAuth

/// In front of every console page but the sign-in form: finds the session the request's cookie
/// names (``ConsoleSessionStore``) and puts it and its token in the context. Without one, a
/// page is sent to the sign-in form (303) and a live fragment gets a 401 (its script then
/// reloads the page). A POST must come from the console's own origin (`Origin`, when the
/// browser sends it) and carry the session's CSRF token in its `csrf` field; the session
/// cookie is `SameSite=Strict` as well.
struct ConsoleSessionMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext

    let sessions: ConsoleSessionStore
    let maxBody: Int
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var session: ConsoleSessionStore.Session?
        do {
            if let cookie = request.cookies[Console.cookie] { session = try await sessions.find(cookie.value) }
        } catch {
            logger.warning("console: cannot read the session", metadata: ["error": "\(error)"])
            return Console.errorPage(.serviceUnavailable, "The database is unavailable right now; reload in a moment.")
        }
        guard let session else {
            if request.headers[Console.fragmentHeader] != nil { return Response(status: .unauthorized) }
            let next = request.method == .get ? request.uri.description : "/console"
            return Console.redirect(to: "/console/login?next=\(Console.queryEscaped(next))")
        }
        var request = request
        if request.method == .post {
            guard Console.sameOrigin(request) else {
                return Console.errorPage(.forbidden, "This form was sent from another site; it was refused.")
            }
            let form = Console.Form(try await request.collectBody(upTo: maxBody))
            guard let csrf = form["csrf"], Console.constantTimeEqual(csrf, session.csrf) else {
                return Console.errorPage(.forbidden, "This form has expired (it belongs to another session). Go back, reload the page and try again.")
            }
        }
        var context = context
        context.session = session
        context.token = session.token
        context.trail.set(tenant: session.token.tenant)
        return try await next(request, context)
    }
}

/// Outermost on the console's routes: an ``APIError`` (the database unavailable, say) becomes
/// an HTML error page with the same status, not the API's JSON body.
struct ConsoleErrorMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return Console.errorPage(error.status, error.message.prefix(1).uppercased() + error.message.dropFirst() + ".")
        }
    }
}

/// What the console's pieces share: its cookie, forms, redirects and error pages.
enum Console {
    static let cookie = "warren_console"
    /// Sent by the console's own script when it refreshes a part of a page.
    static let fragmentHeader = HTTPField.Name("X-Warren-Fragment")!

    /// An `application/x-www-form-urlencoded` body: repeated names keep every value.
    struct Form: Sendable {
        private(set) var values: [String: [String]] = [:]

        init(_ buffer: ByteBuffer) {
            self.init(String(buffer: buffer))
        }

        init(_ text: String) {
            for pair in text.split(separator: "&", omittingEmptySubsequences: true) {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                func decoded(_ part: Substring) -> String {
                    String(part).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? ""
                }
                let name = decoded(parts[0])
                values[name, default: []].append(parts.count > 1 ? decoded(parts[1]) : "")
            }
        }

        subscript(_ name: String) -> String? { values[name]?.first }
        func all(_ name: String) -> [String] { values[name] ?? [] }
    }

    static func form(_ request: Request, maxBody: Int) async throws -> Form {
        Form(try await request.body.collect(upTo: maxBody))
    }

    /// A POST's `Origin`, when sent, must be this server's (as the browser reached it).
    static func sameOrigin(_ request: Request) -> Bool {
        guard let origin = request.headers[.origin] else { return true }
        guard let host = request.head.authority else { return false }
        return origin == "http://\(host)" || origin == "https://\(host)"  // direct, or behind a TLS proxy
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }

    /// The session cookie: HttpOnly, SameSite=Strict, for /console only; `Secure` when the
    /// request came through an HTTPS proxy. `maxAge` 0 deletes it.
    static func sessionCookie(_ value: String, maxAge: Int, request: Request) -> String {
        var cookie = "\(Self.cookie)=\(value); Path=/console; Max-Age=\(maxAge); HttpOnly; SameSite=Strict"
        if request.headers[HTTPField.Name("X-Forwarded-Proto")!] == "https" { cookie += "; Secure" }
        return cookie
    }

    static func redirect(to location: String, cookie: String? = nil) -> Response {
        var headers: HTTPFields = [.location: location, .cacheControl: "no-store"]
        if let cookie { headers[.setCookie] = cookie }
        return Response(status: .seeOther, headers: headers)
    }

    /// Where a form goes back to: a console path of this server, never elsewhere.
    static func localPath(_ path: String?, default fallback: String = "/console") -> String {
        guard let path, path.hasPrefix("/console"), !path.hasPrefix("//"), !path.contains("\\"),
              !path.contains(where: { $0.isNewline }) else { return fallback }
        return path
    }

    static func queryEscaped(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~/")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
    }

    /// The headers of every console answer: HTML never cached, never framed, scripts and
    /// styles from this server only.
    static func html(_ status: HTTPResponse.Status = .ok, _ body: String, cookie: String? = nil) -> Response {
        var headers: HTTPFields = [
            .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
            .contentSecurityPolicy: "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            HTTPField.Name("X-Frame-Options")!: "DENY", HTTPField.Name("X-Content-Type-Options")!: "nosniff",
            HTTPField.Name("Referrer-Policy")!: "same-origin",
        ]
        if let cookie { headers[.setCookie] = cookie }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    static func errorPage(_ status: HTTPResponse.Status, _ message: String) -> Response {
        html(status, ConsolePages.render("error", ["title": "Error", "status": "\(status.code)", "message": message]))
    }
}
