import Foundation
import Testing
@testable import WarrenJobs

/// `Examples/hello-worker`, a package of its own depending on the `Warren` library by path, as a
/// user would run it: jobs published with `producer publish` (and with the example's own
/// `JobClient`) are run by its typed handler and recorded in `job_runs`. `./infra/local/test`
/// builds the example before the suite.
@Suite(.enabled(if: TestServices.enabled))
struct ExampleWorkerTests {
    static let executable = Products.repositoryRoot.appendingPathComponent("Examples/hello-worker/.build/debug/hello-worker")

    /// The example's binary; missing is a failure under CI, a loud skip elsewhere.
    func example() throws -> URL? {
        if FileManager.default.isExecutableFile(atPath: Self.executable.path) { return Self.executable }
        let message = "Examples/hello-worker is not built: run `swift build --package-path Examples/hello-worker` (./infra/local/test does)"
        if TestServices.required {
            Issue.record(Comment(rawValue: message))
        } else {
            FileHandle.standardError.write(Data("\n**** SKIPPING ExampleWorkerTests: \(message) ****\n".utf8))
        }
        return nil
    }

    @Test func theExamplesTypedHandlerRunsJobsPublishedWithTheCLIAndItsOwnClient() async throws {
        guard let executable = try example() else { return }
        try await ConsumerIntegrationTests().withWorld { world in
            let jobs = [
                (#"{"email": "ada@example.com", "name": "Ada"}"#, "succeeded"),
                (#"{"email": "grace@example.com", "name": "Grace"}"#, "succeeded"),
                (#"{"email": "not-an-address", "name": "Nobody"}"#, "failed"),
                (#"{"name": "No Email"}"#, "failed"),
            ]
            var ids: [String] = []
            for (payload, _) in jobs {
                let published = try await Products.run("producer", ["publish", "--type", "email.welcome", "--tier", "premium",
                                                                    "--payload", payload, "--amqp-url", world.amqpURL])
                #expect(published.status == 0, "\(published.stderr)")
                ids.append(published.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            let environment = world.environment.merging(["WARREN_TIER": "premium"]) { $1 }
            let enqueued = try await Products.run(executable: executable, ["enqueue", "lin@example.com", "Lin"], environment: environment)
            #expect(enqueued.status == 0, "\(enqueued.stderr)")
            let clientID = enqueued.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

            let worker = try RunningProduct(executable: executable, [], environment: environment)
            defer { worker.signal(SIGKILL) }
            do {
                try await TestServices.waitUntil(timeout: .seconds(60), "the example recorded every job") {
                    try await world.count("SELECT count(*) FROM job_runs WHERE status IN ('succeeded', 'failed')") == 5
                }
            } catch {
                Issue.record("the example's stderr:\n\(worker.stderr.suffix(3_000))")
                throw error
            }
            worker.signal(SIGTERM)
            #expect(try await worker.wait() == 0, "a graceful stop. stderr:\n\(worker.stderr.suffix(2_000))")

            for (id, (_, status)) in zip(ids, jobs) {
                #expect(try await world.count("SELECT count(*) FROM job_runs WHERE job_id = '\(id)'::uuid AND status = '\(status)'") == 1,
                        "job \(id) \(status)")
            }
            #expect(try await world.count("""
                SELECT count(*) FROM job_runs WHERE job_id = '\(ids[0])'::uuid AND type = 'email.welcome' AND tier = 'premium'
                  AND result->>'text' = 'Welcome, Ada!' AND result->>'to' = 'ada@example.com'
                """) == 1, "the handler's typed result")
            #expect(try await world.count("""
                SELECT count(*) FROM job_runs WHERE job_id = '\(ids[3])'::uuid
                  AND error = 'payload does not decode as WelcomeEmail: field ''email'': missing'
                """) == 1, "a payload that does not decode names its field")
            #expect(try await world.count("""
                SELECT count(*) FROM job_runs WHERE job_id = '\(clientID)'::uuid AND status = 'succeeded' AND result->>'text' = 'Welcome, Lin!'
                """) == 1, "the example's own JobClient published it")
            for queue in Tier.premium.queueNames { #expect(try await world.depth(queue) == 0, "all acked") }
        }
    }
}
