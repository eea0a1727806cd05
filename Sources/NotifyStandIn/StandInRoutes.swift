import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// The stand-in's HTTP routes (see ``NotifyStandInCommand``).
struct StandInRoutes: Sendable {
    let inbox: Inbox
    let logger: Logger
    static let maxBodyBytes = 1_048_576

    func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.get("healthz") { _, _ in json(.ok, #"{"status":"ok"}"#) }
        router.post("notify") { request, _ in try await notify(request) }
        // A job receiver for HTTP handlers (the `http-handler` benchmark): reads the job, answers
        // 200 with a small JSON result, records nothing, logs nothing per call.
        router.post("jobs") { request, _ in
            _ = try await request.body.collect(upTo: Self.maxBodyBytes)
            let id = request.headers[HTTPField.Name("X-Warren-Job-Id")!] ?? ""
            return json(.ok, #"{"done":\#(quoted(id))}"#)
        }
        router.get("received") { _, _ in json(.ok, inbox.receivedJSON()) }
        router.delete("received") { _, _ in json(.ok, #"{"cleared":\#(inbox.clear())}"#) }
        router.get("config") { _, _ in json(.ok, inbox.settings.json) }
        router.put("config") { request, _ in
            let body = try await request.body.collect(upTo: 65_536)
            do throws(StandInError) {
                let settings = try inbox.update(Data(Array(buffer: body)))
                logger.info("settings changed", metadata: ["settings": "\(settings.json)"])
                return json(.ok, settings.json)
            } catch {
                return json(.badRequest, #"{"error":\#(quoted(error.description))}"#)
            }
        }
        return router
    }

    private func notify(_ request: Request) async throws -> Response {
        let receivedAt = Date()
        let body = Array(buffer: try await request.body.collect(upTo: Self.maxBodyBytes))
        let key = request.headers[HTTPField.Name("Idempotency-Key")!]
        let (forced, retryAfter, delay) = inbox.draw()
        if delay > 0 { try await Task.sleep(for: .milliseconds(delay)) }

        let status: Int
        var answer: String
        if let forced {
            status = forced
            answer = status < 300 ? #"{"status":"sent"}"# : #"{"error":"stand-in answered \#(status), as configured"}"#
        } else if let problem = Self.problem(body: body, key: key) {
            status = 400
            answer = #"{"error":\#(quoted(problem))}"#
        } else {
            status = 200
            answer = #"{"status":"sent"}"#
        }
        let duplicate = inbox.record(Inbox.Record(idempotencyKey: key, body: body, receivedAt: receivedAt, status: status))
        if duplicate { answer = #"{"status":"duplicate"}"# }
        logger.info("received", metadata: ["idempotency_key": "\(key ?? "-")", "status": "\(status)", "duplicate": "\(duplicate)"])

        var headers: HTTPFields = [.contentType: "application/json"]
        if status == 429 || status == 503 { headers[.retryAfter] = String(retryAfter) }
        return Response(status: HTTPResponse.Status(code: status), headers: headers,
                        body: ResponseBody(byteBuffer: ByteBuffer(string: answer)))
    }

    /// What a real service would refuse: no `Idempotency-Key`, or not a message.
    static func problem(body: [UInt8], key: String?) -> String? {
        guard let key, !key.isEmpty else { return "the Idempotency-Key header is required" }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            return "the body must be a JSON object"
        }
        let missing = ["to", "subject", "body"].filter { !(object[$0] is String) }
        return missing.isEmpty ? nil : "missing string fields: \(missing.joined(separator: ", "))"
    }

    private func json(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }
}
