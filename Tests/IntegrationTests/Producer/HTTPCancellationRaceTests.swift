import Foundation
import Logging
import Testing
import WarrenSupport

/// `DELETE /v1/jobs/{id}` racing a consumer that is starting the same job: an answer of
/// `not_running` must mean the job never runs anywhere. On main the answer was decided from a
/// `running` mark that rides with a later result batch, so some `not_running` jobs ran.
@Suite(.enabled(if: TestServices.enabled))
struct HTTPCancellationRaceTests {
    @Test func aJobAnsweredNotRunningNeverReachesItsHandler() async throws {
        try await APIServer.with(extra: ["WARREN_RATE_LIMIT_PREMIUM": "100000,100000"]) { server, _, _ in
            try await StandIn.with(["--delay-ms", "20"]) { standIn in
                let token = try await server.token(tier: "premium", scopes: "jobs:write,jobs:read")
                // Two at a time behind a 20 ms service: a backlog forms, so cancellations land before,
                // during and after starts.
                let consumer = try RunningProduct("consumer", ["--tier", "premium", "--admin-port", "0", "--concurrency", "2"],
                                                  environment: server.environment.merging(["WARREN_NOTIFY_URL": standIn.url]) { $1 })
                defer { consumer.signal(SIGKILL) }
                _ = try await consumer.listeningPort("admin_port")

                // 400 jobs, each cancelled 0-40 ms after its 202, 8 at a time.
                let answers = try await withThrowingTaskGroup(of: (id: String, key: String, answer: String).self) { group in
                    var answers: [(id: String, key: String, answer: String)] = []
                    for index in 0..<400 {
                        if index >= 8, let done = try await group.next() { answers.append(done) }
                        group.addTask {
                            let key = "race-\(index)-\(UUID().uuidString.prefix(8))"
                            let body = #"{"type":"message.send","idempotency_key":"\#(key)","payload":{"to":"a@example.com","subject":"s","body":"b"}}"#
                            let (status, _, text) = try await server.request("POST", "/v1/jobs", token: token, body: body)
                            guard status == 202, let id = HTTP.field("id", in: text) else {
                                Issue.record("POST answered \(status): \(text)")
                                return ("", key, "error")
                            }
                            try await Task.sleep(for: .milliseconds(index % 41))
                            let (cancelStatus, _, answer) = try await server.request("DELETE", "/v1/jobs/\(id)", token: token,
                                                                                     contentType: nil)
                            if cancelStatus == 409 { return (id, key, "finished") }
                            return (id, key, HTTP.field("cancellation", in: answer) ?? "status \(cancelStatus): \(answer)")
                        }
                    }
                    for try await done in group { answers.append(done) }
                    return answers
                }
                let notRunning = answers.filter { $0.answer == "not_running" }
                #expect(!notRunning.isEmpty, "the race needs some jobs cancelled before they started")
                #expect(answers.allSatisfy { ["not_running", "signalled_running", "finished"].contains($0.answer) },
                        "\(answers.filter { !["not_running", "signalled_running", "finished"].contains($0.answer) }.prefix(3))")

                // Every job reaches a terminal row; then count what reached the service.
                try await TestServices.waitUntil(timeout: .seconds(60), "every job is terminal") {
                    var terminal = 0
                    for answer in answers {
                        let status = HTTP.object(try await server.request("GET", "/v1/jobs/\(answer.id)", token: token, contentType: nil).2)["status"]
                        if let status = status as? String, ["succeeded", "cancelled", "failed", "dead"].contains(status) { terminal += 1 }
                    }
                    return terminal == answers.count
                }
                let received = try await standIn.received()
                let reached = notRunning.filter { !received.requests(key: $0.key).isEmpty }
                #expect(reached.count == 0, "\(reached.count) of \(notRunning.count) jobs answered not_running reached the service")
                TestServices.logger.info("cancellation race", metadata: [
                    "not_running": "\(notRunning.count)", "signalled": "\(answers.filter { $0.answer == "signalled_running" }.count)",
                    "finished": "\(answers.filter { $0.answer == "finished" }.count)",
                ])
                consumer.signal(SIGTERM)
                #expect(try await consumer.wait(timeout: .seconds(30)) == 0)
            }
        }
    }
}
