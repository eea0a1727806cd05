import Foundation
import Instrumentation
import Logging
import OTel
import ServiceContextModule
import ServiceLifecycle
import Synchronization
import Tracing

/// OpenTelemetry traces (swift-distributed-tracing, exported by swift-otel over OTLP/HTTP).
///
/// Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set:
/// then ``bootstrap(service:logger:environment:)`` installs the tracer and every span below is
/// made; otherwise none is (``enabled`` is false and the helpers return nil), so a fleet without
/// a collector pays for a flag read. The standard variables apply: `OTEL_SERVICE_NAME`
/// (default `warren-<service>`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default,
/// or `http/json`; `grpc` is refused: this build carries only the HTTP exporter),
/// `OTEL_TRACES_SAMPLER`, `OTEL_BSP_SCHEDULE_DELAY` and the rest of `OTEL_BSP_*`.
///
/// The spans of one job: the HTTP request (`POST /v1/jobs`, Hummingbird's `TracingMiddleware`,
/// continuing a caller's `traceparent`), `publish <type>` (producer kind, the publish and its
/// confirm), then in the consumer `process <type>` (consumer kind, the delivery, child of the
/// publish through the message's `traceparent` header), `run <type>` (the handler; `message.send`
/// and HTTP handlers pass its `traceparent` on) and `record <status>` (until the result is
/// durable and the delivery acked). Log lines written inside a span carry `trace_id` and `span_id`.
package enum Traces {
    private static let flag = Atomic<Bool>(false)

    /// Whether spans are made: true once ``bootstrap(service:logger:environment:)`` installed a tracer.
    package static var enabled: Bool { flag.load(ordering: .relaxed) }

    /// Whether the environment asks for export (an OTLP endpoint is set, and the SDK is not
    /// disabled nor the traces exporter `none`).
    package static func requested(_ environment: [String: String]) -> Bool {
        let endpoint = environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] ?? environment["OTEL_EXPORTER_OTLP_ENDPOINT"] ?? ""
        return !endpoint.isEmpty && environment["OTEL_SDK_DISABLED"]?.lowercased() != "true"
            && environment["OTEL_TRACES_EXPORTER"]?.lowercased() != "none"
    }

    package struct ConfigurationError: Error, CustomStringConvertible {
        package let description: String
    }

    /// Installs the OTLP tracer when ``requested(_:)``; returns the exporter's service (run it
    /// in the process's `ServiceGroup`, first, so it stops last and flushes), or nil when
    /// tracing stays off. Call once, after ``Observability/bootstrap(service:durationBuckets:environment:)``.
    package static func bootstrap(service: String, logger: Logger,
                                  environment: [String: String] = ProcessInfo.processInfo.environment) throws -> (any Service)? {
        guard requested(environment) else { return nil }
        let wire = environment["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] ?? environment["OTEL_EXPORTER_OTLP_PROTOCOL"]
        if let wire, wire != "http/protobuf", wire != "http/json" {
            throw ConfigurationError(description: "OTEL_EXPORTER_OTLP_PROTOCOL=\(wire): Warren exports over http/protobuf or http/json")
        }
        var configuration = OTel.Configuration.default
        configuration.serviceName = "warren-\(service)"  // OTEL_SERVICE_NAME overrides it
        configuration.diagnosticLogger = .custom(logger)
        // Its warnings about a malformed incoming traceparent print the whole carrier (every
        // request header, Authorization included): errors only.
        configuration.diagnosticLogLevel = .error
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        let backend = try OTel.makeTracingBackend(configuration: configuration)
        InstrumentationSystem.bootstrap(backend.factory)
        flag.store(true, ordering: .relaxed)
        return backend.service
    }

    /// `trace_id`, `span_id` and `trace_flags` of the current span, for every log line.
    package static func loggingMetadata() -> Logger.MetadataProvider { OTel.makeLoggingMetadataProvider() }

    /// Starts a span when tracing is on (nil otherwise); the caller ends it.
    package static func start(_ name: String, kind: SpanKind = .internal, context: ServiceContext? = nil) -> (any Span)? {
        guard enabled else { return nil }
        return startSpan(name, context: context ?? ServiceContext.current ?? .topLevel, ofKind: kind)
    }

    /// Runs `body` with `span` current (its child spans, `trace_id` in log lines, the
    /// `traceparent` handlers pass on), then ends it; just runs `body` when `span` is nil.
    package static func within<T>(_ span: (any Span)?, _ body: () async throws -> T) async rethrows -> T {
        guard let span else { return try await body() }
        defer { span.end() }
        return try await ServiceContext.withValue(span.context) { try await body() }
    }

    /// The W3C `traceparent` of `context` (the current one by default); nil when tracing is
    /// off or there is no span.
    package static func traceparent(_ context: ServiceContext? = ServiceContext.current) -> String? {
        guard enabled, let context else { return nil }
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &carrier, using: DictionaryCarrier())
        return carrier["traceparent"]
    }

    /// `text` when it is a W3C `traceparent` of version 00 (`00-<32 hex>-<16 hex>-<2 hex>`), else nil:
    /// what a caller sends is passed on only in that shape.
    package static func wellFormed(_ text: String) -> String? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "00", parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
              parts.allSatisfy({ $0.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) } }) else { return nil }
        return text
    }

    /// A context continuing `traceparent` (a job's, from its message), for its spans' parent.
    package static func context(traceparent: String?) -> ServiceContext {
        var context = ServiceContext.topLevel
        guard enabled, let traceparent else { return context }
        InstrumentationSystem.instrument.extract(["traceparent": traceparent], into: &context, using: DictionaryCarrier())
        return context
    }

    private struct DictionaryCarrier: Injector, Extractor {
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }
}
