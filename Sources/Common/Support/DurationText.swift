/// A duration as people type it on a command line: `500ms`, `2s`, `1.5s`, `5m`, `2h`, or a
/// bare number of seconds. Nil for anything else, zero or negative.
package func parseDuration(_ text: String) -> Duration? {
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3_600)]
    for (suffix, scale) in units where text.hasSuffix(suffix) {
        guard let value = Double(text.dropLast(suffix.count)), value > 0, value.isFinite else { return nil }
        return .milliseconds(Int64(value * scale * 1_000))
    }
    guard let seconds = Double(text), seconds > 0, seconds.isFinite else { return nil }
    return .milliseconds(Int64(seconds * 1_000))
}
