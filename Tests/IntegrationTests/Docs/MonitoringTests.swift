import Foundation
import Testing

/// The shipped alert rules (`infra/prometheus/alerts.yml`) and dashboard
/// (`infra/grafana/dashboards/warren.json`) query only metrics Warren exports: every `warren_*`
/// name in their expressions is the label of a metric some service creates (a histogram's
/// `_bucket`, `_sum` and `_count` series counting as its own), and those histograms are served
/// under those names.
@Suite struct MonitoringTests {
    static let root = Products.repositoryRoot

    /// `warren_*` names in `text`.
    static func metricNames(in text: String) -> Set<String> {
        let pattern = try! NSRegularExpression(pattern: "warren_[a-z_]+")
        let range = NSRange(text.startIndex..., in: text)
        return Set(pattern.matches(in: text, range: range).compactMap { Range($0.range, in: text).map { String(text[$0]) } })
    }

    /// The labels of the metrics the sources create (`Counter(label: "warren_...")` and the like),
    /// with the series a histogram (`Timer`, `Recorder`) adds.
    static func exportedNames() throws -> Set<String> {
        var names = Set<String>()
        let sources = root.appendingPathComponent("Sources")
        let files = FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil)?.compactMap { $0 as? URL } ?? []
        let pattern = try NSRegularExpression(pattern: #"(Counter|Gauge|Timer|Recorder)\(label: "(warren_[a-z_]+)""#)
        let constant = try NSRegularExpression(pattern: #"static let [a-zA-Z]+Label = "(warren_[a-z_]+)""#)
        for file in files where file.pathExtension == "swift" {
            let text = try String(contentsOf: file, encoding: .utf8)
            let range = NSRange(text.startIndex..., in: text)
            for match in pattern.matches(in: text, range: range) {
                let kind = String(text[Range(match.range(at: 1), in: text)!])
                let name = String(text[Range(match.range(at: 2), in: text)!])
                names.insert(name)
                if kind == "Timer" || kind == "Recorder" { for suffix in ["_bucket", "_sum", "_count"] { names.insert(name + suffix) } }
            }
            for match in constant.matches(in: text, range: range) {  // histograms named by a constant
                let name = String(text[Range(match.range(at: 1), in: text)!])
                names.formUnion([name, name + "_bucket", name + "_sum", name + "_count"])
            }
        }
        return names
    }

    static func expressions() throws -> [(file: String, expression: String)] {
        var found: [(String, String)] = []
        let alerts = try String(contentsOf: root.appendingPathComponent("infra/prometheus/alerts.yml"), encoding: .utf8)
        for line in alerts.split(separator: "\n") where line.trimmingCharacters(in: .whitespaces).hasPrefix("expr:") {
            found.append(("alerts.yml", String(line)))
        }
        let data = try Data(contentsOf: root.appendingPathComponent("infra/grafana/dashboards/warren.json"))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for panel in dashboard["panels"] as? [[String: Any]] ?? [] {
            for target in panel["targets"] as? [[String: Any]] ?? [] {
                found.append(("warren.json: \(panel["title"] ?? "")", target["expr"] as? String ?? ""))
            }
        }
        return found
    }

    @Test func everyAlertAndPanelQueriesMetricsThatExist() throws {
        let exported = try Self.exportedNames()
        #expect(exported.contains("warren_consumer_jobs_total") && exported.contains("warren_consumer_start_latency_seconds_bucket"),
                "the scan finds the sources' metrics: \(exported.sorted())")
        let expressions = try Self.expressions()
        #expect(expressions.count >= 25, "every alert and every panel target is read (\(expressions.count))")
        for (file, expression) in expressions {
            let names = Self.metricNames(in: expression)
            #expect(!names.isEmpty, "\(file): \(expression) names no Warren metric")
            for name in names where !exported.contains(name) {
                Issue.record("\(file): \(name) is not a metric any service exports (\(expression))")
            }
        }
    }

    @Test func theScanRefusesANameNoServiceExports() throws {
        let exported = try Self.exportedNames()
        #expect(!exported.contains("warren_consumer_jobs_totl"))
        #expect(Self.metricNames(in: #"rate(warren_consumer_jobs_totl{tier="free"}[5m])"#) == ["warren_consumer_jobs_totl"])
    }

    /// A histogram is served as `<name>_bucket`, `_sum` and `_count`, as the expressions assume;
    /// the gauges the alerts need are served.
    @Test(.enabled(if: TestServices.enabled)) func histogramsAreServedUnderTheNamesTheExpressionsUse() async throws {
        try await APIServer.with { server, _, _ in
            let token = try await server.token(tier: "enterprise", scopes: "jobs:read")
            _ = try await server.request("GET", "/v1/jobs/01900000-0000-7000-8000-000000000000", token: token, contentType: nil)
            let metrics = try await server.request("GET", "/metrics").2
            for suffix in ["_bucket{", "_sum{", "_count{"] {
                #expect(metrics.contains("warren_http_request_duration_seconds" + suffix), "\(suffix) in \(metrics.prefix(2_000))")
            }
            // What the no-consumer, near-cap and no-leader alerts read.
            try await TestServices.waitUntil(timeout: .seconds(20), "the producer reports each tier's consumers and capacity") {
                let metrics = try await server.request("GET", "/metrics").2
                return metrics.contains(#"warren_tier_consumers{tier="free"} 0"#)
                    && metrics.contains(#"warren_tier_queue_capacity{tier="free"} 400000"#)
            }
            let scheduler = try RunningProduct("scheduler", ["--admin-port", "0"], environment: server.environment)
            defer { scheduler.signal(SIGKILL) }
            let port = try await scheduler.listeningPort("admin_port")
            try await TestServices.waitUntil(timeout: .seconds(30), "the scheduler says it leads") {
                try await HTTP.request("GET", "http://127.0.0.1:\(port)/metrics").2.contains("warren_scheduler_leader 1")
            }
            scheduler.signal(SIGTERM)
            #expect(try await scheduler.wait() == 0)
        }
    }
}
