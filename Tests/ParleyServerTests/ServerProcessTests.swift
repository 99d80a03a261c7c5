import Foundation
import IRCWire
import Testing

/// The `parley-server` executable itself: admin subcommands on a data directory, and a clean
/// exit on SIGTERM and SIGINT that tells connected clients why.
@Suite("parley-server as a process")
struct ServerProcessTests {
    static func makeDirectory() throws -> (directory: URL, config: URL) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-process-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let config = directory.appendingPathComponent("parley.json")
        // Few iterations keep the test quick; everything else is the default configuration.
        try Data(#"{ "accounts": { "passwordIterations": 4096 } }"#.utf8).write(to: config)
        return (directory, config)
    }

    @Test func adminSubcommandsManageAccountsFromStandardInput() async throws {
        let (directory, config) = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let data = ["--config", config.path, "--data-dir", directory.path]

        let created = try ServerProcess.run(["account", "create", "alice"] + data, input: "first-password\n")
        #expect(created.status == 0, "\(created.errors)")
        #expect(created.output.contains("created account alice"))
        let duplicate = try ServerProcess.run(["account", "create", "ALICE"] + data, input: "other-password\n")
        #expect(duplicate.status != 0)
        #expect(duplicate.errors.contains("already exists"))
        let badName = try ServerProcess.run(["account", "create", "no spaces"] + data, input: "whatever-password\n")
        #expect(badName.status != 0)
        #expect(badName.errors.contains("not a valid nick"))
        #expect(!badName.errors.contains("Fatal error"), "a clear message, not a crash")

        let listed = try ServerProcess.run(["account", "list"] + data)
        #expect(listed.output.contains("alice\tcreated "))
        #expect(listed.output.contains("last seen never"))
        #expect(listed.output.contains("1 account(s)"))

        let reset = try ServerProcess.run(["account", "reset-password", "alice"] + data, input: "second-password\n")
        #expect(reset.status == 0, "\(reset.errors)")
        let missing = try ServerProcess.run(["account", "reset-password", "nobody"] + data, input: "second-password\n")
        #expect(missing.status != 0)
        #expect(missing.errors.contains("no account named nobody"))

        // The server loads the accounts: the old password is refused, the new one works.
        let server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let refused = try await TestClient.connect(port: server.ports[0])
        refused.send("PASS :alice:first-password")
        refused.send("NICK alice")
        refused.send("USER alice 0 * :Alice")
        try await refused.expect(numeric: "464")
        let accepted = try await TestClient.registered("alice", port: server.ports[1], host: "::1", password: "second-password")
        accepted.send("WHOIS alice")
        let loggedIn = try await accepted.expect(numeric: "330")
        #expect(loggedIn.parameters[2] == "alice")
        await accepted.close()
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: .seconds(5)) == 0)

        // Last seen was recorded when alice's connection closed.
        let relisted = try ServerProcess.run(["account", "list"] + data)
        #expect(!relisted.output.contains("last seen never"), "\(relisted.output)")
    }

    @Test(arguments: [SIGTERM, SIGINT])
    func signalsShutTheServerDownCleanly(signal: Int32) async throws {
        let (directory, config) = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let alice = try await TestClient.registered("alice", port: server.ports[0])
        let bob = try await TestClient.registered("bob", port: server.ports[1], host: "::1")
        alice.send("PRIVMSG bob :before the shutdown")
        try await bob.expect(command: "PRIVMSG")

        let started = ContinuousClock.now
        server.signal(signal)
        for client in [alice, bob] {
            let lines = try await client.expectClosed(timeout: .seconds(5))
            #expect(lines.contains { $0.hasPrefix("ERROR :") && $0.contains("shutting down") }, "clients are told why: \(lines)")
        }
        let status = try await server.waitForExit(timeout: .seconds(5))
        #expect(status == 0, "exit status 0 after a signal; log:\n\(server.logText)")
        #expect(ContinuousClock.now - started < .seconds(4), "within a couple of seconds")
        // Nothing listens afterwards.
        await #expect(throws: (any Error).self) { _ = try await TestClient.connect(port: server.ports[0]) }
    }
}
