import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import WarrenConfig
import WarrenSupport

/// The admin port every Warren service serves (the consumers and the scheduler on
/// `WARREN_ADMIN_PORT`; `producer serve` on its API port): `GET /healthz` (the process is
/// alive), `GET /readyz` (503 naming what is down), `GET /metrics` (Prometheus text), and
/// `GET /status` (JSON: what this process is doing).
package enum AdminServer {
    /// Default `WARREN_ADMIN_PORT`. Port 0 asks the kernel for a free one (logged at start).
    package static let defaultPort = 9090

    /// Names of the dependencies a process cannot reach (empty when ready).
    package typealias ReadinessCheck = @Sendable () async -> [String]

    /// The HTTP server as a swift-service-lifecycle service, to run in the process's group.
    /// `bound` is fulfilled with the port once it listens: a consumer waits for it before
    /// taking jobs, so a port already taken stops the process before it holds any work.
    package static func service(host: String, port: Int, ready: @escaping ReadinessCheck,
                                status: @escaping @Sendable () async -> String, posts: [PostRoute] = [],
                                bound: OneShot<Int>? = nil, logger: Logger) -> some Service {
        let router = Router(context: BasicRequestContext.self)
        addHealthRoutes(to: router, ready: ready)
        router.get("status") { _, _ in jsonResponse(.ok, await status()) }
        for route in posts {
            router.post("\(route.name)/:parameter") { request, context in
                let body: ByteBuffer
                do {
                    body = try await request.body.collect(upTo: route.maxBodyBytes)
                } catch {
                    return jsonResponse(.contentTooLarge, #"{"error":"the body is over \#(route.maxBodyBytes) bytes"}"#)
                }
                let (code, json) = await route.handle(context.parameters.get("parameter") ?? "", Array(buffer: body))
                return code == 204 ? Response(status: .noContent) : jsonResponse(.init(code: code), json)
            }
        }
        let application = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "warren-admin"),
            onServerRunning: { channel in
                let actual = channel.localAddress?.port ?? port
                logger.info("admin server listening", metadata: [
                    "admin_port": "\(actual)", "routes": "\((["/healthz", "/readyz", "/metrics", "/status"] + posts.map { "/\($0.name)/{id}" }).joined(separator: " "))",
                ])
                bound?.fulfil(actual)
            },
            logger: logger)
        return Listener(application: application, host: host, port: port)
    }

    /// `POST /<name>/{parameter}`, a route of the process's own (the consumer's progress URLs).
    /// `handle` gets the parameter and the body, and answers a status and a JSON body (none
    /// for 204).
    package struct PostRoute: Sendable {
        package var name: String
        package var maxBodyBytes: Int
        package var handle: @Sendable (_ parameter: String, _ body: [UInt8]) async -> (status: Int, json: String)

        package init(name: String, maxBodyBytes: Int = 16_384,
                     handle: @escaping @Sendable (_ parameter: String, _ body: [UInt8]) async -> (status: Int, json: String)) {
            self.name = name
            self.maxBodyBytes = maxBodyBytes
            self.handle = handle
        }
    }

    /// The admin port is taken by another process.
    package struct PortInUse: Error, CustomStringConvertible {
        package var host: String
        package var port: Int
        package var description: String {
            "admin port \(port) on \(host) is already in use: pick another with --admin-port or WARREN_ADMIN_PORT (0 picks a free one)"
        }
    }

    /// The admin server, with a bind failure told in words a person can act on.
    private struct Listener<Wrapped: Service>: Service, CustomStringConvertible {
        let application: Wrapped
        let host: String
        let port: Int
        var description: String { "AdminServer(\(host):\(port))" }

        func run() async throws {
            do {
                try await application.run()
            } catch let error as IOError where error.errnoCode == EADDRINUSE {
                throw PortInUse(host: host, port: port)
            }
        }
    }

    /// `/healthz`, `/readyz` and `/metrics` on `router` (the producer adds them to its API).
    package static func addHealthRoutes<Context: RequestContext>(to router: Router<Context>, ready: @escaping ReadinessCheck) {
        router.get("healthz") { _, _ in jsonResponse(.ok, #"{"status":"ok"}"#) }
        router.get("readyz") { _, _ in
            let down = await ready()
            if down.isEmpty { return jsonResponse(.ok, #"{"status":"ready"}"#) }
            return jsonResponse(.serviceUnavailable,
                                #"{"status":"unavailable","down":[\#(down.map(JSONText.quoted).joined(separator: ","))]}"#)
        }
        router.get("metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: ResponseBody(byteBuffer: ByteBuffer(string: Observability.renderMetrics())))
        }
    }

    package static func jsonResponse(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
    }

    /// `WARREN_ADMIN_HOST` (0.0.0.0) and `WARREN_ADMIN_PORT` (9090), a flag winning.
    package static func address(flag: Int?, environment: [String: String]) throws(SettingsError) -> (host: String, port: Int) {
        let reader = EnvironmentReader(environment)
        let port: Int
        if let flag { port = flag } else { port = try reader.integer("WARREN_ADMIN_PORT", 0...65_535) ?? defaultPort }
        guard (0...65_535).contains(port) else {
            throw SettingsError(key: "--admin-port", message: "must be 0...65535, got \(port)")
        }
        return (reader.string("WARREN_ADMIN_HOST") ?? "0.0.0.0", port)
    }
}
