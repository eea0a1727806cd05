import ArgumentParser
import Foundation
import Logging
import WarrenAMQP
import WarrenConfig
import WarrenJobs
import WarrenObservability
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// `producer publish`: one job from flags, or many from a JSON-lines file.
struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish one job, or many from a JSON-lines file, and wait for the broker's confirms.",
        discussion: """
            One job:   producer publish --type sleep --tier premium --payload '{"ms":500}'
            Many jobs: producer publish --jsonl jobs.jsonl   (one {"type","tier","payload",...} per line; - for stdin)
            Later:     producer publish --type noop --tier free --in 10m   (or --at 2026-12-24T09:00:00+01:00)

            Prints the job id (one job; with --jsonl and --ids, every id in input order). Exit
            status: 0 when every job was confirmed, 1 when any was not (each is listed with its
            line), 2 for bad input (nothing is published). Logs (JSON on stderr) only warnings
            and errors unless LOG_LEVEL asks for more.
            """)

    @Option(help: "Job type, e.g. noop, sleep, fail or message.send.")
    var type: String?

    @Option(help: "Tier: enterprise, premium or free. With --jsonl, the default for lines without one.")
    var tier: String?

    @Option(help: "JSON payload, @FILE to read it from a file, or - for standard input.")
    var payload: String = "{}"

    @Option(help: "Idempotency key passed to handlers.")
    var idempotencyKey: String?

    @Option(help: "Tenant the job belongs to.")
    var tenant: String?

    @Option(help: "At most --concurrency-limit jobs with this key run at once, across every consumer.")
    var concurrencyKey: String?

    @Option(help: "How many jobs of --concurrency-key may run at once (default 1).")
    var concurrencyLimit: Int?

    @Option(help: "Correlation id (default: none).")
    var correlationID: String?

    @Option(help: "Run the job at this instant (ISO 8601 with offset, e.g. 2026-12-24T09:00:00+01:00): held in Postgres ($WARREN_DATABASE_URL) and published by the scheduler when due.")
    var at: String?

    @Option(name: .customLong("in"), help: "Run the job after this delay (90s, 5m, 2h, or seconds): held like --at.")
    var delay: String?

    @Option(help: "Publish every line of this JSON-lines file (- for standard input).")
    var jsonl: String?

    @Option(help: "AMQP URL or comma-separated list (default: $WARREN_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/%2f).")
    var amqpURL: String?

    @Option(help: "Jobs per confirm batch with --jsonl.")
    var batchSize: Int = 500

    @Option(help: "Unconfirmed publishes allowed at once.")
    var window: Int = 1024

    @Option(help: "With --jsonl: publish at this steady rate (jobs per second), stamping each job as it is sent; for load tests.")
    var rate: Double?

    @Flag(help: "With --jsonl: print each confirmed job's id on stdout, one per line in input order (an unconfirmed one prints an empty line, so line n is input job n).")
    var ids = false

    @Option(help: "With --jsonl: write every line that was not confirmed to this file, as given (stderr lists the first 50), to publish them again later.")
    var failed: String?

    func validate() throws {
        if jsonl == nil, type == nil { throw ValidationError("give --type (one job) or --jsonl FILE (many jobs)") }
        if jsonl != nil, type != nil { throw ValidationError("--type and --jsonl do not go together") }
        // Bad combinations of job flags are bad input, exit 2 as documented (a ValidationError is 64).
        if at != nil, delay != nil { throw fail("--at and --in do not go together", code: 2) }
        if jsonl != nil, at != nil || delay != nil { throw fail("--at and --in take one job (--type), not --jsonl", code: 2) }
        if ids, jsonl == nil { throw fail("--ids goes with --jsonl (one job always prints its id)", code: 2) }
        if failed != nil, jsonl == nil { throw fail("--failed goes with --jsonl", code: 2) }
        guard (1...10_000).contains(batchSize) else { throw ValidationError("--batch-size must be in 1...10000") }
        if let rate, !(rate > 0 && rate <= 1_000_000) { throw ValidationError("--rate must be in (0, 1000000] jobs per second") }
        guard (1...100_000).contains(window) else { throw ValidationError("--window must be in 1...100000") }
    }

    func run() async throws {
        var logger = Observability.bootstrap(service: "producer")
        // A script's stderr is for its errors: "AMQP connected" and the like only when asked.
        if ProcessInfo.processInfo.environment["LOG_LEVEL"] == nil { logger.logLevel = .warning }
        let settings: Settings
        do {
            settings = try Settings()
        } catch {
            throw fail("configuration: \(error)", code: 2)
        }
        var configuration: AMQPConfiguration
        do {
            configuration = try AMQPConfiguration(url: amqpURL ?? settings.amqpURL, connectionName: "producer publish")
        } catch {
            throw fail("\(error)", code: 2)
        }
        configuration.confirmWindow = window
        configuration.reconnect = false

        if let jsonl {
            try await publishMany(path: jsonl, configuration: configuration, logger: logger)
        } else {
            try await publishOne(configuration: configuration, logger: logger)
        }
    }

    private func publishOne(configuration: AMQPConfiguration, logger: Logger) async throws {
        let request: JobRequest
        do {
            let payloadBytes = try readPayload(payload)
            request = try JobRequest(type: type ?? "", tier: try Tier.parse(tier ?? ""), payload: payloadBytes,
                                     idempotencyKey: idempotencyKey, tenant: tenant, concurrencyKey: concurrencyKey,
                                     concurrencyLimit: concurrencyLimit)
        } catch let error as JobError {
            throw fail(error.field.map { "--\($0.replacingOccurrences(of: "_", with: "-")): \(error.message)" } ?? error.message, code: 2)
        }
        var job = request.envelope(correlationID: correlationID)
        if let runAt = try runAt(now: job.enqueuedAt), runAt > job.enqueuedAt {
            job.enqueuedAt = runAt
            do {
                try await PostgresPool.withMigrated(applicationName: "warren-publish") { try await Outbox(pool: $0).hold(job) }
            } catch {
                throw fail("job not stored: \(error)", code: 1)
            }
            print("\(job.id.lowercasedString) scheduled for \(runAt.iso8601)")
            return
        }
        let publisher = JobPublisher(configuration: configuration, logger: logger)
        do {
            try await publisher.start()
            try await publisher.publish(job)
        } catch {
            await publisher.close()
            throw fail("job not published: \(error)", code: 1)
        }
        await publisher.close()
        print(job.id.lowercasedString)
    }

    private func publishMany(path: String, configuration: AMQPConfiguration, logger: Logger) async throws {
        let started = ContinuousClock.now
        let data: Data
        do {
            data = try readInput(path)
        } catch {
            throw fail("cannot read \(path): \(error.localizedDescription)", code: 2)
        }
        var defaultTier: Tier?
        if let tier {
            do { defaultTier = try Tier.parse(tier) } catch { throw fail("--tier: \(error.message)", code: 2) }
        }
        // Validate everything first: bad input changes nothing.
        var jobs: [(line: Int, job: JobEnvelope)] = []
        var lineRanges: [Int: Range<Int>] = [:]
        var problems: [String] = []
        let bytes = [UInt8](data)
        var lineNumber = 0
        var lineStart = 0
        for index in 0...bytes.count where index == bytes.count || bytes[index] == UInt8(ascii: "\n") {
            lineNumber += 1
            let line = bytes[lineStart..<index]
            lineStart = index + 1
            if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
            do {
                let request = try JobRequest(jsonLine: line, defaultTier: defaultTier)
                jobs.append((lineNumber, request.envelope(correlationID: correlationID)))
                if failed != nil { lineRanges[lineNumber] = line.startIndex..<line.endIndex }
            } catch {
                problems.append("line \(lineNumber): \(error.message)")
            }
        }
        if !problems.isEmpty {
            for problem in problems.prefix(50) { printError(problem) }
            if problems.count > 50 { printError("... and \(problems.count - 50) more") }
            throw fail("\(problems.count) invalid line(s); nothing was published", code: 2)
        }
        if jobs.isEmpty { throw fail("no jobs in \(path)", code: 2) }
        // Created (empty) before anything is published, so a script finds it even when all went well.
        if let failed, !FileManager.default.createFile(atPath: failed, contents: nil) {
            throw fail("--failed: cannot create \(failed)", code: 2)
        }

        let publisher = JobPublisher(configuration: configuration, logger: logger)
        do {
            try await publisher.start()
        } catch {
            throw fail("cannot connect: \(error)", code: 1)
        }
        let progress = Progress(total: jobs.count, enabled: isatty(STDERR_FILENO) != 0)
        // Paced publishing sends small batches often (about 50 a second).
        let batchSize = self.rate.map { max(1, min(self.batchSize, Int($0 / 50))) } ?? self.batchSize
        let batches = stride(from: 0, to: jobs.count, by: batchSize).map { Array(jobs[$0..<min($0 + batchSize, jobs.count)]) }
        let publishStarted = ContinuousClock.now
        var failures: [(line: Int, error: AMQPError)] = []
        // The id each input line was published under (paced publishing stamps new ones).
        var publishedIDs: [Int: UUID] = [:]
        // Several batches in flight keep the confirm window full; the connection keeps order.
        let inFlight = max(2, (window + batchSize - 1) / batchSize + 1)
        await withTaskGroup(of: [(Int, UUID, Result<Void, AMQPError>)].self) { group in
            var next = 0
            func submit() {
                let batch = batches[next]
                next += 1
                group.addTask {
                    let results = await publisher.publish(batch.map(\.job))
                    return zip(batch, results).map { ($0.line, $0.job.id, $1) }
                }
            }
            if let rate = self.rate {
                // Paced: each batch waits for its slot and is stamped (id, enqueued-at) as it leaves.
                for (index, batch) in batches.enumerated() {
                    let slot = publishStarted + .milliseconds(Int64(Double(index * batchSize) * 1_000 / rate))
                    group.addTask {
                        try? await Task.sleep(until: slot)
                        let now = Timestamp.now()
                        let stamped = batch.map { item -> JobEnvelope in
                            var job = item.job
                            job.enqueuedAt = now
                            job.id = JobID.make(at: now)
                            return job
                        }
                        let results = await publisher.publish(stamped)
                        return zip(zip(batch.map(\.line), stamped), results).map { ($0.0, $0.1.id, $1) }
                    }
                }
                next = batches.count
            }
            while next < batches.count && next < inFlight { submit() }
            for await results in group {
                for (line, id, result) in results {
                    switch result {
                    case .success: publishedIDs[line] = id
                    case .failure(let error): failures.append((line, error))
                    }
                }
                progress.advance(by: results.count, failed: failures.count)
                if next < batches.count { submit() }
            }
        }
        await publisher.close()
        progress.finish()
        if ids {
            // Line n of stdout is input job n: an empty line for a job the broker did not confirm.
            var text = ""
            text.reserveCapacity(jobs.count * 37)
            for job in jobs {
                text += publishedIDs[job.line]?.lowercasedString ?? ""
                text += "\n"
            }
            FileHandle.standardOutput.write(Data(text.utf8))
        }

        let elapsed = ContinuousClock.now - started
        let publishElapsed = ContinuousClock.now - publishStarted
        let seconds = Double(elapsed.nanoseconds) / 1e9
        let confirmed = jobs.count - failures.count
        let rate = seconds > 0 ? Double(confirmed) / seconds : 0
        let summary = String(format: "published %d, rejected %d, in %.2f s (publishing %.2f s), %.0f jobs/s",
                             confirmed, failures.count, seconds, Double(publishElapsed.nanoseconds) / 1e9, rate)
        printError(summary)
        if !failures.isEmpty {
            let sorted = failures.sorted(by: { $0.line < $1.line })
            if let failed {
                var out = [UInt8]()
                for failure in sorted {
                    if let range = lineRanges[failure.line] { out += bytes[range]; out.append(UInt8(ascii: "\n")) }
                }
                do {
                    try Data(out).write(to: URL(fileURLWithPath: failed))
                    printError("\(failures.count) unconfirmed line(s) written to \(failed)")
                } catch {
                    printError("producer: --failed: cannot write \(failed): \(error.localizedDescription)")
                }
            }
            for failure in sorted.prefix(50) {
                printError("line \(failure.line): not confirmed: \(failure.error)")
            }
            if failures.count > 50 { printError("... and \(failures.count - 50) more") }
            throw ExitCode(1)
        }
    }

    private func readPayload(_ argument: String) throws -> [UInt8] {
        if argument == "-" { return [UInt8](try readInput("-")) }
        if argument.hasPrefix("@") {
            let path = String(argument.dropFirst())
            do {
                return [UInt8](try readInput(path))
            } catch {
                throw JobError(field: "payload", message: "cannot read \(path): \(error.localizedDescription)")
            }
        }
        return Array(argument.utf8)
    }

    private func readInput(_ path: String) throws -> Data {
        if path == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
        return try Data(contentsOf: URL(fileURLWithPath: path))
    }

    /// The time given by `--at` or `--in`, if any.
    private func runAt(now: Timestamp) throws -> Timestamp? {
        if let at {
            guard let instant = Timestamp(iso8601: at) else {
                throw fail("--at: expected an ISO 8601 instant with its offset (Z, or ±HH:MM from -23:59 to +23:59), like 2026-12-24T09:00:00+01:00, got '\(at)'",
                           code: 2)
            }
            return instant
        }
        if let delay {
            guard let duration = parseDuration(delay), duration <= .seconds(Outbox.maxDelaySeconds) else {
                throw fail("--in: expected a delay like 90s, 5m or 2h (at most \(Outbox.maxDelaySeconds / 86_400) days), got '\(delay)'",
                           code: 2)
            }
            return Timestamp(microseconds: now.microseconds + duration.nanoseconds / 1_000)
        }
        return nil
    }

    private func fail(_ message: String, code: Int32) -> ExitCode {
        printError("producer: \(message)")
        return ExitCode(code)
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// A one-line progress display on a terminal's stderr, redrawn at most 4 times a second.
final class Progress: @unchecked Sendable {
    // Only touched from the task that drains the task group.
    private let total: Int
    private let enabled: Bool
    private var done = 0
    private var lastDraw = ContinuousClock.now

    init(total: Int, enabled: Bool) {
        self.total = total
        self.enabled = enabled
    }

    func advance(by count: Int, failed: Int) {
        done += count
        guard enabled, ContinuousClock.now - lastDraw > .milliseconds(250) else { return }
        lastDraw = ContinuousClock.now
        FileHandle.standardError.write(Data("\r\(done)/\(total) settled, \(failed) rejected".utf8))
    }

    func finish() {
        if enabled { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }
}
