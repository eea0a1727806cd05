import Foundation

/// Shell programs for command-handler tests: each `name → body` written as an executable
/// `#!/bin/sh` script in a fresh temporary folder, which doubles as the test's scratch space
/// (marker files the scripts look for, files they append their runs to).
struct TestScripts {
    let folder: String

    init(_ scripts: [String: String], prefix: String = "warren-scripts") throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (name, body) in scripts {
            let path = self.path(name)
            try Data("#!/bin/sh\n\(body)\n".utf8).write(to: URL(fileURLWithPath: path))
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
        }
    }

    /// A file's path in the folder (a script, or a file one writes).
    func path(_ name: String) -> String { folder + "/" + name }

    /// The lines in the folder's file `name` (0 when it does not exist): runs counted by a script.
    func lines(_ name: String) -> Int {
        ((try? String(contentsOfFile: path(name), encoding: .utf8)) ?? "").split(separator: "\n").count
    }

    /// Leaves an empty file `name` in the folder (a marker a script waits for or checks).
    func touch(_ name: String) -> Bool { FileManager.default.createFile(atPath: path(name), contents: nil) }
}
