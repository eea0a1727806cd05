import Foundation
import HTTPTypes
import Testing
@testable import WarrenAPI

/// The API's `Encodable` answers: JSON given as text (payloads, results) written back as the
/// same value, absent members written `null`, errors with their extra members.
@Suite struct ResponseEncodingTests {
    func encoded(_ value: some Encodable) throws -> String {
        String(decoding: try APIEncoder.encoder.encode(value), as: UTF8.self)
    }

    @Test(arguments: [
        (#"{"attempts": 2}"#, #"{"attempts":2}"#),
        (#"[1, -0.5, 1e3, 12345678901234567890123, true, false, null]"#, #"[1,-0.5,1000,12345678901234567890123,true,false,null]"#),
        (#"{"b": {"a": ["x\"y\\z\n", "é/"]}}"#, #"{"b":{"a":["x\"y\\z\n","é/"]}}"#),
        (#" "text" "#, #""text""#),
        ("9223372036854775807", "9223372036854775807"),
        ("not json", #""not json""#),
        ("", #""""#),
    ])
    func fragmentsKeepTheirValue(text: String, written: String) throws {
        #expect(try encoded(JSONFragment(text)) == written)
    }

    @Test func absentMembersAreNullAndErrorsCarryTheirExtras() throws {
        struct Row: Encodable {
            @Null var missing: String?
            @Null var present: Int?
        }
        #expect(try encoded(Row(missing: nil, present: 3)) == #"{"missing":null,"present":3}"#)
        let error = APIError(.conflict, "key_busy", "busy", field: "concurrency_key", more: KeyHolder(jobID: "j1"))
        #expect(error.json == #"{"error":{"code":"key_busy","field":"concurrency_key","message":"busy"},"job_id":"j1"}"#)
        let batch = APIError(.unprocessableContent, "invalid_batch", "1 bad",
                             more: BatchInvalid(errors: [APIError(.unprocessableContent, "missing_field", "missing", field: "jobs[0].type").item(index: 0)]))
        #expect(batch.json == #"{"error":{"code":"invalid_batch","message":"1 bad"},"errors":[{"code":"missing_field","field":"jobs[0].type","index":0,"message":"missing"}]}"#)
    }
}
