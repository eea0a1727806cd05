import Foundation
import Testing
import WarrenPostgres

/// `/v1/contacts` and `/v1/schedules` over real HTTP against a real `producer serve`.
@Suite(.enabled(if: TestServices.enabled))
struct HTTPContactsAndSchedulesTests {
    static let ada = #"{"first_name":"Ada","last_name":"Lovelace","email":"ada@example.com","birthday":"1815-12-10","time_zone":"Europe/London"}"#

    @Test func contactsAreCreatedReadListedReplacedAndDeletedWithinTheirTenant() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "premium", scopes: "contacts:write")
            let other = try await server.token(tier: "premium", scopes: "contacts:write", tenant: "globex")
            let (created, _, body) = try await server.request("POST", "/v1/contacts", token: token, body: Self.ada)
            #expect(created == 201, "\(body)")
            let contact = HTTP.object(body)
            let id = try #require(contact["id"] as? String)
            #expect(contact["birthday"] as? String == "1815-12-10" && contact["tier"] as? String == "premium")
            #expect(contact["anniversary"] is NSNull)

            let (got, _, gotBody) = try await server.request("GET", "/v1/contacts/\(id)", token: token, contentType: nil)
            #expect(got == 200 && HTTP.object(gotBody)["email"] as? String == "ada@example.com")
            #expect(try await server.request("GET", "/v1/contacts/\(id)", token: other, contentType: nil).0 == 404, "another tenant's")

            let replaced = #"{"first_name":"Ada","last_name":"King","email":"ada@example.com","birthday":"1815-12-10","anniversary":"1835-07-08","time_zone":"Australia/Lord_Howe"}"#
            let (put, _, putBody) = try await server.request("PUT", "/v1/contacts/\(id)", token: token, body: replaced)
            #expect(put == 200, "\(putBody)")
            #expect(HTTP.object(putBody)["anniversary"] as? String == "1835-07-08")
            #expect(try await server.request("PUT", "/v1/contacts/\(id)", token: other, body: replaced).0 == 404)
            let events = try await server.withDatabase { pool in
                try await pool.query("SELECT kind, time_zone, month_day FROM contact_events ORDER BY kind").rows
                    .map { "\(try $0.string(0)) \(try $0.string(1)) \(try $0.int(2))" }
            }
            #expect(events == ["anniversary Australia/Lord_Howe 708", "birthday Australia/Lord_Howe 1210"])

            for index in 0..<3 {
                let (status, _, _) = try await server.request(
                    "POST", "/v1/contacts", token: token,
                    body: #"{"first_name":"P\#(index)","last_name":"Q","email":"p\#(index)@example.com","birthday":"2000-01-0\#(index + 1)","time_zone":"Asia/Kolkata"}"#)
                #expect(status == 201)
            }
            let (_, _, page1) = try await server.request("GET", "/v1/contacts?limit=3", token: token, contentType: nil)
            let first = HTTP.object(page1)
            #expect((first["contacts"] as? [Any])?.count == 3)
            let after = try #require(first["next_after"] as? String)
            let (_, _, page2) = try await server.request("GET", "/v1/contacts?limit=3&after=\(after)", token: token, contentType: nil)
            #expect((HTTP.object(page2)["contacts"] as? [Any])?.count == 1)
            #expect(HTTP.object(page2)["next_after"] is NSNull)

            #expect(try await server.request("DELETE", "/v1/contacts/\(id)", token: other, contentType: nil).0 == 404)
            #expect(try await server.request("DELETE", "/v1/contacts/\(id)", token: token, contentType: nil).0 == 204)
            #expect(try await server.request("GET", "/v1/contacts/\(id)", token: token, contentType: nil).0 == 404)
            let left = try await server.withDatabase { try await $0.query("SELECT count(*) FROM contact_events").rows.first?.int(0) }
            #expect(left == 3, "the deleted contact's events went with it")
        }
    }

    /// A last page that happens to be full said `next_after: "<id>"`, sending clients for an
    /// empty page; the documented answer is null.
    @Test func theLastPageOfContactsHasANullNextAfterEvenWhenFull() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "premium", scopes: "contacts:write")
            for index in 0..<4 {
                let (status, _, body) = try await server.request(
                    "POST", "/v1/contacts", token: token,
                    body: #"{"first_name":"P\#(index)","last_name":"Q","email":"p\#(index)@example.com","birthday":"2000-01-0\#(index + 1)","time_zone":"UTC"}"#)
                #expect(status == 201, "\(body)")
            }
            let (_, _, first) = try await server.request("GET", "/v1/contacts?limit=2", token: token, contentType: nil)
            #expect((HTTP.object(first)["contacts"] as? [Any])?.count == 2)
            let after = try #require(HTTP.object(first)["next_after"] as? String, "\(first)")
            let (_, _, last) = try await server.request("GET", "/v1/contacts?limit=2&after=\(after)", token: token, contentType: nil)
            #expect((HTTP.object(last)["contacts"] as? [Any])?.count == 2)
            #expect(HTTP.object(last)["next_after"] is NSNull, "\(last)")
            let (_, _, all) = try await server.request("GET", "/v1/contacts?limit=4", token: token, contentType: nil)
            #expect((HTTP.object(all)["contacts"] as? [Any])?.count == 4)
            #expect(HTTP.object(all)["next_after"] is NSNull, "\(all)")
        }
    }

    @Test func badContactsAreRefusedNamingTheFieldAndChangeNothing() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "contacts:write")
            let reader = try await server.token(tier: "free", scopes: "jobs:read")
            #expect(try await server.request("POST", "/v1/contacts", token: reader, body: Self.ada).0 == 403)
            func with(_ key: String, _ value: String) -> String {
                Self.ada.replacingOccurrences(of: #""\#(key)":"#, with: #""\#(key)":\#(value),"old_\#(key)":"#)
                    .replacingOccurrences(of: #","old_\#(key)":"[^"]*""#, with: "", options: .regularExpression)
            }
            let cases: [(String, String)] = [
                (with("time_zone", #""Mars/Olympus""#), "time_zone"),
                (with("time_zone", #""EST""#), "time_zone"),
                (with("birthday", #""2023-02-29""#), "birthday"),
                (with("birthday", #""1990-13-01""#), "birthday"),
                (with("birthday", #""10/12/1815""#), "birthday"),
                (with("birthday", #""2999-01-01""#), "birthday"),
                (with("email", #""not an address""#), "email"),
                (with("first_name", #""  ""#), "first_name"),
                (with("first_name", "7"), "first_name"),
                (#"{"first_name":"Ada","last_name":"L","email":"a@b.co","time_zone":"UTC"}"#, "birthday"),
                (Self.ada.replacingOccurrences(of: "}", with: #","anniversary":"2001-02-30"}"#), "anniversary"),
                (Self.ada.replacingOccurrences(of: "}", with: #","anniversary":"2999-06-01"}"#), "anniversary"),
                (with("birthday", #""0000-01-01""#), "birthday"),
                (Self.ada.replacingOccurrences(of: "}", with: #","nickname":"A"}"#), "nickname"),
            ]
            for (body, field) in cases {
                let (status, _, answer) = try await server.request("POST", "/v1/contacts", token: token, body: body)
                #expect(status == 422, "\(body) → \(answer)")
                #expect((HTTP.object(answer)["error"] as? [String: Any])?["field"] as? String == field, "\(body) → \(answer)")
            }
            let stored = try await server.withDatabase { try await $0.query("SELECT count(*) FROM contacts").rows.first?.int(0) }
            #expect(stored == 0)
        }
    }

    @Test func schedulesAreManagedOverHTTPAndBadOnesNameTheirField() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "enterprise", scopes: "schedules:write")
            let body = #"{"name":"nightly-report","cron":"30 2 * * *","time_zone":"America/New_York","type":"noop","payload":{"report":"sales"}}"#
            let (created, _, createdBody) = try await server.request("POST", "/v1/schedules", token: token, body: body)
            #expect(created == 201, "\(createdBody)")
            let schedule = HTTP.object(createdBody)
            #expect(schedule["tier"] as? String == "enterprise" && schedule["enabled"] as? Bool == true)
            #expect(schedule["catch_up_seconds"] as? Int == 86_400)
            let next = try #require(schedule["next_fires"] as? [String])
            #expect(next.count == 3 && next.allSatisfy { $0.contains("T02:30:00-0") }, "\(next)")
            #expect(try await server.request("POST", "/v1/schedules", token: token, body: body).0 == 409)

            let changed = #"{"cron":"0 9 * * MON-FRI","time_zone":"Europe/London","type":"noop","enabled":false,"catch_up_seconds":0}"#
            let (put, _, putBody) = try await server.request("PUT", "/v1/schedules/nightly-report", token: token, body: changed)
            #expect(put == 200, "\(putBody)")
            #expect(HTTP.object(putBody)["cron"] as? String == "0 9 * * MON-FRI" && HTTP.object(putBody)["enabled"] as? Bool == false)
            let (_, _, list) = try await server.request("GET", "/v1/schedules", token: token, contentType: nil)
            #expect((HTTP.object(list)["schedules"] as? [Any])?.count == 1)
            let (_, _, one) = try await server.request("GET", "/v1/schedules/nightly-report", token: token, contentType: nil)
            #expect(HTTP.object(one)["time_zone"] as? String == "Europe/London")

            let cases: [(String, String, String)] = [
                (#"{"name":"a","cron":"61 * * * *","time_zone":"UTC","type":"noop"}"#, "cron", "minute"),
                (#"{"name":"a","cron":"0 9 * * FUNDAY","time_zone":"UTC","type":"noop"}"#, "cron", "day_of_week"),
                (#"{"name":"a","cron":"0 0 30 2 *","time_zone":"UTC","type":"noop"}"#, "cron", "never"),
                (#"{"name":"a","cron":"0 9 * * *","time_zone":"Moon/Base","type":"noop"}"#, "time_zone", "Moon/Base"),
                (#"{"name":"a","cron":"0 9 * * *","time_zone":"UTC","type":"no.such"}"#, "type", "no.such"),
                (#"{"name":"a b","cron":"0 9 * * *","time_zone":"UTC","type":"noop"}"#, "name", "name"),
                (#"{"name":"a","cron":"0 9 * * *","time_zone":"UTC","type":"noop","catch_up_seconds":-1}"#, "catch_up_seconds", "catch_up"),
            ]
            for (bad, field, words) in cases {
                let (status, _, answer) = try await server.request("POST", "/v1/schedules", token: token, body: bad)
                let error = HTTP.object(answer)["error"] as? [String: Any]
                #expect(status == 422, "\(bad) → \(answer)")
                #expect(error?["field"] as? String == field, "\(bad) → \(answer)")
                #expect((error?["message"] as? String)?.contains(words) == true, "\(bad) → \(answer)")
            }
            #expect(try await server.request("DELETE", "/v1/schedules/nightly-report", token: token, contentType: nil).0 == 204)
            #expect(try await server.request("GET", "/v1/schedules/nightly-report", token: token, contentType: nil).0 == 404)
            let stored = try await server.withDatabase { try await $0.query("SELECT count(*) FROM schedules").rows.first?.int(0) }
            #expect(stored == 0)
        }
    }
}
