import HTTPTypes
import Hummingbird

/// The answer to a request no route takes, with the API's JSON error body (Hummingbird's own
/// is an empty 404): 405 with `Allow` when the path is a route's under another method, 404
/// otherwise.
///
/// Added to the router after every route, so it wraps only the router's not-found responder
/// (Hummingbird builds each route's middleware chain when the route is added).
struct UnmatchedRouteMiddleware: RouterMiddleware {
    typealias Context = APIRequestContext

    /// Each route's path split at `/` (nil for a `{parameter}`), with its method.
    let routes: [(segments: [Substring?], method: HTTPRequest.Method)]

    init(routes: [Router<Context>.RouteDescription]) {
        self.routes = routes.map { route in
            (Self.segments(route.path.description).map { $0.hasPrefix("{") || $0.hasPrefix(":") || $0 == "*" ? nil : $0 }, route.method)
        }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as any HTTPResponseError where error.status == .notFound {
            return answer(request.method, path: request.uri.path)
        }
    }

    /// 405 naming the methods the path takes, or 404.
    func answer(_ method: HTTPRequest.Method, path: String) -> Response {
        let parts = Self.segments(path)
        let allowed = Set(routes.filter { route in
            route.segments.count == parts.count && zip(route.segments, parts).allSatisfy { $0 == nil || $0 == $1 }
        }.map(\.method.rawValue)).sorted()
        guard !allowed.isEmpty, !allowed.contains(method.rawValue) else {
            return APIError(.notFound, "not_found", "no route for \(method.rawValue) \(path.prefix(200))").response
        }
        var response = APIError(.methodNotAllowed, "method_not_allowed",
                                "\(path.prefix(200)) takes \(allowed.joined(separator: ", ")), not \(method.rawValue)").response
        response.headers[.allow] = allowed.joined(separator: ", ")
        return response
    }

    private static func segments(_ path: String) -> [Substring] { path.split(separator: "/") }
}
