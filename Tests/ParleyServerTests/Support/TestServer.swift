import Foundation
import Logging
import NIOCore
import NIOPosix
@testable import ParleyServer
import ParleyCore
import ParleyStorage
import ParleyStoreSQLite
import ServiceLifecycle

/// A real Parley server on loopback ports chosen by the kernel, backed by a real SQLite file in a
/// temporary directory. `restart()` starts a new server on the same directory.
final class TestServer: @unchecked Sendable {
    let directory: URL
    private(set) var configuration: ServerConfiguration
    private var server: ParleyServer?
    private var store: SQLiteChatStore?
    private var group: ServiceGroup?
    private var runTask: Task<Void, any Error>?
    /// The server's logger, when a test reads the log; otherwise swift-log's default.
    private let logger: Logger?

    static func makeConfiguration() -> ServerConfiguration {
        var configuration = ServerConfiguration()
        configuration.listeners = [
            .init(address: "127.0.0.1", port: 0),
            .init(address: "::1", port: 0),
        ]
        configuration.accounts.passwordIterations = 1024
        // Tests create many accounts from loopback; the tests of this bound set it themselves.
        configuration.accounts.registrationsPerNetworkAllowed = 0
        configuration.logLevel = "warning"
        return configuration
    }

    init(logger: Logger? = nil, configure: (inout ServerConfiguration) -> Void = { _ in }) async throws {
        self.logger = logger
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var configuration = Self.makeConfiguration()
        configuration.dataDirectory = directory.path
        configure(&configuration)
        self.configuration = configuration
        try await start()
    }

    private func start() async throws {
        var logger = self.logger ?? Logger(label: "parley-test")
        logger.logLevel = Logger.Level(rawValue: configuration.logLevel) ?? .warning
        let store = try SQLiteChatStore(path: directory.appendingPathComponent("parley.sqlite").path)
        let server = try await ParleyServer(configuration: configuration, store: store, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: server)], logger: logger))
        self.store = store
        self.server = server
        self.group = group
        runTask = Task { try await group.run() }
        try await server.waitUntilListening()
    }

    /// The bound port of listener `index` (0: 127.0.0.1, 1: ::1 by default).
    func port(_ index: Int = 0) -> Int {
        server?.localAddresses[index].port ?? 0
    }

    /// The bound port of the metrics listener (`metrics.listen` set to an address).
    var metricsPort: Int? { server?.metricsAddress?.port }

    /// Password checks and account creations not finished yet.
    var passwordChecksInFlight: Int { server?.host.passwordChecksInFlight ?? 0 }

    /// Storage writes handed over and not yet committed.
    var storageBacklog: Int { server?.host.storageWriter.backlog ?? 0 }

    /// Waits until the server holds exactly `count` connections.
    func waitForOpenConnections(_ count: Int, timeout: Duration = .seconds(5)) async throws {
        let deadline = ContinuousClock.now + timeout
        while server?.host.openChannelCount != count {
            guard ContinuousClock.now < deadline else {
                throw TestClient.Timeout(waitingFor: "\(count) open connections (\(server?.host.openChannelCount ?? -1) now)", received: [])
            }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    var ipv4Port: Int { port(0) }
    var ipv6Port: Int { port(1) }

    func stop() async throws {
        await group?.triggerGracefulShutdown()
        try await runTask?.value
        try await store?.close()
        group = nil
        server = nil
        store = nil
        runTask = nil
    }

    func restart() async throws {
        try await stop()
        // Fixed ports would collide across parallel tests; a restart gets new ones.
        configuration.listeners = configuration.listeners.map { .init(address: $0.address, port: 0, tls: $0.tls) }
        try await start()
    }

    /// What the running server's SQLite file holds (read through a second connection).
    func storedMessages(group: String) async throws -> [StoredMessage] {
        let reader = try SQLiteChatStore(path: directory.appendingPathComponent("parley.sqlite").path)
        defer { Task { try? await reader.close() } }
        return try await reader.loadMessages(targetKind: .group, target: group)
    }

    func storedGroups() async throws -> [GroupRecord] {
        let reader = try SQLiteChatStore(path: directory.appendingPathComponent("parley.sqlite").path)
        defer { Task { try? await reader.close() } }
        return try await reader.loadGroups()
    }

    func shutdownAndRemove() async throws {
        try await stop()
        try? FileManager.default.removeItem(at: directory)
    }
}
