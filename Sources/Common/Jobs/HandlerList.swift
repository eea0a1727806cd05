import Foundation
import WarrenConfig

/// A setting that maps job types to something that runs them (`WARREN_HTTP_HANDLERS`,
/// `WARREN_EXEC_HANDLERS`): `type=target` entries, comma-separated, each type a valid job type
/// named once. What a target must be is the caller's to check.
package enum HandlerList {
    /// The entries of `list` in order; throws naming `key` and `expected` (how a target looks,
    /// e.g. `http://host/path`) for an entry without `=`, a malformed type, or a type named twice.
    package static func entries(_ list: String, key: String, expected: String) throws(SettingsError) -> [(type: String, target: String)] {
        var entries: [(type: String, target: String)] = []
        for entry in list.split(separator: ",", omittingEmptySubsequences: false) {
            let entry = entry.trimmingCharacters(in: .whitespaces)
            guard let equals = entry.firstIndex(of: "=") else {
                throw SettingsError(key: key, message: "expected type=\(expected), got '\(entry)'")
            }
            let type = String(entry[..<equals]), target = String(entry[entry.index(after: equals)...])
            do { try JobEnvelope.validateType(type) } catch {
                throw SettingsError(key: key, message: "'\(type)': \(error.message)")
            }
            guard !entries.contains(where: { $0.type == type }) else {
                throw SettingsError(key: key, message: "job type '\(type)' is named twice")
            }
            entries.append((type, target))
        }
        return entries
    }
}
