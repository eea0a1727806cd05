/// Makes outside text fit what Postgres stores: `text` cannot hold a NUL character, and
/// `jsonb` refuses the escape `\u0000`. Both arrive from outside Warren (a downstream
/// service's answer in an error, a handler's result, a header a script set), so the store
/// replaces them with U+FFFD and records that it did, instead of letting one such value
/// fail a whole batch of results.
package enum StorableText {
    /// `text` with every NUL replaced by U+FFFD, and whether anything was replaced.
    package static func text(_ text: String) -> (text: String, changed: Bool) {
        guard text.utf8.contains(0) else { return (text, false) }
        var scalars = String.UnicodeScalarView()
        for scalar in text.unicodeScalars { scalars.append(scalar == "\u{0}" ? "\u{FFFD}" : scalar) }
        return (String(scalars), true)
    }

    /// Valid JSON `bytes` with every `\u0000` escape inside a string replaced by `\ufffd`, or
    /// nil when there is none. Escapes are read in pairs, so `\\u0000` (an escaped backslash
    /// and the letters u0000) is left alone. (Raw control bytes cannot occur in valid JSON.)
    package static func json(_ bytes: [UInt8]) -> [UInt8]? {
        var output: [UInt8]?
        var index = 0
        var inString = false
        let zero = Array(#"u0000"#.utf8)
        while index < bytes.count {
            let byte = bytes[index]
            if !inString {
                if byte == UInt8(ascii: "\"") { inString = true }
                index += 1
                continue
            }
            if byte == UInt8(ascii: "\"") {
                inString = false
            } else if byte == UInt8(ascii: "\\"), index + 1 < bytes.count {
                if index + 5 < bytes.count, bytes[(index + 1)...(index + 5)].elementsEqual(zero) {
                    if output == nil { output = bytes }
                    output?.replaceSubrange((index + 2)...(index + 5), with: Array("fffd".utf8))
                    index += 6
                    continue
                }
                index += 2
                continue
            }
            index += 1
        }
        return output
    }
}
