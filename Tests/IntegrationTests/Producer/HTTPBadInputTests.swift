import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenPostgres

/// Hostile input that once got through `producer serve` (issue 11, item 14): NUL characters
/// that Postgres cut short, out-of-range offsets, requests no route takes, unparsable
/// requests and clients that never finish one. Over real HTTP (or a raw socket) against a
/// real server, counting what was stored.
@Suite(.enabled(if: TestServices.enabled))
struct HTTPBadInputTests {
    static let ada = HTTPContactsAndSchedulesTests.ada

    static func errorField(_ body: String) -> String? { (HTTP.object(body)["error"] as? [String: Any])?["field"] as? String }
    static func errorCode(_ body: String) -> String? { (HTTP.object(body)["error"] as? [String: Any])?["code"] as? String }

    func count(_ server: APIServer, _ table: String) async throws -> Int? {
        try await server.withDatabase { try await $0.query("SELECT count(*) FROM \(table)").rows.first?.int(0) }
    }

    /// `"Ada\u0000Evil"` was stored as `Ada`, `"\u0000"` as a blank name, and
    /// `"Europe/London\u0000xyz"` as `Europe/London`: each is a 422 naming the field now.
    @Test func aNulInAContactOrScheduleIsA422NamingTheFieldAndStoresNothing() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "premium", scopes: "contacts:write,schedules:write")
            let contacts: [(String, String)] = [
                (Self.ada.replacingOccurrences(of: #""Ada""#, with: #""Ada\u0000Evil""#), "first_name"),
                (Self.ada.replacingOccurrences(of: #""Ada""#, with: #""\u0000""#), "first_name"),
                (Self.ada.replacingOccurrences(of: #""Lovelace""#, with: #""Love\u0000lace""#), "last_name"),
                (Self.ada.replacingOccurrences(of: #""ada@example.com""#, with: #""ada@exa\u0000mple.com""#), "email"),
                (Self.ada.replacingOccurrences(of: #""Europe/London""#, with: #""Europe/London\u0000xyz""#), "time_zone"),
            ]
            for (body, field) in contacts {
                let (status, _, answer) = try await server.request("POST", "/v1/contacts", token: token, body: body)
                #expect(status == 422, "\(body) → \(answer)")
                #expect(Self.errorField(answer) == field, "\(body) → \(answer)")
                #expect(Self.errorCode(answer) == "invalid_field", "\(body) → \(answer)")
            }
            #expect(try await count(server, "contacts") == 0)
            #expect(try await count(server, "contact_events") == 0)

            // A replace carrying a NUL changes nothing either.
            let (created, _, createdBody) = try await server.request("POST", "/v1/contacts", token: token, body: Self.ada)
            #expect(created == 201, "\(createdBody)")
            let id = try #require(HTTP.field("id", in: createdBody))
            let evil = Self.ada.replacingOccurrences(of: #""Ada""#, with: #""Ada\u0000Evil""#)
            let (replaced, _, replacedBody) = try await server.request("PUT", "/v1/contacts/\(id)", token: token, body: evil)
            #expect(replaced == 422 && Self.errorField(replacedBody) == "first_name", "\(replacedBody)")
            let names = try await server.withDatabase { pool in
                try await pool.query("SELECT first_name FROM contacts").rows.map { try $0.string(0) }
            }
            #expect(names == ["Ada"])

            let schedules: [(String, String)] = [
                (#"{"name":"a","cron":"0 9 * * *","time_zone":"Europe/London\u0000xyz","type":"noop"}"#, "time_zone"),
                (#"{"name":"a","cron":"0 9 * * *\u0000","time_zone":"UTC","type":"noop"}"#, "cron"),
                (#"{"name":"a","cron":"0 9 * * *","time_zone":"UTC","type":"noop\u0000"}"#, "type"),
                (#"{"name":"a\u0000b","cron":"0 9 * * *","time_zone":"UTC","type":"noop"}"#, "name"),
            ]
            for (body, field) in schedules {
                let (status, _, answer) = try await server.request("POST", "/v1/schedules", token: token, body: body)
                #expect(status == 422, "\(body) → \(answer)")
                #expect(Self.errorField(answer) == field, "\(body) → \(answer)")
            }
            let (put, _, putBody) = try await server.request(
                "PUT", "/v1/schedules/nightly", token: token,
                body: #"{"cron":"0 9 * * *","time_zone":"Europe/London\u0000xyz","type":"noop"}"#)
            #expect(put == 422 && Self.errorField(putBody) == "time_zone", "\(putBody)")
            #expect(try await count(server, "schedules") == 0)
        }
    }

    /// Jobs: a NUL in the type, the idempotency key or a batch item, and a `run_at` offset out
    /// of RFC 3339's ±23:59 (`+99:99` was accepted as 4 days off): 422s naming the field,
    /// nothing recorded, held or published.
    @Test func aNulOrAnImpossibleOffsetInAJobIsA422AndNothingIsPublishedOrHeld() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:write")
            let jobs: [(String, String)] = [
                (#"{"type":"noop\u0000x"}"#, "type"),
                (#"{"type":"noop","idempotency_key":"k\u0000"}"#, "idempotency_key"),
                (#"{"type":"noop","run_at":"2026-12-24T09:00:00+99:99"}"#, "run_at"),
                (#"{"type":"noop","run_at":"2099-12-24T09:00:00+24:00"}"#, "run_at"),
                (#"{"type":"noop","run_at":"2026-12-24T09:00:00+05:60"}"#, "run_at"),
            ]
            for (body, field) in jobs {
                let (status, _, answer) = try await server.request("POST", "/v1/jobs", token: token, body: body)
                #expect(status == 422, "\(body) → \(answer)")
                #expect(Self.errorField(answer) == field, "\(body) → \(answer)")
            }
            let batch = #"{"jobs":[{"type":"noop"},{"type":"noop\u0000"}],"on_complete":{"type":"noop"}}"#
            let (status, _, answer) = try await server.request("POST", "/v1/batches", token: token, body: batch)
            #expect(status == 422, "\(answer)")
            let errors = HTTP.object(answer)["errors"] as? [[String: Any]]
            #expect(errors?.count == 1 && errors?.first?["field"] as? String == "jobs[1].type", "\(answer)")

            #expect(try await count(server, "api_jobs") == 0)
            #expect(try await count(server, "delayed_jobs") == 0)
            #expect(try await count(server, "api_batches") == 0)
            let depth = try await connection.withControl { try $0.readyCount(Tier.premium) }
            #expect(depth == 0)
        }
    }

    /// A path no route takes, a known path under another method, and requests NIO cannot
    /// parse all answer the API's JSON error body (they were empty 404s and 400s, and a wrong
    /// method was a 404).
    @Test func unmatchedAndUnparsableRequestsGetTheJSONErrorBody() async throws {
        try await APIServer.with { server, _, _ in
            let (missing, _, missingBody) = try await server.request("GET", "/v1/nothing-here", contentType: nil)
            #expect(missing == 404 && Self.errorCode(missingBody) == "not_found", "\(missingBody)")
            let (deep, _, deepBody) = try await server.request("GET", "/v1/jobs/a/b/c", contentType: nil)
            #expect(deep == 404 && Self.errorCode(deepBody) == "not_found", "\(deepBody)")
            let (long, _, longBody) = try await server.request("GET", "/v1/" + String(repeating: "p", count: 8_000), contentType: nil)
            #expect(long == 404 && Self.errorCode(longBody) == "not_found", "\(long) \(longBody.prefix(200))")

            let methods: [(String, String, String)] = [
                ("PUT", "/v1/jobs", "POST"),
                ("PATCH", "/v1/jobs/0191a1b2-0000-7000-8000-000000000000", "DELETE, GET"),
                ("POST", "/v1/contacts/0191a1b2-0000-7000-8000-000000000000", "DELETE, GET, PUT"),
                ("DELETE", "/v1/batches", "POST"),
                ("POST", "/healthz", "GET"),
            ]
            for (method, path, allow) in methods {
                let (status, headers, body) = try await server.request(method, path, contentType: nil)
                #expect(status == 405, "\(method) \(path): \(status) \(body)")
                #expect(headers["allow"] == allow, "\(method) \(path): \(headers)")
                #expect(Self.errorCode(body) == "method_not_allowed", "\(method) \(path): \(body)")
            }

            let port = try #require(Int(server.base.split(separator: ":").last ?? ""))
            let bigToken = "GET /v1/jobs/0191a1b2-0000-7000-8000-000000000000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + String(repeating: "t", count: 100_000) + "\r\n\r\n"
            let longPath = "GET /v1/" + String(repeating: "p", count: 100_000) + " HTTP/1.1\r\nHost: x\r\n\r\n"
            for (name, request) in [("100 KB token", bigToken), ("100 KB path", longPath)] {
                let exchange = try await RawHTTP.exchange(port: port, send: Array(request.utf8), readFor: .seconds(20))
                let (headers, body) = exchange.headersAndBody
                #expect(exchange.status == 431, "\(name): \(String(decoding: exchange.received.prefix(300), as: UTF8.self))")
                #expect(headers["content-type"] == "application/json", "\(name): \(headers)")
                #expect(Self.errorCode(body) == "headers_too_large", "\(name): \(body)")
                #expect(exchange.closedByServer, "\(name): the connection is closed after the answer")
            }
            let garbage = try await RawHTTP.exchange(port: port, send: Array("NOT HTTP AT ALL\r\n\r\n".utf8), readFor: .seconds(20))
            #expect(garbage.status == 400, "\(String(decoding: garbage.received, as: UTF8.self))")
            #expect(Self.errorCode(garbage.headersAndBody.1) == "bad_request", "\(String(decoding: garbage.received, as: UTF8.self))")
            #expect(try await server.request("GET", "/healthz").0 == 200, "still serving")
        }
    }

    /// A client that sends half a request line and then nothing held its connection (and a
    /// descriptor) for as long as it liked: it is closed after WARREN_HTTP_IDLE_TIMEOUT_SECONDS,
    /// and so is a connection left idle after a request, while the server goes on serving.
    @Test func aClientThatNeverFinishesItsRequestIsDisconnected() async throws {
        try await APIServer.with(extra: ["WARREN_HTTP_IDLE_TIMEOUT_SECONDS": "1"]) { server, _, _ in
            let port = try #require(Int(server.base.split(separator: ":").last ?? ""))
            async let half = RawHTTP.exchange(port: port, send: Array("GET /hea".utf8), readFor: .seconds(20))
            async let headers = RawHTTP.exchange(port: port, send: Array("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".utf8),
                                                 readFor: .seconds(20))
            async let idle = RawHTTP.exchange(port: port, send: Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8),
                                              readFor: .seconds(20))
            let (halfLine, halfHeaders, afterRequest) = try await (half, headers, idle)
            #expect(halfLine.closedByServer && halfLine.received.isEmpty, "half a request line: \(halfLine)")
            #expect(halfHeaders.closedByServer && halfHeaders.received.isEmpty, "half the headers: \(halfHeaders)")
            #expect(afterRequest.status == 200 && afterRequest.closedByServer, "idle after a request: \(afterRequest)")
            #expect(try await server.request("GET", "/healthz").0 == 200, "still serving")
        }
    }
}
