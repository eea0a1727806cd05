import Foundation
import Testing
import WarrenAMQP
import WarrenJobs
import WarrenNotify
import WarrenPostgres
import WarrenWorker

/// The broker failing under a running fleet, for real: a node of the test's own SIGKILLed and
/// booted again, its memory alarm raised, and a connection silently cut by a relay. Every
/// outcome is counted in `job_runs` and on the queues.
@Suite(.enabled(if: TestServices.enabled), .serialized)
struct BrokerFaultTests {
    /// A relay that stops forwarding (no FIN, no RST) is noticed by the heartbeat: within two
    /// heartbeat intervals librabbitmq reports the timeout, the consumer reconnects through the
    /// relay, re-subscribes, and every job ends with one row.
    @Test func aSilentlyCutConnectionIsDetectedByHeartbeatsAndReconnected() async throws {
        try await TestServices.withVhost { url in
            try await FaultWorld.with(amqpURL: url) { world in
                let upstream = try AMQPEndpoint(url: url)
                let proxy = try TCPProxy(upstreamPort: upstream.port)
                defer { proxy.cut() }
                let vhost = String(url[url.index(after: url.lastIndex(of: "/")!)...])
                var amqp = try TestServices.amqpConfiguration("fault silent consumer", url: "amqp://guest:guest@127.0.0.1:\(proxy.port)/\(vhost)")
                let heartbeat = Duration.seconds(2)
                amqp.heartbeat = heartbeat
                var configuration = ConsumerConfiguration(tier: .free)
                configuration.prefetch = 20
                configuration.concurrency = 4
                configuration.shutdownGrace = .seconds(5)
                let consumer = JobConsumer(configuration: configuration, amqp: amqp, database: world.pool.configuration,
                                           handlers: .builtIn, logger: TestServices.logger)
                let running = Task { try await consumer.run() }
                defer { consumer.stop() }
                let jobs = (0..<400).map { JobEnvelope(type: "sleep", tier: .free, payload: Array(#"{"ms": 2}"#.utf8), idempotencyKey: "silent-\($0)") }
                try await TestServices.withConnection("fault silent publisher", url: url) { publisher in
                    for result in await publisher.publish(jobs[..<200].map(\.outgoingMessage)) { try result.get() }
                    try await TestServices.waitUntil(timeout: .seconds(60), "the consumer is working") {
                        try await world.count("SELECT count(*) FROM job_runs") >= 50
                    }
                    #expect(proxy.admitted == 1)
                    let stalledAt = ContinuousClock.now
                    proxy.stall()
                    for result in await publisher.publish(jobs[200...].map(\.outgoingMessage)) { try result.get() }
                    try await TestServices.waitUntil(timeout: .seconds(60), "the consumer noticed the silence and reconnected") {
                        proxy.admitted >= 2
                    }
                    let detected = ContinuousClock.now - stalledAt
                    // librabbitmq gives up after two heartbeats without a frame; the rest is the
                    // poll interval and the first reconnect backoff (tens of milliseconds).
                    #expect(detected < heartbeat * 2 + .seconds(3), "reconnected \(detected) after the cut (heartbeat \(heartbeat))")
                    try await TestServices.waitUntil(timeout: .seconds(90), "every job has its row after the reconnect") {
                        try await world.count("SELECT count(*) FROM job_runs WHERE status = 'succeeded'") == 400
                    }
                    let rows = try await world.rowsByKey(prefix: "silent-")
                    #expect(rows.keys == 400 && rows.duplicates == 0, "\(rows)")
                    // The broker requeues what the cut connection held once it notices too; all of it
                    // is acked (redeliveries of finished jobs without running them again).
                    try await TestServices.waitUntil(timeout: .seconds(30), "nothing left on the queue") {
                        try await publisher.withControl { try $0.readyCount(Tier.free) } == 0
                    }
                }
                consumer.stop()
                _ = try await running.value
            }
        }
    }

    /// A publisher whose link goes silent while it writes more than the socket buffers hold
    /// (large jobs, 1 MiB is the API's body limit): its writes must not block the connection
    /// thread for good. The heartbeat still ends the connection, every unconfirmed publish
    /// fails as `connectionLost`, and it reconnects and publishes again.
    @Test func aPublisherStalledMidWriteStillNoticesTheSilenceAndRecovers() async throws {
        try await TestServices.withVhost { url in
            let upstream = try AMQPEndpoint(url: url)
            let proxy = try TCPProxy(upstreamPort: upstream.port)
            let vhost = String(url[url.index(after: url.lastIndex(of: "/")!)...])
            var amqp = try TestServices.amqpConfiguration("fault stalled publisher", url: "amqp://guest:guest@127.0.0.1:\(proxy.port)/\(vhost)")
            amqp.heartbeat = .seconds(2)
            let connection = AMQPConnection(configuration: amqp, logger: TestServices.logger) { try Topology.standard.declare(on: $0) }
            try await connection.connect()
            let small = JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8))
            try await connection.publish(small.outgoingMessage)
            proxy.stall()
            // Each fits the socket buffers on its own (the first publish with none outstanding
            // always goes), together they are far more.
            let payload = Array(("\"" + String(repeating: "a", count: 256 * 1024) + "\"").utf8)
            let big = (0..<100).map { _ in JobEnvelope(type: "noop", tier: .free, payload: payload).outgoingMessage }  // ~25 MB
            let settled = Task { await connection.publish(big) }
            let done = Task {
                try await TestServices.holds(within: .seconds(60)) { proxy.admitted >= 2 && connection.isConnected }
            }
            let reconnected = try await done.value
            // Unblocks a thread stuck in a write (the test must end either way).
            if !reconnected { proxy.cut() }
            let results = await settled.value
            #expect(reconnected, "the connection noticed the silent link and reconnected")
            #expect(results.allSatisfy { if case .failure(let error) = $0 { error.code == .connectionLost } else { false } },
                    "every publish on the silent link failed as connectionLost")
            if reconnected {
                try await connection.publish(JobEnvelope(type: "noop", tier: .free, payload: Array("{}".utf8)).outgoingMessage)
            }
            proxy.cut()
            await connection.close()
        }
    }

