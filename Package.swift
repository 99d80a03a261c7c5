// swift-tools-version: 6.2
import PackageDescription

// Modules by dependency: IRCWire (pure wire format) <- ParleyCore (chat domain, no sockets)
// <- ParleyStorage (the storage interface) <- ParleyStoreSQLite (its embedded backend),
// ParleyStorePostgres (the shared PostgreSQL backend) and ParleyServer (SwiftNIO shell, which knows only the interface) <- executables.
// The message path's own modules skip dynamic exclusivity checks in release builds: they were
// about 5% of the server's time under load (debug builds and tests keep them).
let messagePathSettings: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "Parley",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "parley-server", targets: ["parley-server"]),
        .executable(name: "parley", targets: ["parley"]),
        .executable(name: "parley-bench", targets: ["parley-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        .target(
            name: "IRCWire",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: messagePathSettings
        ),
        .target(
            name: "ParleyCore",
            dependencies: [
                "IRCWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: messagePathSettings
        ),
        .target(
            name: "CSQLiteTuning",
            linkerSettings: [.linkedLibrary("sqlite3")]
        ),
        .target(
            name: "ParleyStorage",
            dependencies: ["ParleyCore", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "ParleyStoreSQLite",
            dependencies: [
                "ParleyCore", "ParleyStorage", "CSQLiteTuning",
                .product(name: "GRDB", package: "GRDB.swift"),
                // The C API, to bind the message path's inserts directly (see SQLiteBinding.swift).
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ]
        ),
        // The web client's static files, as resources; ParleyServer serves them on web listeners.
        .target(name: "ParleyWeb", resources: [.copy("site")]),
        .target(
            name: "ParleyStorePostgres",
            dependencies: [
                "ParleyCore", "ParleyStorage",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "ParleyServer",
            dependencies: [
                "IRCWire", "ParleyCore", "ParleyStorage", "ParleyWeb",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: messagePathSettings
        ),
        .target(
            name: "ParleyClient",
            dependencies: [
                "IRCWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .executableTarget(
            name: "parley-server",
            dependencies: [
                "ParleyServer", "ParleyStorage", "ParleyStoreSQLite", "ParleyStorePostgres", "ParleyCore", "IRCWire",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "parley",
            dependencies: [
                "ParleyClient", "IRCWire",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(name: "CBenchPoll"),
        .executableTarget(
            name: "parley-bench",
            dependencies: [
                "IRCWire", "CBenchPoll",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            // The generator's own bookkeeping per delivery is in classes shared by closures,
            // where the checks were about a twelfth of its CPU in a fan-out.
            swiftSettings: messagePathSettings
        ),
        .testTarget(
            name: "IRCWireTests",
            dependencies: [
                "IRCWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "ParleyCoreTests", dependencies: ["ParleyCore", "IRCWire"]),
        // Where the tests' PostgreSQL comes from (PARLEY_TEST_POSTGRES_URL or a throwaway cluster).
        .target(
            name: "PostgresTestSupport",
            dependencies: [
                "ParleyStorePostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/PostgresTestSupport"
        ),
        .testTarget(name: "ParleyStorageTests", dependencies: [
            "ParleyStorage", "ParleyStoreSQLite", "ParleyStorePostgres", "PostgresTestSupport", "ParleyCore",
            .product(name: "PostgresNIO", package: "postgres-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "ParleyStoreSQLiteTests", dependencies: ["ParleyStoreSQLite", "ParleyStorage", "ParleyCore", .product(name: "GRDB", package: "GRDB.swift")]),
        .testTarget(name: "ParleyClientTests", dependencies: ["ParleyClient", "IRCWire"]),
        .testTarget(
            name: "ParleyServerTests",
            dependencies: [
                "ParleyServer", "ParleyStorage", "ParleyStoreSQLite", "ParleyStorePostgres", "PostgresTestSupport", "ParleyCore", "IRCWire", "ParleyClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
                // SQLite's C API: a second connection to the server's file holds its write lock.
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
