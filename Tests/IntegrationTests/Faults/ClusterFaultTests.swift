import Foundation
import Testing
import WarrenJobs

/// A 3-node cluster of the test's own (`infra/local/cluster`): the node a consumer is
/// connected to is SIGKILLed mid-run, then (with it back) the leader of the tier's quorum
/// queue. Clients fail over through the URL list; no confirmed job is lost, none has two rows.
///
/// Booting, joining and restarting nodes takes minutes on a loaded 2-core machine, so this
/// runs only with `WARREN_TEST_CLUSTER=1` (`./infra/bench/run faults` sets it).
@Suite(.enabled(if: TestServices.enabled && TestServices.environment["WARREN_TEST_CLUSTER"] == "1"))
struct ClusterFaultTests {
    /// Publishes `count` keyed jobs with `producer publish --jsonl` through `url`, kills node
    /// `victim()` once `killAfter` more rows are stored, and returns the keys confirmed.
    func publishKilling(_ world: FaultWorld, url: String, prefix: String, count: Int, killAfter: Int,
                        victim: () async throws -> Int, cluster: OwnCluster) async throws -> (confirmed: [String], killed: Int) {
        let file = try FaultWorld.jobsFile(count: count, prefix: prefix)
        let failedFile = file.appendingPathExtension("failed")
        defer {
            try? FileManager.default.removeItem(at: file)
            try? FileManager.default.removeItem(at: failedFile)
        }
        let rowsBefore = try await world.count("SELECT count(*) FROM job_runs")
        let publish = try RunningProduct("producer", ["publish", "--jsonl", file.path, "--rate", "500", "--failed", failedFile.path],
                                         environment: world.environment(["WARREN_AMQP_URL": url]))
        defer { publish.signal(SIGKILL) }
        try await TestServices.waitUntil(timeout: .seconds(120), "jobs are being stored") {
            try await world.count("SELECT count(*) FROM job_runs") >= rowsBefore + killAfter
        }
        let killed = try await victim()
        try await cluster.kill(killed)
        let status = try await publish.wait(timeout: .seconds(120))
        let report = try #require(FaultWorld.publishReport(publish.stderr), "\(publish.stderr.suffix(2_000))")
        #expect(status == (report.rejected == 0 ? 0 : 1), "the exit status tells whether all were confirmed")
        #expect(report.confirmed + report.rejected == count, "\(report)")
        let failed = Set(try String(contentsOf: failedFile, encoding: .utf8).split(separator: "\n")
            .compactMap { HTTP.field("idempotency_key", in: String($0)) })
        #expect(failed.count == report.rejected)
        return ((0..<count).map { "\(prefix)\($0)" }.filter { !failed.contains($0) }, killed)
    }

    @Test func killingTheConsumersNodeThenTheQueueLeaderLosesAndDuplicatesNothing() async throws {
        try await OwnCluster.withCluster { cluster in
            try await FaultWorld.with(amqpURL: cluster.url(query: "?heartbeat=5")) { world in
                let consumerID = "cluster-\(UUID().uuidString.prefix(6).lowercased())"
                // The consumer starts on node 2; the publisher on node 1.
                let consumer = try RunningProduct("consumer", ["--tier", "premium", "--admin-port", "0"],
                                                  environment: world.environment(["WARREN_AMQP_URL": cluster.url([2, 3, 1], query: "?heartbeat=5"),
                                                                                  "WARREN_CONSUMER_ID": consumerID]))
                defer { consumer.signal(SIGKILL) }
                try await TestServices.waitUntil(timeout: .seconds(60), "the consumer is connected to node 2") {
                    try await cluster.node(ofConnection: "consumer \(consumerID)") == 2
                }

                // 1. The consumer's node.
                let first = try await publishKilling(world, url: cluster.url([1, 2, 3]), prefix: "node-", count: 3_000, killAfter: 500,
                                                     victim: { 2 }, cluster: cluster)
                try await TestServices.waitUntil(timeout: .seconds(60), "the consumer failed over to another node") {
                    let node = try await cluster.node(ofConnection: "consumer \(consumerID)", asking: [1, 3])
                    return node != nil && node != 2
                }
                try await TestServices.waitUntil(timeout: .seconds(120), "every confirmed job has its row") {
                    try await world.missing(first.confirmed).isEmpty
                }
                try await cluster.restart(2)

                // 2. The leader of the tier's queue (the publisher starts on another node).
                let leader = try await cluster.leader(of: Tier.premium.queueName)
                let others = [1, 2, 3].filter { $0 != leader }
                let second = try await publishKilling(world, url: cluster.url(others + [leader]), prefix: "leader-", count: 3_000,
                                                      killAfter: 500, victim: { try await cluster.leader(of: Tier.premium.queueName) },
                                                      cluster: cluster)
                try await TestServices.waitUntil(timeout: .seconds(120), "every confirmed job has its row") {
                    try await world.missing(second.confirmed).isEmpty
                }
                try await TestServices.waitUntil(timeout: .seconds(30), "a new leader was elected") {
                    (try? await cluster.leader(of: Tier.premium.queueName)).map { $0 != second.killed } ?? false
                }
                #expect(consumer.isRunning, "the consumer was not restarted: \(consumer.stderr.suffix(2_000))")
                for prefix in ["node-", "leader-"] {
                    let rows = try await world.rowsByKey(prefix: prefix)
                    #expect(rows.duplicates == 0, "\(prefix): no job has two rows")
                }
                #expect(try await world.count("SELECT count(*) - count(DISTINCT job_id) FROM job_runs") == 0)
                consumer.signal(SIGTERM)
                #expect(try await consumer.wait(timeout: .seconds(30)) == 0)
            }
        }
    }
}
