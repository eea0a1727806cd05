import Foundation
import Testing
@testable import WarrenJobs
@testable import WarrenSupport

@Suite struct JSONScannerTests {
    @Test(arguments: [
        "{}", "[]", "0", "-0", "1.5e10", "-12.25E-3", "true", "false", "null", #""""#,
        #"  {"a" : [1, 2, {"b": null}], "c": "\u00e9\n\"\\\/"}  "#,
        #""\ud83d\ude00""#, "\"caf\u{e9} 😀\"", "[[[[[]]]]]", "\t\r\n[ ]\n",
    ])
    func acceptsValidJSON(_ text: String) throws {
        try JSONScanner.validate(Array(text.utf8))
        // Foundation agrees that it is JSON.
        _ = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
    }

    @Test(arguments: [
        "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{a:1}", "{'a':1}", "01", "1.", ".5", "-", "1e", "+1", "0x10",
        "tru", "nul", "True", "NaN", "Infinity", "[1 2]", "{\"a\" 1}", "\"abc", "\"a\\x\"", "\"\\u12\"",
        "\"\\ud83d\"", "\"\\ude00\"", "\"tab\there\"", "1 2", "{} {}", "// comment\n{}",
    ])
    func rejectsInvalidJSON(_ text: String) {
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.validate(Array(text.utf8)) }
    }

    @Test(arguments: [[0x22, 0xFF, 0x22], [0x22, 0xC0, 0xAF, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xE2, 0x82, 0x22],
                      [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22]] as [[UInt8]])
    func rejectsInvalidUTF8(_ bytes: [UInt8]) {
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.validate(bytes) }
    }

    @Test func limitsNesting() throws {
        let deep = String(repeating: "[", count: JSONScanner.maxDepth + 1) + String(repeating: "]", count: JSONScanner.maxDepth + 1)
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.validate(Array(deep.utf8)) }
        let fine = String(repeating: "[", count: JSONScanner.maxDepth) + String(repeating: "]", count: JSONScanner.maxDepth)
        try JSONScanner.validate(Array(fine.utf8))
    }

    @Test func splitsObjectMembersKeepingValueBytes() throws {
        let text = #"{ "type" : "noop", "payload": {"b": [1, 2.5], "a": "x"} ,"n":null, "k\"ey": -3 }"#
        let bytes = Array(text.utf8)
        let members = try JSONScanner.objectMembers(bytes)
        #expect(members.map(\.key) == ["type", "payload", "n", "k\"ey"])
        #expect(members.map(\.kind) == [.string, .object, .null, .number])
        #expect(String(decoding: bytes[members[1].value], as: UTF8.self) == #"{"b": [1, 2.5], "a": "x"}"#)
        #expect(try JSONScanner.string(bytes, at: members[0].value) == "noop")
        #expect(String(decoding: bytes[members[3].value], as: UTF8.self) == "-3")
    }

    @Test func objectMembersRejectsNonObjectsAndDuplicates() {
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.objectMembers(Array("[1]".utf8)) }
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.objectMembers(Array(#"{"a":1,"a":2}"#.utf8)) }
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.objectMembers(Array(#"{"a":1} []"#.utf8)) }
    }

    /// A 1 MiB body of ~60,000 keys (on main each key was compared with every earlier one).
    @Test func anObjectOfManyKeysIsSplitAndADuplicateAtTheEndIsFound() throws {
        let keys = (0..<60_000).map { "k\($0)" }
        let body = "{" + keys.map { "\"\($0)\":1" }.joined(separator: ",") + "}"
        #expect(try JSONScanner.objectMembers(Array(body.utf8)).count == keys.count)
        let duplicated = String(body.dropLast()) + #","k0":2}"#
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.objectMembers(Array(duplicated.utf8)) }
    }

    @Test func splitsArrayElements() throws {
        let bytes = Array(#" [ {"type": "noop"}, 1 ,"x",[2], null ] "#.utf8)
        let elements = try JSONScanner.arrayElements(bytes)
        #expect(elements.map(\.kind) == [.object, .number, .string, .array, .null])
        #expect(elements.map { String(decoding: bytes[$0.value], as: UTF8.self) } == [#"{"type": "noop"}"#, "1", #""x""#, "[2]", "null"])
        #expect(try JSONScanner.arrayElements(Array("[]".utf8)).isEmpty)
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.arrayElements(Array("{}".utf8)) }
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.arrayElements(Array("[1,]".utf8)) }
        #expect(throws: JSONScanner.Failure.self) { try JSONScanner.arrayElements(Array("[1] 2".utf8)) }
    }

    /// Whatever Foundation writes, the scanner reads, and the values' bytes re-parse to the same objects.
    @Test func readsWhatFoundationWrites() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let object = Self.randomObject(depth: 0, using: &generator)
            let data = try JSONSerialization.data(withJSONObject: object, options: [])
            let bytes = [UInt8](data)
            let members = try JSONScanner.objectMembers(bytes)
            #expect(Set(members.map(\.key)) == Set(object.keys))
            for member in members {
                let reparsed = try JSONSerialization.jsonObject(with: Data(bytes[member.value]), options: [.fragmentsAllowed])
                let original = try JSONSerialization.data(withJSONObject: [object[member.key]!], options: [.sortedKeys])
                let again = try JSONSerialization.data(withJSONObject: [reparsed], options: [.sortedKeys])
                #expect(original == again)
            }
        }
    }

    private static func randomObject(depth: Int, using generator: inout SystemRandomNumberGenerator) -> [String: Any] {
        var object: [String: Any] = [:]
        for index in 0..<Int.random(in: 0...4, using: &generator) {
            object["k\(index)\(randomString(using: &generator))"] = randomValue(depth: depth + 1, using: &generator)
        }
        return object
    }

    private static func randomValue(depth: Int, using generator: inout SystemRandomNumberGenerator) -> Any {
        switch Int.random(in: 0..<(depth > 3 ? 4 : 6), using: &generator) {
        case 0: return Int.random(in: -1_000_000...1_000_000, using: &generator)
        case 1: return randomString(using: &generator)
        case 2: return Bool.random(using: &generator)
        case 3: return NSNull()
        case 4: return (0..<Int.random(in: 0...3, using: &generator)).map { _ in randomValue(depth: depth + 1, using: &generator) }
        default: return randomObject(depth: depth, using: &generator)
        }
    }

    private static func randomString(using generator: inout SystemRandomNumberGenerator) -> String {
        let alphabet = Array("aZ09 \"\\/\n\t\u{1}é€😀'")
        return String((0..<Int.random(in: 0...6, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! })
    }
}

