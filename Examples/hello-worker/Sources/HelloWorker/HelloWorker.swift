import Foundation
import Logging
import ServiceLifecycle
import UnixSignals
import Warren

/// The payload of an `email.welcome` job, as producers publish it:
/// `{"email": "ada@example.com", "name": "Ada"}`.
struct WelcomeEmail: Codable, Sendable {
    var email: String
    var name: String
}

/// What the handler records in `job_runs.result`.
struct Greeting: Codable, Sendable {
    var to: String
    var text: String
}

/// A typed handler: Warren decodes the payload; one that does not decode fails permanently,
/// naming the field.
struct SendWelcomeEmail: TypedJobHandler {
    let type = "email.welcome"

    func run(_ payload: WelcomeEmail, context: JobContext) async throws -> JobOutcome {
        guard payload.email.contains("@") else {
            throw PermanentJobFailure("'\(payload.email)' is not an email address")
        }
        // A real handler would call its mail service here, passing context.idempotencyKey so
        // that a retried job does not send twice.
        context.logger.info("welcome sent", metadata: ["to": "\(payload.email)"])
        return .success(Greeting(to: payload.email, text: "Welcome, \(payload.name)!"))
    }
}

/// `hello-worker`: works the tier named by `WARREN_TIER` (free by default) until SIGTERM.
/// `hello-worker enqueue EMAIL NAME`: publishes one `email.welcome` job with `JobClient` and
/// prints its id. Both read `WARREN_AMQP_URL` and `WARREN_DATABASE_URL`.
@main
struct HelloWorker {
    static func main() async throws {
        LoggingSystem.bootstrap(StreamLogHandler.standardError)
        var logger = Logger(label: "hello-worker")
        logger.logLevel = .info
        let arguments = Array(CommandLine.arguments.dropFirst())
        let tier = Tier(rawValue: ProcessInfo.processInfo.environment["WARREN_TIER"] ?? "free") ?? .free

        if arguments.first == "enqueue" {
            guard arguments.count == 3 else {
                FileHandle.standardError.write(Data("usage: hello-worker enqueue EMAIL NAME\n".utf8))
                exit(2)
            }
            let client = try JobClient(configuration: .init(), logger: logger)
            let id = try await client.enqueue("email.welcome", payload: WelcomeEmail(email: arguments[1], name: arguments[2]),
                                              options: .init(tier: tier))
            await client.close()
            print(id)
            return
        }

        let worker = try Worker(configuration: .init(tiers: [tier]), handlers: [SendWelcomeEmail()], logger: logger)
        let group = ServiceGroup(services: [worker], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        try await group.run()
    }
}
