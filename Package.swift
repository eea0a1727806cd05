// swift-tools-version:6.1
import PackageDescription

/// The layers are separate modules: Package CMO lets the optimizer inline and specialize
/// `package` code across them in release builds, as it did when they were one module (e2e was
/// 0.85 of the single module without it). It takes unsafe flags, which SwiftPM refuses in a
/// package resolved by version, so it is on where Warren is built as itself or by path (this
/// repository, `Examples/`), and off in a checkout under another package's `.build/checkouts/`
/// (an application depending on the `Warren` library by URL). `WARREN_PACKAGE_CMO=0` or `=1`
/// decides instead.
let packageCMO: Bool = {
    switch Context.environment["WARREN_PACKAGE_CMO"] {
    case "0": return false
    case "1": return true
    default: return !Context.packageDirectory.contains("/checkouts/")
    }
}()

/// One settings list for every Swift target (hummingbird does the same).
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
] + (packageCMO ? [.unsafeFlags(["-package-cmo", "-allow-non-resilient-access"], .when(configuration: .release))] : [])

let package = Package(
    name: "warren",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "producer", targets: ["Producer"]),
        .executable(name: "consumer", targets: ["Consumer"]),
        .executable(name: "scheduler", targets: ["Scheduler"]),
        .executable(name: "notify-standin", targets: ["NotifyStandIn"]),
        // The library for Swift users: handlers (typed or not), a `Worker` service, a `JobClient`.
        // Its public API is versioned (README, "Writing jobs"); everything else is `package`.
        .library(name: "Warren", targets: ["Warren"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.20.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess.git", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.0.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-service-context.git", from: "1.0.0"),
        // Traces over OTLP/HTTP only: the gRPC exporter's packages are left out (trait OTLPGRPC).
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
        // The web console's HTML templates (escaped by default).
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.0.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CRabbitMQ",
            pkgConfig: "librabbitmq",
            providers: [.apt(["librabbitmq-dev"]), .brew(["rabbitmq-c"])]
        ),
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"]), .brew(["libpq"])]
        ),
        // glibc's malloc.h (mallopt): part of libc, nothing to link.
        .systemLibrary(name: "CMalloc"),
        // The layers, one way down (docs/architecture.md, "Layers"): each folder of Sources/Common
        // is a target, and a target imports only those below it.
        // Time (`Timestamp`, `CivilDate`, cron), JSON text, backoff, waiting primitives, process
        // set-up: no jobs, no I/O of its own.
        .target(
            name: "WarrenSupport",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .target(name: "CMalloc", condition: .when(platforms: [.linux])),
            ],
            path: "Sources/Common/Support",
            swiftSettings: swiftSettings
        ),
        // Reading settings from the environment.
        .target(
            name: "WarrenConfig",
            dependencies: [
            ],
            path: "Sources/Common/Config",
            swiftSettings: swiftSettings
        ),
        // Our AMQP 0-9-1 client over librabbitmq: knows nothing of jobs.
        .target(
            name: "WarrenAMQP",
            dependencies: [
                "WarrenSupport",
                "CRabbitMQ",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Common/AMQP",
            swiftSettings: swiftSettings
        ),
        // Our Postgres client over libpq, and the migrator: knows nothing of jobs.
        .target(
            name: "WarrenPostgres",
            dependencies: [
                "WarrenSupport",
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Common/Postgres",
            swiftSettings: swiftSettings
        ),
        // Jobs: the envelope, tiers, topology, retry policy, control messages, the handler API, publishing.
        .target(
            name: "WarrenJobs",
            dependencies: [
                "WarrenAMQP",
                "WarrenConfig",
                "WarrenSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Common/Jobs",
            swiftSettings: swiftSettings
        ),
        // Warren's tables: the schema, job runs, the outbox, API jobs and batches, schedules, contacts, leases.
        .target(
            name: "WarrenStore",
            dependencies: [
                "WarrenPostgres",
                "WarrenAMQP",
                "WarrenJobs",
                "WarrenConfig",
                "WarrenSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Common/Store",
            swiftSettings: swiftSettings
        ),
        // API tokens.
        .target(
            name: "WarrenAuth",
            dependencies: [
                "WarrenPostgres",
                "WarrenJobs",
                "WarrenSupport",
            ],
            path: "Sources/Common/Auth",
            swiftSettings: swiftSettings
        ),
        // Breakers, rate limits (local and fleet-wide), outbound limits, load shedding by tier.
        .target(
            name: "WarrenResilience",
            dependencies: [
                "WarrenStore",
                "WarrenJobs",
                "WarrenAMQP",
                "WarrenConfig",
                "WarrenSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Common/Resilience",
            swiftSettings: swiftSettings
        ),
        // JSON logs, Prometheus metrics, OpenTelemetry traces, the admin port.
        .target(
            name: "WarrenObservability",
            dependencies: [
                "WarrenConfig",
                "WarrenSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
            ],
            path: "Sources/Common/Observability",
            swiftSettings: swiftSettings
        ),
        // `message.send`: the notification service client and its handler.
        .target(
            name: "WarrenNotify",
            dependencies: [
                "WarrenJobs",
                "WarrenResilience",
                "WarrenConfig",
                "WarrenSupport",
                "WarrenObservability",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Common/Notify",
            swiftSettings: swiftSettings
        ),
        // Command handlers: a job run as a program of the user's (payload on stdin, exit status as outcome).
        .target(
            name: "WarrenCommands",
            dependencies: [
                "WarrenJobs",
                "WarrenConfig",
                "WarrenSupport",
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            path: "Sources/Common/Commands",
            swiftSettings: swiftSettings
        ),
        // The worker engine: subscriptions, admission, start gate, running handlers, settlement, result writes.
        .target(
            name: "WarrenWorker",
            dependencies: [
                "WarrenStore",
                "WarrenResilience",
                "WarrenJobs",
                "WarrenAMQP",
                "WarrenPostgres",
                "WarrenConfig",
                "WarrenSupport",
                "WarrenObservability",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
            ],
            path: "Sources/Common/Consumer",
            swiftSettings: swiftSettings
        ),
        // The scheduler: leader election and the leader's duties (cron, delayed jobs, contact
        // events, partition upkeep).
        .target(
            name: "WarrenScheduling",
            dependencies: [
                "WarrenStore",
                "WarrenJobs",
                "WarrenPostgres",
                "WarrenAMQP",
                "WarrenConfig",
                "WarrenSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Common/Scheduling",
            swiftSettings: swiftSettings
        ),
        // The HTTP API (`producer serve`): routes, request fields, errors, batch completion.
        .target(
            name: "WarrenAPI",
            dependencies: [
                "WarrenAuth", "WarrenStore", "WarrenResilience", "WarrenObservability", "WarrenJobs", "WarrenPostgres",
                "WarrenAMQP", "WarrenSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                // The console: the broker's management API, and its pages' templates.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Mustache", package: "swift-mustache"),
            ],
            path: "Sources/Common/API",
            swiftSettings: swiftSettings
        ),
        // The public library: re-exports the handler API of WarrenJobs and adds `Worker` (the
        // worker engine as a Service) and `JobClient` (publishing with confirms).
        .target(
            name: "Warren",
            dependencies: [
                "WarrenWorker", "WarrenStore", "WarrenJobs", "WarrenAMQP", "WarrenPostgres", "WarrenConfig", "WarrenSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/Common/Warren",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "Producer",
            dependencies: [
                "WarrenAPI", "WarrenAuth", "WarrenStore", "WarrenResilience", "WarrenObservability", "WarrenJobs", "WarrenPostgres",
                "WarrenAMQP", "WarrenConfig", "WarrenSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "Consumer",
            dependencies: [
                "WarrenWorker", "WarrenNotify", "WarrenCommands", "WarrenObservability", "WarrenStore", "WarrenResilience", "WarrenJobs",
                "WarrenPostgres", "WarrenAMQP", "WarrenConfig", "WarrenSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "Scheduler",
            dependencies: [
                "WarrenScheduling", "WarrenStore", "WarrenObservability", "WarrenJobs", "WarrenPostgres", "WarrenAMQP",
                "WarrenConfig", "WarrenSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // A stand-in for the notification service `message.send` posts to, for local runs and
        // tests. On purpose it shares no code with Common: it plays an outside service.
        .executableTarget(
            name: "NotifyStandIn",
            dependencies: [
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CommonTests",
            dependencies: [
                "WarrenSupport", "WarrenConfig", "WarrenAMQP", "WarrenPostgres", "WarrenJobs", "WarrenStore", "WarrenAuth", "WarrenAPI",
                "WarrenResilience", "WarrenObservability", "WarrenNotify", "WarrenWorker", "WarrenScheduling", "Warren",
                "WarrenCommands",
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "WarrenSupport", "WarrenConfig", "WarrenAMQP", "WarrenPostgres", "WarrenJobs", "WarrenStore", "WarrenAuth",
                "WarrenResilience", "WarrenObservability", "WarrenNotify", "WarrenWorker", "WarrenScheduling", "WarrenAPI", "Warren",
                "WarrenCommands",
                "CRabbitMQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
