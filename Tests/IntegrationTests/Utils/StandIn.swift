import Foundation
import Testing

/// A `notify-standin` process (the stand-in notification service) on a free loopback port,
/// started as a user starts it and stopped (SIGTERM, exit 0) afterwards.
struct StandIn: Sendable {
    /// One request as the stand-in recorded it.
    struct Request: Sendable, Equatable {
        var idempotencyKey: String?
        /// The message's string fields (`to`, `subject`, `body`, `kind`).
        var body: [String: String]
        var status: Int
        var duplicate: Bool
    }

    struct Received: Sendable {
        var count: Int
        var delivered: Int
        var requests: [Request]

        func requests(key: String) -> [Request] { requests.filter { $0.idempotencyKey == key } }
        /// Requests for `key` that sent the message (a 200 that was not a repeat).
        func deliveries(key: String) -> Int { requests(key: key).filter { $0.status == 200 && !$0.duplicate }.count }
    }

    var base: String
    /// What `WARREN_NOTIFY_URL` is set to.
    var url: String { base + "/notify" }
    /// The destination its breaker is kept under.
    var destination: String { base }

    /// Changes its settings (`PUT /config`, a JSON object).
    func configure(_ json: String) async throws {
        let (status, _, body) = try await HTTP.request("PUT", base + "/config", body: json)
        #expect(status == 200, "PUT /config \(json): \(body)")
    }

    func received() async throws -> Received {
        let (status, _, body) = try await HTTP.request("GET", base + "/received")
        #expect(status == 200)
        let object = HTTP.object(body)
        let requests = (object["received"] as? [[String: Any]] ?? []).map { item in
            Request(idempotencyKey: item["idempotency_key"] as? String,
                    body: (item["body"] as? [String: Any] ?? [:]).compactMapValues { $0 as? String },
                    status: item["status"] as? Int ?? 0, duplicate: item["duplicate"] as? Bool ?? false)
        }
        return Received(count: object["count"] as? Int ?? -1, delivered: object["delivered"] as? Int ?? -1, requests: requests)
    }

    static func with<T: Sendable>(_ arguments: [String] = [], _ body: (StandIn) async throws -> T) async throws -> T {
        let process = try RunningProduct("notify-standin", ["--port", "0"] + arguments)
        defer { process.signal(SIGKILL) }
        let port = try await process.listeningPort("port")
        let standIn = StandIn(base: "http://127.0.0.1:\(port)")
        try await TestServices.waitUntil(timeout: .seconds(20), "the stand-in answers /healthz") {
            (try? await HTTP.request("GET", standIn.base + "/healthz").0) == 200
        }
        let value = try await body(standIn)
        process.signal(SIGTERM)
        #expect(try await process.wait(timeout: .seconds(20)) == 0, "graceful stop: \(process.stderr.suffix(1_000))")
        return value
    }
}
