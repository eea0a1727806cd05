import Foundation
import Testing
import WarrenAMQP
import WarrenJobs

/// `DELETE /v1/jobs/{id}` against a real consumer: a queued job never runs, a running one has
/// its handler cancelled, a finished one is a conflict.
@Suite(.enabled(if: TestServices.enabled))
struct HTTPCancellationTests {
    @Test func aQueuedJobIsNeverRun() async throws {
        try await APIServer.with { server, connection, _ in
            let token = try await server.token(tier: "premium", scopes: "jobs:write,jobs:read")
            let id = try await server.submit(token, #"{"type":"sleep","payload":{"ms":1}}"#)
            let kept = try await server.submit(token, #"{"type":"noop"}"#)

            let (status, _, body) = try await server.request("DELETE", "/v1/jobs/\(id)", token: token, contentType: nil)
            #expect(status == 200, "\(body)")
            #expect(HTTP.field("status", in: body) == "cancelled")
            #expect(HTTP.field("cancellation", in: body) == "not_running")
            #expect(try await server.job(token, id)["status"] as? String == "cancelled", "reported at once")
            // Asking again is harmless: the same answer.
            let repeated = try await server.request("DELETE", "/v1/jobs/\(id)", token: token, contentType: nil)
            #expect(repeated.0 == 200, "\(repeated.2)")
            #expect(HTTP.field("cancellation", in: repeated.2) == "not_running")

            // A consumer started afterwards loads the request and skips the job.
            let consumer = try RunningProduct("consumer", ["--tier", "premium"], environment: server.environment)
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(20), "the consumer recorded both jobs") {
                let cancelled = try await server.job(token, id)
                let done = try await server.job(token, kept)
                return (cancelled["error"] as? String) == "cancelled before it started" && done["status"] as? String == "succeeded"
            }
            let cancelled = try await server.job(token, id)
            #expect(cancelled["status"] as? String == "cancelled")
            #expect(cancelled["result"] is NSNull, "the handler never ran")
            let depth = try await connection.withControl { control in try control.readyCount(Tier.premium) }
            #expect(depth == 0)
            let again = try await server.request("DELETE", "/v1/jobs/\(id)", token: token, contentType: nil)
            #expect(again.0 == 200, "a cancelled job stays cancelled: \(again.2)")
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }

    @Test func aRunningJobsHandlerIsCancelled() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "free", scopes: "jobs:write,jobs:read")
            let consumer = try RunningProduct("consumer", ["--tier", "free"], environment: server.environment)
            defer { consumer.signal(SIGKILL) }
            let id = try await server.submit(token, #"{"type":"sleep","payload":{"ms":600000}}"#)
            try await TestServices.waitUntil(timeout: .seconds(20), "the job is running") {
                try await server.job(token, id)["status"] as? String == "running"
            }
            let (status, _, body) = try await server.request("DELETE", "/v1/jobs/\(id)", token: token, contentType: nil)
            #expect(status == 202, "\(body)")
            #expect(HTTP.field("cancellation", in: body) == "signalled_running")
            try await TestServices.waitUntil(timeout: .seconds(10), "the handler stopped and the job is cancelled") {
                try await server.job(token, id)["status"] as? String == "cancelled"
            }
            let cancelled = try await server.job(token, id)
            #expect(cancelled["error"] as? String == "cancelled while running")
            // The consumer is free again: the next job runs.
            let next = try await server.submit(token, #"{"type":"noop"}"#)
            try await TestServices.waitUntil(timeout: .seconds(10), "the next job ran") {
                try await server.job(token, next)["status"] as? String == "succeeded"
            }
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }

    @Test func finishedOthersAndUnknownJobsCannotBeCancelled() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "enterprise", scopes: "jobs:write,jobs:read")
            let readOnly = try await server.token(tier: "enterprise", scopes: "jobs:read")
            let globex = try await server.token(tier: "enterprise", scopes: "jobs:write", tenant: "globex")
            let id = try await server.submit(token, #"{"type":"noop"}"#)
            #expect(try await server.request("DELETE", "/v1/jobs/\(id)", token: globex, contentType: nil).0 == 404, "another tenant's")
            #expect(try await server.request("DELETE", "/v1/jobs/\(id)", token: readOnly, contentType: nil).0 == 403)
            #expect(try await server.request("DELETE", "/v1/jobs/\(UUID().uuidString)", token: token, contentType: nil).0 == 404)
            #expect(try await server.request("DELETE", "/v1/jobs/\(id)", contentType: nil).0 == 401)

            let consumer = try RunningProduct("consumer", ["--tier", "enterprise"], environment: server.environment)
            defer { consumer.signal(SIGKILL) }
            try await TestServices.waitUntil(timeout: .seconds(20), "the job succeeded") {
                try await server.job(token, id)["status"] as? String == "succeeded"
            }
            let (status, _, body) = try await server.request("DELETE", "/v1/jobs/\(id)", token: token, contentType: nil)
            #expect(status == 409, "\(body)")
            #expect(body.contains(#""code":"job_finished""#), "\(body)")
            #expect(try await server.job(token, id)["status"] as? String == "succeeded", "unchanged")
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait() == 0)
        }
    }
}
