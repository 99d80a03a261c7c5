import Foundation
import IRCWire
import Testing

/// IRCv3 message redaction (`draft/message-redaction`) over real sockets.
@Suite("IRCv3 message redaction")
struct RedactionTests {
    static let caps = ["message-tags", "echo-message", "batch", "server-time", "draft/chathistory", "draft/message-redaction"]

    func endOfBatch(_ message: IRCMessage) -> Bool { message.command == "BATCH" && message.parameters.first?.hasPrefix("-") == true }

    @Test func authorsAndOperatorsRedactChannelMessagesWhichLeaveHistory() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: Self.caps)
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, caps: Self.caps)
        let carol = try await TestClient.registered("carol", port: server.ipv4Port, caps: ["message-tags"])
        for client in [alice, bob, carol] {
            client.send("JOIN #chan")
            try await client.skip(through: { $0.command == "366" }, "end of names")
        }
        _ = alice.drain(); _ = bob.drain()

        bob.send("PRIVMSG #chan :first from bob")
        let bobsID = try #require(try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == "first from bob" }.tagValue("msgid"))
        alice.send("PRIVMSG #chan :from alice")
        let alicesID = try #require(try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "from alice" }.tagValue("msgid"))
        try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == "from alice" }

        // bob is no operator: alice's message is not his to redact.
        bob.send("REDACT #chan \(alicesID)")
        #expect(try await bob.expect(command: "FAIL").parameters.prefix(4) == ["REDACT", "REDACT_FORBIDDEN", "#chan", alicesID])
        bob.send("REDACT #chan unknown-id")
        #expect(try await bob.expect(command: "FAIL").parameters.prefix(4) == ["REDACT", "UNKNOWN_MSGID", "#chan", "unknown-id"])
        bob.send("REDACT #elsewhere \(bobsID)")
        #expect(try await bob.expect(command: "FAIL").parameters.prefix(3) == ["REDACT", "INVALID_TARGET", "#elsewhere"])

        // The channel operator redacts bob's message: everyone with the capability hears it.
        alice.send("REDACT #chan \(bobsID) :off topic")
        for client in [alice, bob] {
            let redact = try await client.expect(command: "REDACT")
            #expect(redact.parameters == ["#chan", bobsID, "off topic"])
            #expect(redact.source?.hasPrefix("alice!") == true)
        }
        bob.send("CHATHISTORY LATEST #chan * 10")
        let history = try await bob.lines(through: endOfBatch, "history batch")
        #expect(history.filter { $0.command == "PRIVMSG" }.map { $0.parameters.last } == ["from alice"])
        // carol has no redaction capability: she hears nothing of it.
        carol.send("PING :end")
        let carols = try await carol.lines(through: { $0.command == "PONG" }, "PONG")
        #expect(!carols.contains { $0.command == "REDACT" })
        try await server.shutdownAndRemove()
    }

    @Test func aRedactedDirectMessageIsDeletedFromStorage() async throws {
        let server = try await TestServer()
        try await AccountTests.createAccount("alice", password: "alice-password", port: server.ipv4Port)
        try await AccountTests.createAccount("bob", password: "bob-password", port: server.ipv4Port)
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: Self.caps, password: "alice-password")
        alice.send("PRIVMSG bob :kept")
        try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "kept" }
        alice.send("PRIVMSG bob :taken back")
        let id = try #require(try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "taken back" }.tagValue("msgid"))
        alice.send("REDACT bob \(id)")
        #expect(try await alice.expect(command: "REDACT").parameters == ["bob", id])

        // After a restart on the same database, bob's inbox and history hold only the other one.
        await alice.close()
        try await server.restart()
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, caps: Self.caps, password: "bob-password")
        bob.send("CHATHISTORY LATEST alice * 10")
        let history = try await bob.lines(through: endOfBatch, "history batch")
        #expect(history.filter { $0.command == "PRIVMSG" }.map { $0.parameters.last } == ["kept"])
        try await server.shutdownAndRemove()
    }
}