    /// The broker SIGKILLed mid-run and booted again: `producer publish --jsonl` reports each
    /// job it could not get confirmed (exit 1, the lines in `--failed`); the consumer and
    /// `producer serve` carry on without a restart; every confirmed job has exactly one row.
    @Test func theBrokerKilledMidRunLosesNoConfirmedJobAndTheFleetRecovers() async throws {
        try await OwnRabbitMQ.withNode { broker in
            try await FaultWorld.with(amqpURL: broker.url + "?heartbeat=5") { world in
                let total = 3_000
                let jobsFile = try FaultWorld.jobsFile(count: total, prefix: "kill-")
                let failedFile = jobsFile.appendingPathExtension("failed")
                defer {
                    try? FileManager.default.removeItem(at: jobsFile)
                    try? FileManager.default.removeItem(at: failedFile)
                }
                let consumer = try RunningProduct("consumer", ["--tier", "premium", "--admin-port", "0"], environment: world.environment())
                defer { consumer.signal(SIGKILL) }
                let server = try RunningProduct("producer", ["serve"], environment: world.environment())
                defer { server.signal(SIGKILL) }
                let api = APIServer(base: "http://127.0.0.1:\(try await server.listeningPort("http_port", timeout: .seconds(90)))",
                                    environment: world.environment(), vhost: "/")
                let token = try await api.token(tier: "premium", scopes: "jobs:write")
                #expect(try await api.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop","idempotency_key":"api-before"}"#).0 == 202)

                let publish = try RunningProduct("producer", ["publish", "--jsonl", jobsFile.path, "--rate", "600",
                                                              "--failed", failedFile.path], environment: world.environment())
                defer { publish.signal(SIGKILL) }
                try await TestServices.waitUntil(timeout: .seconds(60), "the consumer is storing jobs") {
                    try await world.count("SELECT count(*) FROM job_runs") >= 300
                }
                try await broker.kill()
                let status = try await publish.wait(timeout: .seconds(60))
                let report = try #require(FaultWorld.publishReport(publish.stderr), "no summary: \(publish.stderr.suffix(2_000))")
                #expect(status == 1, "unconfirmed jobs make the exit status 1: \(publish.stderr.suffix(1_000))")
                #expect(report.rejected > 0 && report.confirmed + report.rejected == total, "\(report)")
                let failedLines = try String(contentsOf: failedFile, encoding: .utf8).split(separator: "\n")
                #expect(failedLines.count == report.rejected, "--failed holds every unconfirmed line")
                let unconfirmed = Set(failedLines.compactMap { HTTP.field("idempotency_key", in: String($0)) })
                let confirmed = (0..<total).map { "kill-\($0)" }.filter { !unconfirmed.contains($0) }
                #expect(confirmed.count == report.confirmed)

                // While the broker is down the API refuses, and says when to retry.
                let (down, headers, body) = try await api.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop","idempotency_key":"api-down"}"#)
                #expect(down == 503 && headers["retry-after"] != nil, "\(down) \(body)")

                try await broker.start()
                try await TestServices.waitUntil(timeout: .seconds(120), "every confirmed job has its row after the restart") {
                    try await world.missing(confirmed).isEmpty
                }
                try await TestServices.waitUntil(timeout: .seconds(60), "producer serve publishes again") {
                    try await api.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop","idempotency_key":"api-after"}"#).0 == 202
                }
                try await TestServices.waitUntil(timeout: .seconds(60), "the job accepted after the restart runs") {
                    try await world.missing(["api-after", "api-before"]).isEmpty
                }
                let rows = try await world.rowsByKey(prefix: "kill-")
                #expect(rows.duplicates == 0, "no job has two rows")
                // An unconfirmed job may still have been routed (the confirm was what got lost): it
                // is reported, and may have run; never more than the jobs the CLI reported.
                #expect(rows.keys >= confirmed.count && rows.keys <= total, "\(rows)")
                #expect(try await world.missing(["api-down"]) == ["api-down"], "a refused request left no job")
                #expect(consumer.isRunning && server.isRunning, "neither was restarted")
                try await TestServices.waitUntil(timeout: .seconds(30), "the queue is drained") {
                    try await broker.messages(Tier.premium) == 0
                }
                consumer.signal(SIGTERM)
                server.signal(SIGTERM)
                #expect(try await consumer.wait(timeout: .seconds(30)) == 0)
                #expect(try await server.wait(timeout: .seconds(30)) == 0)
            }
        }
    }

