import Foundation
import NIOConcurrencyHelpers
import Testing

/// The real `parley-server` executable, run as a child process on a temporary data directory:
/// for what only a process shows (signals, exit codes, the admin subcommands).
final class ServerProcess: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// `swift build --build-tests` (and `swift test`) put the executables beside the test bundle.
    static func executable(named name: String = "parley-server") throws -> URL {
        let besideTests = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let packageRoot = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let candidates = [
            besideTests.appendingPathComponent(name),
            besideTests.deletingLastPathComponent().appendingPathComponent(name),
            packageRoot.appendingPathComponent(".build/debug/\(name)"),
        ]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            throw Failure(description: "\(name) is not built; run `swift build --build-tests` first (looked in \(candidates.map(\.path)))")
        }
        return found
    }

    /// Runs a subcommand to completion, feeding `input` on standard input.
    static func run(_ arguments: [String], input: String = "", executable name: String = "parley-server", environment: [String: String] = [:]) throws -> (status: Int32, output: String, errors: String) {
        let process = Process()
        process.executableURL = try executable(named: name)
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.arguments = arguments
        let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        stdin.fileHandleForWriting.write(Data(input.utf8))
        try stdin.fileHandleForWriting.close()
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        let errors = stderr.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: errors, as: UTF8.self))
    }

    private let process: Process
    private let log = NIOLockedValueBox("")
    let ports: [Int]

    /// Starts `parley-server serve` on 127.0.0.1 and ::1 with kernel-chosen ports and waits
    /// until both listen (read from its log). `whileStarting`, if given, runs first, with the
    /// log so far (to act at a given moment of the start).
    init(dataDirectory: URL, configFile: URL, arguments extra: [String] = [],
         whileStarting: (@Sendable (_ log: @Sendable () -> String) async throws -> Void)? = nil) async throws {
        process = Process()
        process.executableURL = try Self.executable()
        process.arguments = [
            "serve", "--config", configFile.path, "--data-dir", dataDirectory.path,
            "--listen", "127.0.0.1:0", "--listen", "[::1]:0", "--log-level", "info",
        ] + extra
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        let log = self.log
        stderr.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if !data.isEmpty { log.withLockedValue { $0 += String(decoding: data, as: UTF8.self) } }
        }
        try process.run()
        if let whileStarting {
            do {
                try await whileStarting { log.withLockedValue { $0 } }
            } catch {
                process.terminate()
                throw error
            }
        }
        let deadline = ContinuousClock.now + .seconds(20)
        var found: [Int] = []
        while found.count < 2 {
            guard process.isRunning, ContinuousClock.now < deadline else {
                process.terminate()
                throw Failure(description: "the server did not start listening; its log:\n\(log.withLockedValue { $0 })")
            }
            try await Task.sleep(for: .milliseconds(20))
            found = Self.listeningPorts(in: log.withLockedValue { $0 })
        }
        ports = found
    }

    /// Ports from lines like `... address=[IPv4]127.0.0.1/127.0.0.1:40123 tls=false ... listening`.
    static func listeningPorts(in log: String) -> [Int] {
        log.split(separator: "\n").filter { $0.hasSuffix("listening") }.compactMap { line in
            guard let field = line.split(separator: " ").first(where: { $0.hasPrefix("address=") }),
                  let colon = field.lastIndex(of: ":") else { return nil }
            return Int(field[field.index(after: colon)...])
        }
    }

    /// The metrics listener's port, from its `serving metrics` log line.
    var metricsPort: Int? {
        logText.split(separator: "\n").first { $0.hasSuffix("serving metrics") }
            .flatMap { line in line.split(separator: " ").first { $0.hasPrefix("address=") } }
            .flatMap { field in field.lastIndex(of: ":").flatMap { Int(field[field.index(after: $0)...]) } }
    }

    var logText: String { log.withLockedValue { $0 } }

    /// Waits until `text` is in `log` (a process's log so far) `times` times: a child process's
    /// progress shows only there, so it is read again every 20 ms until `timeout`.
    static func waitForLog(_ text: String, times: Int = 1, in log: () -> String, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while log().components(separatedBy: text).count - 1 < times {
            guard ContinuousClock.now < deadline else { throw Failure(description: "not \(times) times \(text) in the log:\n\(log())") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
    var isRunning: Bool { process.isRunning }
    var processIdentifier: Int32 { process.processIdentifier }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits for the process to exit and returns its status, or nil if it is still running.
    func waitForExit(timeout: Duration) async throws -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline { return nil }
            try await Task.sleep(for: .milliseconds(20))
        }
        return process.terminationStatus
    }

    /// Sends SIGTERM to every node, then expects each to exit with status 0 (its log shown if not).
    static func stopCleanly(_ nodes: [ServerProcess], sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for node in nodes { node.signal(SIGTERM) }
        for node in nodes {
            #expect(try await node.waitForExit(timeout: .seconds(15)) == 0, "\(node.logText)", sourceLocation: sourceLocation)
        }
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}
