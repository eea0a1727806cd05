import Foundation
import Testing
import WarrenSupport

/// One job's trace, end to end, as an OpenTelemetry collector receives it: `producer serve` and
/// a `consumer` export over OTLP/HTTP (JSON) to a small receiver in this test, which also plays
/// the job's HTTP handler. Real broker, Postgres and exporters.
@Suite(.enabled(if: TestServices.enabled))
struct TracingTests {
    /// OTLP/HTTP receiver and HTTP handler in one: each export is a `SPANS <json>` line on
    /// stderr, each handler call a `HOOK <traceparent>` line.
    static let receiver = #"""
        import json, sys
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/traces":
                    print("SPANS " + json.dumps(json.loads(body)), file=sys.stderr, flush=True)
                else:
                    print("HOOK " + str(self.headers.get("traceparent")), file=sys.stderr, flush=True)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
            def log_message(self, *args):
                pass
        server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        print(f"listening port={server.server_port}", file=sys.stderr, flush=True)
        server.serve_forever()
        """#

    struct Span: CustomStringConvertible {
        var service: String
        var name: String
        var kind: Int
        var traceID: String
        var spanID: String
        var parentID: String

        var description: String { "\(service) \(name) kind \(kind) \(spanID) ← \(parentID)" }
    }

    /// The spans the receiver got, ids in hex (OTLP/JSON writes them in base64).
    static func spans(_ receiver: RunningProduct) -> [Span] {
        func hex(_ value: Any?) -> String {
            guard let text = value as? String, let data = Data(base64Encoded: text) else { return "" }
            return data.map { String(format: "%02x", $0) }.joined()
        }
        var spans: [Span] = []
        for line in receiver.stderr.split(separator: "\n") where line.hasPrefix("SPANS ") {
            let export = HTTP.object(String(line.dropFirst(6)))
            for resource in export["resourceSpans"] as? [[String: Any]] ?? [] {
                let attributes = (resource["resource"] as? [String: Any])?["attributes"] as? [[String: Any]] ?? []
                let service = attributes.first { $0["key"] as? String == "service.name" }
                    .flatMap { ($0["value"] as? [String: Any])?["stringValue"] as? String } ?? ""
                for scope in resource["scopeSpans"] as? [[String: Any]] ?? [] {
                    for span in scope["spans"] as? [[String: Any]] ?? [] {
                        spans.append(Span(service: service, name: span["name"] as? String ?? "", kind: span["kind"] as? Int ?? 0,
                                          traceID: hex(span["traceId"]), spanID: hex(span["spanId"]), parentID: hex(span["parentSpanId"])))
                    }
                }
            }
        }
        return spans
    }

    /// A receiver, `producer serve` and an enterprise consumer whose `trace.hook` jobs go to the
    /// receiver as an HTTP handler; exporting spans to it when `exporting`. `body` gets the
    /// server, the producer, the receiver and an enterprise token.
    func withFleet(exporting: Bool, _ body: (APIServer, RunningProduct, RunningProduct, String) async throws -> Void) async throws {
        let receiver = try RunningProduct(executable: URL(fileURLWithPath: "/usr/bin/python3"), ["-c", Self.receiver])
        defer { receiver.signal(SIGKILL) }
        let port = try await receiver.listeningPort("port")
        var extra = ["WARREN_JOB_TYPES": "trace.hook"]
        if exporting {
            extra["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:\(port)"
            extra["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/json"
            extra["OTEL_BSP_SCHEDULE_DELAY"] = "100"
        }
        try await APIServer.with(extra: extra) { server, _, producer in
            let token = try await server.token(tier: "enterprise", scopes: "jobs:write,jobs:read")
            var environment = server.environment
            environment["WARREN_HTTP_HANDLERS"] = "trace.hook=http://127.0.0.1:\(port)/hook"
            environment["WARREN_HTTP_HANDLER_SECRET"] = "sixteen-bytes-or-more"
            let consumer = try RunningProduct("consumer", ["--tier", "enterprise"], environment: environment)
            defer { consumer.signal(SIGKILL) }
            try await body(server, producer, receiver, token)
            consumer.signal(SIGTERM)
            #expect(try await consumer.wait(timeout: .seconds(30)) == 0)
        }
    }

    @Test func oneJobsTraceCrossesProducerBrokerAndConsumer() async throws {
        try await withFleet(exporting: true) { server, producer, receiver, token in
            // The caller's own trace: Warren's spans continue it.
            let traceID = UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
            let callerSpan = String(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16))
            let (status, _, text) = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"trace.hook"}"#,
                                                             headers: ["traceparent": "00-\(traceID)-\(callerSpan)-01"])
            #expect(status == 202, "\(text)")
            let id = try #require(HTTP.field("id", in: text))
            try await TestServices.waitUntil(timeout: .seconds(30), "the job succeeded") {
                try await server.job(token, id)["status"] as? String == "succeeded"
            }
            let names = ["/v1/jobs", "publish trace.hook", "process trace.hook", "run trace.hook", "record succeeded"]
            try await TestServices.waitUntil(timeout: .seconds(30), "every span of the job is exported") {
                let seen = Set(Self.spans(receiver).filter { $0.traceID == traceID }.map(\.name))
                return names.allSatisfy(seen.contains)
            }
            let spans = Self.spans(receiver).filter { $0.traceID == traceID }
            func span(_ name: String) throws -> Span { try #require(spans.first { $0.name == name }, "\(spans)") }
            let request = try span("/v1/jobs"), publish = try span("publish trace.hook"), process = try span("process trace.hook")
            let run = try span("run trace.hook"), record = try span("record succeeded")
            // producer: the request continues the caller's span, the publish is its child
            #expect(request.service == "warren-producer" && request.kind == 2 && request.parentID == callerSpan, "\(request)")
            #expect(publish.service == "warren-producer" && publish.kind == 4 && publish.parentID == request.spanID, "\(publish)")
            // across the broker: the delivery's span is the publish's child (the message's traceparent)
            #expect(process.service == "warren-consumer" && process.kind == 5 && process.parentID == publish.spanID, "\(process)")
            #expect(run.service == "warren-consumer" && run.parentID == process.spanID, "\(run)")
            #expect(record.service == "warren-consumer" && record.parentID == process.spanID, "\(record)")
            // the HTTP handler was called inside the run span
            let hooks = receiver.stderr.split(separator: "\n").filter { $0.hasPrefix("HOOK ") }
            #expect(hooks == ["HOOK 00-\(traceID)-\(run.spanID)-01"], "\(hooks)")
            // and the request's log line carries the trace
            #expect(producer.stderr.contains(#""trace_id":"\#(traceID)""#), "\(producer.stderr.suffix(2_000))")
        }
    }

    @Test func withoutAnEndpointNothingIsTracedAndTheCallersTraceparentReachesTheHandler() async throws {
        try await withFleet(exporting: false) { server, producer, receiver, token in
            // The caller's traceparent still reaches the job's handler; a malformed one does not.
            let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            for traceparent in [caller, "00-nothex-b7ad6b7169203331-01"] {
                let (status, _, text) = try await server.request("POST", "/v1/jobs", token: token, body: #"{"type":"trace.hook"}"#,
                                                                 headers: ["traceparent": traceparent])
                #expect(status == 202, "\(text)")
                let id = try #require(HTTP.field("id", in: text))
                try await TestServices.waitUntil(timeout: .seconds(30), "the job succeeded") {
                    try await server.job(token, id)["status"] as? String == "succeeded"
                }
            }
            let hooks = receiver.stderr.split(separator: "\n").filter { $0.hasPrefix("HOOK ") }
            #expect(hooks == ["HOOK \(caller)", "HOOK None"], "\(hooks)")
            #expect(Self.spans(receiver).isEmpty)
            #expect(!producer.stderr.contains("trace_id"))
        }
    }

    /// This build carries only the HTTP exporter: asking for gRPC stops the process at start with
    /// a clear error (swift-otel itself would crash on it), before it takes any work.
    @Test func aGRPCExporterIsRefusedAtStart() async throws {
        for product in [["producer", "serve"], ["consumer", "--tier", "free"]] {
            let result = try await Products.run(product[0], Array(product.dropFirst()),
                                                environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                                                              "WARREN_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2f",
                                                              "WARREN_DATABASE_URL": "postgresql://warren:warren@127.0.0.1:1/warren"])
            #expect(result.status == 64, "\(product): \(result.status) \(result.stderr.suffix(500))")
            #expect(result.stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc"), "\(result.stderr.suffix(500))")
        }
    }
}
