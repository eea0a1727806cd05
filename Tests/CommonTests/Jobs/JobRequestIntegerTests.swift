import Testing
@testable import WarrenJobs

/// Whole numbers as JSON writes them: `192`, and `192.0` or `1.92e2`, which JSON Schema's
/// `integer` (docs/openapi.yaml) also counts as integers; anything else is not one.
@Suite struct JobRequestIntegerTests {
    @Test(arguments: [("192", 192), ("-3", -3), ("192.0", 192), ("1.92e2", 192), ("0.0", 0)])
    func wholeNumbersAreIntegers(text: String, value: Int) {
        #expect(JobRequest.integer(Array(text.utf8)) == value)
    }

    @Test(arguments: ["192.5", "1e300", "", "abc", "1.0.0", "0x10", "nan", "inf"])
    func otherTextIsNot(text: String) {
        #expect(JobRequest.integer(Array(text.utf8)) == nil)
    }
}

/// A concurrency key's length counts characters (Unicode scalars), as the spec's `maxLength`
/// does, not bytes: 255 `é` (510 bytes) are a key, 256 are not.
@Suite struct ConcurrencyKeyLengthTests {
    @Test func keysAreMeasuredInCharacters() throws {
        try JobEnvelope.validateConcurrencyKey(String(repeating: "é", count: 255))
        #expect(throws: JobError.self) { try JobEnvelope.validateConcurrencyKey(String(repeating: "é", count: 256)) }
        #expect(throws: JobError.self) { try JobEnvelope.validateConcurrencyKey("") }
        #expect(throws: JobError.self) { try JobEnvelope.validateConcurrencyKey("tab\there") }
    }
}
