import Foundation
import WarrenConfig
import WarrenJobs

extension CommandHandler {
    package enum Key {
        package static let handlers = "WARREN_EXEC_HANDLERS"
        package static let timeout = "WARREN_EXEC_TIMEOUT_SECONDS"
        package static let killGrace = "WARREN_EXEC_KILL_GRACE_SECONDS"
        package static let maxOutput = "WARREN_EXEC_MAX_OUTPUT_BYTES"
    }

    /// The command handlers `environment` asks for: `WARREN_EXEC_HANDLERS` as
    /// `type=/absolute/path[,type=/absolute/path...]`, with `WARREN_EXEC_TIMEOUT_SECONDS` (300),
    /// `WARREN_EXEC_KILL_GRACE_SECONDS` (5) and `WARREN_EXEC_MAX_OUTPUT_BYTES` (65536) for all of
    /// them. A malformed entry, a type named twice, or a path that is not an executable file is an
    /// error naming the variable, so a worker never starts with a handler that cannot run.
    package static func configured(_ environment: [String: String],
                                   isExecutable: (String) -> Bool = { FileManager.default.isExecutableFile(atPath: $0) })
        throws(SettingsError) -> [CommandHandler] {
        let reader = EnvironmentReader(environment)
        guard let list = reader.string(Key.handlers), !list.isEmpty else { return [] }
        var settings = Settings()
        if let timeout = try reader.seconds(Key.timeout, 0.001...86_400) { settings.timeout = timeout }
        if let grace = try reader.seconds(Key.killGrace, 0...3_600) { settings.killGrace = grace }
        if let bytes = try reader.integer(Key.maxOutput, 0...16_777_216) { settings.maxOutputBytes = bytes }
        var handlers: [CommandHandler] = []
        for (type, path) in try HandlerList.entries(list, key: Key.handlers, expected: "/path/to/program") {
            guard path.hasPrefix("/") else {
                throw SettingsError(key: Key.handlers, message: "'\(type)': the program needs an absolute path (no shell, no PATH lookup), got '\(path)'")
            }
            guard isExecutable(path) else {
                throw SettingsError(key: Key.handlers, message: "'\(type)': \(path) is not an executable file")
            }
            handlers.append(CommandHandler(type: type, executable: path, settings: settings, environment: environment))
        }
        return handlers
    }
}
