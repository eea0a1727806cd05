import Foundation
import WarrenSupport

/// How far a running job got, as its handler last said: `done` of `total` (unknown total:
/// nil), with an optional message. Every report is also a heartbeat.
package struct JobProgress: Sendable, Equatable {
    package var done: Int64
    package var total: Int64?
    package var message: String?

    /// Longest message kept (in characters); a longer one is cut.
    package static let maxMessageLength = 500

    /// Negative counts read as 0; a message is cut to ``maxMessageLength``; an empty one is none.
    package init(done: Int64, total: Int64?, message: String?) {
        self.done = max(0, done)
        self.total = total.map { max(0, $0) }
        let trimmed = message.map { String($0.prefix(Self.maxMessageLength)) }
        self.message = trimmed?.isEmpty == true ? nil : trimmed
    }

    /// `done` as a share of `total`, in percent with one decimal (at most 100); nil when the
    /// total is unknown or 0.
    package var percent: Double? {
        guard let total, total > 0 else { return nil }
        return (min(100, Double(done) * 100 / Double(total)) * 10).rounded() / 10
    }

    /// Why a report was refused, in words for the caller.
    package struct Invalid: Error, CustomStringConvertible, Equatable {
        package var description: String
    }

    /// A report posted to a progress URL: an empty body (or `{}`) is a heartbeat (nil), else
    /// `{"done": 3, "total": 10, "message": "resizing"}` (`total` and `message` optional,
    /// counts whole numbers from 0).
    package static func parse(json body: [UInt8]) throws(Invalid) -> JobProgress? {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return nil }
        guard let members = try? JSONScanner.objectMembers(body) else {
            throw Invalid(description: #"the body must be a JSON object like {"done": 3, "total": 10, "message": "resizing"}, or empty for a heartbeat"#)
        }
        if members.isEmpty { return nil }
        func count(_ key: String) throws(Invalid) -> Int64? {
            guard let member = members.first(where: { $0.key == key }), member.kind != .null else { return nil }
            guard member.kind == .number, let value = Int64(String(decoding: body[member.value], as: UTF8.self)), value >= 0 else {
                throw Invalid(description: "'\(key)' must be a whole number from 0")
            }
            return value
        }
        for member in members where !["done", "total", "message"].contains(member.key) {
            throw Invalid(description: "unknown field '\(member.key)' (expected done, total, message)")
        }
        guard let done = try count("done") else { throw Invalid(description: "'done' is required (a whole number from 0)") }
        let total = try count("total")
        var message: String?
        if let member = members.first(where: { $0.key == "message" }), member.kind != .null {
            guard member.kind == .string, let text = try? JSONScanner.string(body, at: member.value) else {
                throw Invalid(description: "'message' must be a string")
            }
            message = text
        }
        return JobProgress(done: done, total: total, message: message)
    }

    /// What a command handler writes on standard error to report: a line
    /// `warren-progress <done>[/<total>] [message]`, or `warren-heartbeat`.
    package enum Line: Equatable {
        case progress(JobProgress)
        case heartbeat
    }

    package static let progressPrefix = "warren-progress"
    package static let heartbeatLine = "warren-heartbeat"

    /// The report a line of standard error makes, or nil for any other line (kept as output).
    /// A line with the prefix but unreadable counts is not a report either.
    package static func parse(line: Substring) -> Line? {
        let line = line.trimmingCharacters(in: .whitespaces)
        if line == heartbeatLine { return .heartbeat }
        guard line.hasPrefix(progressPrefix + " ") else { return nil }
        let rest = line.dropFirst(progressPrefix.count + 1).drop { $0 == " " }
        let counts = rest.prefix { $0 != " " }
        let message = rest.dropFirst(counts.count).drop { $0 == " " }
        let parts = counts.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let done = Int64(parts[0]), done >= 0 else { return nil }
        var total: Int64?
        if parts.count == 2 {
            guard let value = Int64(parts[1]), value >= 0 else { return nil }
            total = value
        }
        return .progress(JobProgress(done: done, total: total, message: message.isEmpty ? nil : String(message)))
    }
}

/// Where a running job's reports go: the worker's progress tracker. Calls never block and
/// never fail; the tracker keeps the latest per job and writes them in batches.
package protocol JobProgressSink: Sendable {
    /// A report (`nil`: a heartbeat alone) for the run of `job` started as `attempt`.
    func report(job: UUID, attempt: Int, _ progress: JobProgress?)
    /// A URL the job's code outside this process (an HTTP or command handler) may POST reports
    /// to, valid while this run goes on; nil when the worker serves none.
    func progressURL(job: UUID) -> String?
}
