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

    @Test func anEchoedMessageSurvivesSIGKILLAndIsDeliveredExactlyOnce() async throws {
        let (directory, config) = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let data = ["--config", config.path, "--data-dir", directory.path]
        for (name, password) in [("alice", "alice-password"), ("bob", "bob-password"), ("carol", "carol-password")] {
            #expect(try ServerProcess.run(["account", "create", name] + data, input: password + "\n").status == 0)
        }
        var server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let alice = try await TestClient.registered("alice", port: server.ports[0], caps: ["echo-message", "message-tags"], password: "alice-password")
        let carol = try await TestClient.registered("carol", port: server.ports[1], host: "::1", password: "carol-password")
        alice.send("JOIN #durable")
        try await alice.expect(numeric: "366")
        alice.send("INVITE bob #durable")
        alice.send("INVITE carol #durable")
        try await carol.expect(numeric: "366")

        // Mid-conversation: carol is online, bob is not. Every echo means "stored".
        var ids: [String] = []
        for number in 1...20 {
            let target = number.isMultiple(of: 2) ? "#durable" : "bob"
            alice.send("PRIVMSG \(target) :message \(number)")
            let echo = try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "message \(number)" }
            ids.append(try #require(echo.tagValue("msgid")))
        }
        server.signal(SIGKILL)
        _ = try await server.waitForExit(timeout: .seconds(5))
        await alice.close(); await carol.close()

        server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let bob = try await TestClient.registered("bob", port: server.ports[0], caps: ["message-tags", "batch", "server-time"], password: "bob-password")
        let lines = try await bob.settle()
        let replayed = lines.compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "PRIVMSG" }
        // One batch per conversation (the direct ones first: message 1 was direct), in order.
        let order = Array(stride(from: 1, through: 19, by: 2)) + Array(stride(from: 2, through: 20, by: 2))
        #expect(replayed.map { $0.parameters.last ?? "" } == order.map { "message \($0)" }, "all of them, in order, once")
        #expect(replayed.map { $0.tagValue("msgid") ?? "" } == order.map { ids[$0 - 1] })
        // carol got the group's messages live before the kill; they are not replayed to her.
        let carolAgain = try await TestClient.registered("carol", port: server.ports[0], password: "carol-password")
        #expect(!(try await carolAgain.settle()).contains { (try? IRCMessage(parsing: $0))?.command == "PRIVMSG" })
        await bob.close(); await carolAgain.close()
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: .seconds(5)) == 0)
    }

    @Test func aBurstCutShortBySIGTERMKeepsEveryMessageItEchoed() async throws {
        let (directory, config) = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // No flood control: the whole burst reaches the domain as fast as it is read.
        try Data(#"{ "accounts": { "passwordIterations": 4096 }, "limits": { "floodCommandsPerSecond": 0 } }"#.utf8).write(to: config)
        let data = ["--config", config.path, "--data-dir", directory.path]
        for (name, password) in [("alice", "alice-password"), ("bob", "bob-password")] {
            #expect(try ServerProcess.run(["account", "create", name] + data, input: password + "\n").status == 0)
        }
        var server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let alice = try await TestClient.registered("alice", port: server.ports[0], caps: ["echo-message"], password: "alice-password")
        // Bob is offline. The burst is one write; the signal follows at once, while the server
        // is still storing it: whatever it has echoed must survive the shutdown.
        alice.sendRaw(Array((1...2000).map { "PRIVMSG bob :burst \($0)\r\n" }.joined().utf8))
        _ = try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "burst 1" }
        server.signal(SIGTERM)
        let closing = try await alice.expectClosed(timeout: .seconds(10))
        #expect(try await server.waitForExit(timeout: .seconds(10)) == 0, "log:\n\(server.logText)")
        let echoed = 1 + closing.compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "PRIVMSG" }.count

        server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let bob = try await TestClient.registered("bob", port: server.ports[0], caps: ["batch", "server-time"], password: "bob-password")
        let lines = try await bob.settle()
        let replayed = lines.compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "PRIVMSG" }.map { $0.parameters.last ?? "" }
        #expect(Array(replayed.prefix(echoed)) == (1...echoed).map { "burst \($0)" }, "every echoed message, in order, once")
        #expect(replayed.count >= echoed && replayed.count <= 2000)
        await bob.close()
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: .seconds(5)) == 0)
    }

    @Test func theClientExplainsBadInputInOneLineAndExitsNonZero() async throws {
        let (directory, config) = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        #expect(try ServerProcess.run(["account", "create", "alice", "--config", config.path, "--data-dir", directory.path], input: "alice-password\n").status == 0)
        let server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let secret = ["PARLEY_PASSWORD": "wrong-password"]

        let refused = try ServerProcess.run(["--batch", "--server", "127.0.0.1:1", "--user", "alice"], executable: "parley", environment: secret)
        #expect(refused.status == 2)
        #expect(refused.output.split(separator: "\n").count == 1)
        #expect(refused.output.contains("connection refused. Is parley-server running there?"))

        let wrongPassword = try ServerProcess.run(["--batch", "--server", "127.0.0.1:\(server.ports[0])", "--user", "alice"], executable: "parley", environment: secret)
        #expect(wrongPassword.status == 1)
        #expect(wrongPassword.output.contains(#""type":"login-failed""#))

        let badFlag = try ServerProcess.run(["--batch", "--server", "not:a:host", "--user", "alice"], executable: "parley", environment: secret)
        #expect(badFlag.status != 0)
        #expect(badFlag.errors.contains("--server not:a:host is not HOST, HOST:PORT or [IPV6]:PORT"))
        #expect(!badFlag.errors.contains("Fatal error") && !refused.errors.contains("Fatal error"), "no stack traces")

        // And the right password over IPv6 works, with the outcome of a piped command.
        let good = try ServerProcess.run(["--batch", "--server", "[::1]:\(server.ports[1])", "--user", "alice"], input: "/msg alice note to self\n",
                                         executable: "parley", environment: ["PARLEY_PASSWORD": "alice-password"])
        #expect(good.status == 0)
        #expect(good.output.contains(#""state":"sent""#), "\(good.output)")
        server.signal(SIGTERM)
        _ = try await server.waitForExit(timeout: .seconds(5))
    }

    @Test func metricsListenServesPrometheusOnItsOwnPortAndABadValueIsRefused() async throws {
        let (directory, config) = try Self.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let refused = try ServerProcess.run(["serve", "--config", config.path, "--data-dir", directory.path, "--metrics-listen", "everywhere"])
        #expect(refused.status != 0)
        #expect(refused.errors.contains("invalid metrics listener everywhere: use web, off, ADDRESS:PORT"), "\(refused.errors)")
        #expect(!refused.errors.contains("Fatal error"))

        let server = try await ServerProcess(dataDirectory: directory, configFile: config, arguments: ["--metrics-listen", "127.0.0.1:0"])
        let client = try await TestClient.registered("counted", port: server.ports[0])
        let port = try #require(server.metricsPort, "no metrics listener in the log:\n\(server.logText)")
        let answer = try await HTTPFetch.get("/metrics", port: port)
        #expect(answer.status == 200)
        let metrics = try PrometheusText(parsing: answer.text)
        #expect(metrics["parley_connections_open", ["transport": "tcp"]] == 1)
        await client.close()
        server.signal(SIGTERM)
        #expect(try await server.waitForExit(timeout: .seconds(10)) == 0)
    }
}
