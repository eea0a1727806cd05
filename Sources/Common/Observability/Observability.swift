import Foundation
import Logging
import Metrics
import Prometheus

/// Process-wide logging and metrics set-up. Call ``bootstrap(service:)`` once, first thing in
/// `main`; libraries only ever receive a `Logger`.
package enum Observability {
    /// The Prometheus registry behind swift-metrics; render it on `/metrics`.
    package static let registry = PrometheusCollectorRegistry()

    /// JSON logs on stderr at `LOG_LEVEL` (default `info`; with trace ids when ``Traces`` export is
    /// asked for), Prometheus metrics; `durationBuckets`
    /// gives timers by label their own histogram buckets. Returns the service's root logger.
    package static func bootstrap(service: String, durationBuckets: [String: [Duration]] = [:],
                                  environment: [String: String] = ProcessInfo.processInfo.environment) -> Logger {
        let level = environment["LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) } ?? .info
        if Traces.requested(environment) {
            // Lines written inside a span carry its trace_id and span_id.
            LoggingSystem.bootstrap({ label, provider in JSONLogHandler(label: label, level: level, metadataProvider: provider) },
                                    metadataProvider: Traces.loggingMetadata())
        } else {
            LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
        }
        var factory = PrometheusMetricsFactory(registry: registry)
        for (label, buckets) in durationBuckets { factory.durationHistogramBuckets[label] = buckets }
        MetricsSystem.bootstrap(factory)
        var logger = Logger(label: "warren.\(service)")
        logger[metadataKey: "service"] = "\(service)"
        return logger
    }

    /// The Prometheus text exposition of every metric.
    package static func renderMetrics() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}
