import Foundation
import Testing
@testable import WarrenJobs

/// Progress reports as they arrive from outside the worker: a progress URL's JSON body and a
/// command's `warren-progress` lines.
@Suite struct JobProgressTests {
    @Test func aJSONReportReadsItsThreeFields() throws {
        let report = try JobProgress.parse(json: Array(#"{"done": 3, "total": 10, "message": "resizing"}"#.utf8))
        #expect(report == JobProgress(done: 3, total: 10, message: "resizing"))
        #expect(report?.percent == 30.0)
        #expect(try JobProgress.parse(json: Array(#"{"done": 7}"#.utf8)) == JobProgress(done: 7, total: nil, message: nil))
        #expect(try JobProgress.parse(json: Array(#"{"done": 7, "total": null, "message": null}"#.utf8))?.total == nil)
    }

    @Test func anEmptyBodyOrObjectIsAHeartbeat() throws {
        #expect(try JobProgress.parse(json: []) == nil)
        #expect(try JobProgress.parse(json: Array(" \n".utf8)) == nil)
        #expect(try JobProgress.parse(json: Array("{}".utf8)) == nil)
    }

    @Test(arguments: [
        (#"[1]"#, "JSON object"),
        (#"{"total": 3}"#, "'done' is required"),
        (#"{"done": -1}"#, "'done' must be a whole number"),
        (#"{"done": 1.5}"#, "'done' must be a whole number"),
        (#"{"done": "3"}"#, "'done' must be a whole number"),
        (#"{"done": 1, "total": -2}"#, "'total' must be a whole number"),
        (#"{"done": 1, "message": 5}"#, "'message' must be a string"),
        (#"{"done": 1, "percent": 5}"#, "unknown field 'percent'"),
        (#"{"done": 1"#, "JSON object"),
    ])
    func aBadReportIsRefusedSayingWhy(body: String, reason: String) {
        #expect {
            try JobProgress.parse(json: Array(body.utf8))
        } throws: { error in
            "\(error)".contains(reason)
        }
    }

    @Test func percentIsCappedRoundedAndAbsentWithoutATotal() {
        #expect(JobProgress(done: 1, total: 3, message: nil).percent == 33.3)
        #expect(JobProgress(done: 2, total: 3, message: nil).percent == 66.7)
        #expect(JobProgress(done: 12, total: 10, message: nil).percent == 100)
        #expect(JobProgress(done: 5, total: 0, message: nil).percent == nil)
        #expect(JobProgress(done: 5, total: nil, message: nil).percent == nil)
    }

    @Test func countsAreNeverNegativeAndMessagesAreCut() {
        let progress = JobProgress(done: -4, total: -1, message: String(repeating: "é", count: 800))
        #expect(progress.done == 0)
        #expect(progress.total == 0)
        #expect(progress.message?.count == JobProgress.maxMessageLength)
        #expect(JobProgress(done: 1, total: nil, message: "").message == nil)
    }

    @Test func stderrLinesReport() {
        #expect(JobProgress.parse(line: "warren-progress 3/10 resizing the image") ==
            .progress(JobProgress(done: 3, total: 10, message: "resizing the image")))
        #expect(JobProgress.parse(line: "warren-progress 42") == .progress(JobProgress(done: 42, total: nil, message: nil)))
        #expect(JobProgress.parse(line: "  warren-progress   5/5  ") == .progress(JobProgress(done: 5, total: 5, message: nil)))
        #expect(JobProgress.parse(line: "warren-heartbeat") == .heartbeat)
    }

    @Test(arguments: ["warren-progress", "warren-progress x/10", "warren-progress 3/y", "warren-progress -1/3",
                      "warren-progressive 3/10", "progress 3/10", "error: warren-progress 3/10", "warren-heartbeat now"])
    func otherLinesAreOutput(line: String) {
        #expect(JobProgress.parse(line: Substring(line)) == nil)
    }
}
