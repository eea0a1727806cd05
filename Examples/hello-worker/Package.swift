// swift-tools-version:6.0
// An application of its own that runs its jobs on Warren: it depends on the `Warren` library
// (here by path; from another repository, by its git URL and a version).
import PackageDescription

let package = Package(
    name: "hello-worker",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "hello-worker", targets: ["HelloWorker"]),
    ],
    dependencies: [
        .package(name: "warren", path: "../.."),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
    ],
    targets: [
        .executableTarget(
            name: "HelloWorker",
            dependencies: [
                .product(name: "Warren", package: "warren"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
    ]
)