    /// The memory alarm: once the broker blocks the server's connection, `POST /v1/jobs`
    /// answers 503 with Retry-After and keeps nothing (no `api_jobs` row, no message);
    /// `producer publish` waits; all of it resumes when the alarm clears.
    @Test func theMemoryAlarmRefusesJobsWithRetryAfterAndKeepsNothingHalfAccepted() async throws {
        try await OwnRabbitMQ.withNode { broker in
            try await FaultWorld.with(amqpURL: broker.url) { world in
                let server = try RunningProduct("producer", ["serve"], environment: world.environment())
                defer { server.signal(SIGKILL) }
                let api = APIServer(base: "http://127.0.0.1:\(try await server.listeningPort("http_port", timeout: .seconds(90)))",
                                    environment: world.environment(), vhost: "/")
                let token = try await api.token(tier: "premium", scopes: "jobs:write")
                let (first, _, firstBody) = try await api.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"}"#)
                #expect(first == 202, "\(firstBody)")

                try await broker.rabbitmqctl(["-q", "set_vm_memory_high_watermark", "0.0000001"])
                try await TestServices.waitUntil(timeout: .seconds(60), "the broker raises its memory alarm") { try await broker.memoryAlarm() }

                // The broker blocks a connection when it next publishes: this request's publish is
                // held by the broker (it waits, it is not refused) and the block is announced; or,
                // had the announcement come first, it is refused at once.
                let held = Task { try await api.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"}"#, timeout: .seconds(300)) }
                try await TestServices.waitUntil(timeout: .seconds(30), "the broker blocks producer serve") {
                    try await broker.connectionStates(named: "producer serve").contains("blocked")
                }
                // `producer publish` connects and publishes: it waits for the alarm to clear, or fails
                // saying the broker blocks publishers.
                let cli = try RunningProduct("producer", ["publish", "--type", "noop", "--tier", "premium"], environment: world.environment())
                defer { cli.signal(SIGKILL) }
                var refused = 0
                for index in 0..<20 {
                    let key = index.isMultiple(of: 2) ? "" : #","idempotency_key":"refused-\#(index)""#
                    let (status, headers, body) = try await api.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop"\#(key)}"#,
                                                                        timeout: .seconds(60))
                    #expect(status == 503 && headers["retry-after"] != nil && body.contains("broker"), "\(status) \(body)")
                    if status == 503 { refused += 1 }
                }
                #expect(refused == 20)

                try await broker.rabbitmqctl(["-q", "set_vm_memory_high_watermark", "0.4"])
                let (heldStatus, _, heldBody) = try await held.value
                #expect(heldStatus == 202 || heldStatus == 503, "\(heldBody)")
                let cliStatus = try await cli.wait(timeout: .seconds(60))
                #expect(cliStatus == 0 || (cliStatus == 1 && cli.stderr.contains("blocking")), "\(cli.stderr.suffix(1_000))")
                try await TestServices.waitUntil(timeout: .seconds(30), "POST /v1/jobs accepts again") {
                    try await api.request("POST", "/v1/jobs", token: token, body: #"{"type":"noop","idempotency_key":"after-1"}"#).0 == 202
                }
                // Accepted: the first, the held one (if it was not refused) and after-1 over HTTP, and
                // the CLI's if it exited 0; the 20 refused ones left neither a row nor a message.
                let acceptedHTTP = 2 + (heldStatus == 202 ? 1 : 0)
                #expect(try await world.count("SELECT count(*) FROM api_jobs") == acceptedHTTP, "api_jobs rows: the HTTP jobs accepted")
                try await TestServices.waitUntil(timeout: .seconds(20), "the queue holds exactly the accepted jobs") {
                    try await broker.messages(Tier.premium) == acceptedHTTP + (cliStatus == 0 ? 1 : 0)
                }
                #expect(server.isRunning)
                server.signal(SIGTERM)
                #expect(try await server.wait(timeout: .seconds(30)) == 0)
            }
        }
    }
}
