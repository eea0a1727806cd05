import Foundation

/// Reads `WARREN_*` variables with one set of rules: blank means unset, and a value that
/// cannot be used is a ``SettingsError`` naming the variable (never silently a default).
package struct EnvironmentReader: Sendable {
    package let environment: [String: String]

    package init(_ environment: [String: String]) { self.environment = environment }

    /// The trimmed value, or nil when unset or blank.
    package func string(_ key: String) -> String? {
        guard let value = environment[key]?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
        return value
    }

    package func integer(_ key: String, _ range: ClosedRange<Int>) throws(SettingsError) -> Int? {
        guard let text = string(key) else { return nil }
        guard let number = Int(text), range.contains(number) else {
            throw SettingsError(key: key, message: "must be an integer in \(range.lowerBound)...\(range.upperBound), got '\(text)'")
        }
        return number
    }

    package func seconds(_ key: String, _ range: ClosedRange<Double>) throws(SettingsError) -> Duration? {
        guard let text = string(key) else { return nil }
        guard let number = Double(text), range.contains(number) else {
            throw SettingsError(key: key, message: "must be a number of seconds in \(range.lowerBound)...\(range.upperBound), got '\(text)'")
        }
        return .milliseconds(Int64(number * 1_000))
    }
}