@Suite struct PayloadFieldsTests {
    @Test func readsNumbersBooleansAndStringsByKind() throws {
        let fields = try #require(PayloadFields(Array(#"{"ms": 1, "zero": 0, "always": true, "f": 1.5, "s": "x\"y", "n": null}"#.utf8)))
        #expect(fields.int("ms") == 1)
        #expect(fields.int("zero") == 0)
        #expect(fields.bool("ms") == nil, "a number is not a boolean")
        #expect(fields.bool("always") == true)
        #expect(fields.int("always") == nil)
        #expect(fields.int("f") == nil, "not a whole number")
        #expect(fields.string("s") == "x\"y")
        #expect(fields.int("n") == nil)
        #expect(fields.int("missing") == nil)
        #expect(PayloadFields(Array("[1]".utf8)) == nil)
    }
}

@Suite struct JSONTextTests {
    @Test(arguments: ["plain", "quote \" and \\ backslash", "line\nbreak\ttab\r", "\u{1}\u{1F}\u{8}\u{C}", "café 😀", ""])
    func quotedTextReadsBackAsTheSameString(_ text: String) throws {
        let quoted = JSONText.quoted(text)
        try JSONScanner.validate(Array(quoted.utf8))
        let parsed = try JSONSerialization.jsonObject(with: Data(quoted.utf8), options: [.fragmentsAllowed]) as? String
        #expect(parsed == text)
    }

    @Test func objectsHaveSortedStringFields() {
        #expect(JSONText.object(["b": "2", "a": "x\"y"]) == #"{"a":"x\"y","b":"2"}"#)
    }
}
