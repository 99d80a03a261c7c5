import Foundation
import IRCWire
import ParleyCore
import Testing

/// History belongs to identities, not to names: whoever takes a nick or a group name later reads
/// nothing of what its earlier holder said. Over real sockets and a real SQLite file.
@Suite("History bound to identities")
struct IdentityTests {
    static let modern = DeliveryIntegrationTests.modern

    /// The PRIVMSG texts of one CHATHISTORY reply: the lines inside its `chathistory` batch, up
    /// to the batch's end (the reply is complete when the batch closes; no waiting on time).
    static func history(_ client: TestClient, _ request: String) async throws -> [String] {
        client.send(request)
        let start = try await client.expect { $0.command == "BATCH" && $0.parameters.first?.hasPrefix("+") == true }
        let reference = String(start.parameters[0].dropFirst())
        var texts: [String] = []
        while true {
            let line = try await client.expect { $0.tagValue("batch") == reference || ($0.command == "BATCH" && $0.parameters.first == "-" + reference) }
            if line.command == "BATCH" { return texts }
            if line.command == "PRIVMSG" { texts.append(line.parameters.last ?? "") }
        }
    }

    /// Registers an account for the nick the client holds now.
    static func registerAccount(_ client: TestClient, password: String) async throws {
        client.send("REGISTER * \(password)")
        let success = try await client.expect(command: "REGISTER")
        #expect(success.parameters.first == "SUCCESS")
    }

    @Test func aGuestsConversationIsNotInheritedByTheNextHolderOfTheNick() async throws {
        let server = try await TestServer()
        try await AccountTests.createAccount("alice", password: "alice-password", port: server.ipv4Port)
        let alice = try await GroupIntegrationTests.login("alice", server, caps: Self.modern)
        let guest = try await TestClient.registered("zed", port: server.ipv4Port)
        guest.send("PRIVMSG alice :from the guest zed")
        try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "from the guest zed" }
        alice.send("PRIVMSG zed :to the guest zed")
        try await guest.expect { $0.command == "PRIVMSG" && $0.parameters.last == "to the guest zed" }
        // While the guest is connected, alice reads her conversation with it.
        #expect(try await Self.history(alice, "CHATHISTORY LATEST zed * 10") == ["from the guest zed", "to the guest zed"])
        guest.send("QUIT :bye")
        _ = try await guest.expectClosed()

        // Someone else takes the nick and registers the account zed.
        let heir = try await TestClient.registered("zed", port: server.ipv6Port, host: "::1", caps: Self.modern + ["draft/account-registration"])
        try await Self.registerAccount(heir, password: "zed-password")
        #expect(try await Self.history(heir, "CHATHISTORY LATEST alice * 100").isEmpty)
        #expect(try await Self.history(alice, "CHATHISTORY LATEST zed * 100").isEmpty, "zed now names the account, a different party")
        heir.send("QUIT :bye")
        _ = try await heir.expectClosed()

        // After a restart, logging in as the new account replays nothing of the guest's past.
        try await server.restart()
        let again = try await TestClient.registered("zed", port: server.ipv4Port, caps: Self.modern, password: "zed-password")
        #expect(try await Self.history(again, "CHATHISTORY LATEST alice * 100").isEmpty)
        again.send("PING :done")
        let afterLogin = try await again.expect { $0.command == "PONG" }
        #expect(afterLogin.parameters.last == "done")
        #expect(!again.drain().contains { $0.contains("guest zed") }, "no replay of the guest's conversation")
        for client in [alice, again] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func aDeletedGroupsHistoryStaysDeletedWhoeverTakesItsName() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        let alice = try await GroupIntegrationTests.login("alice", server, caps: Self.modern)
        let bob = try await GroupIntegrationTests.login("bob", server, caps: Self.modern)
        let carol = try await GroupIntegrationTests.login("carol", server, caps: Self.modern)
        alice.send("JOIN #team")
        try await alice.expect(numeric: "366")
        alice.send("PRIVMSG #team :old team secret")
        try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "old team secret" }
        #expect(try await Self.history(alice, "CHATHISTORY LATEST #team * 10") == ["old team secret"])
        alice.send("PRIVMSG ChanServ :DROP #team")
        try await alice.expect { $0.command == "NOTICE" && $0.parameters.last?.contains("deleted") == true }

        // carol renames her own group to the freed name: she keeps her messages, and gets none of
        // the old group's.
        carol.send("JOIN #crew")
        try await carol.expect(numeric: "366")
        carol.send("PRIVMSG #crew :crew business")
        try await carol.expect { $0.command == "PRIVMSG" && $0.parameters.last == "crew business" }
        carol.send("RENAME #crew #team :new name")
        try await carol.expect { $0.command == "JOIN" && $0.parameters.first == "#team" }
        #expect(try await Self.history(carol, "CHATHISTORY LATEST #team * 100") == ["crew business"])
        try await server.restart()
        let carolAgain = try await GroupIntegrationTests.login("carol", server, caps: Self.modern)
        #expect(try await Self.history(carolAgain, "CHATHISTORY LATEST #team * 100") == ["crew business"])

        // carol deletes it too; bob creates #team by JOIN and starts empty.
        carolAgain.send("PRIVMSG ChanServ :DROP #team")
        try await carolAgain.expect { $0.command == "NOTICE" && $0.parameters.last?.contains("deleted") == true }
        let bobAgain = try await GroupIntegrationTests.login("bob", server, caps: Self.modern)
        bobAgain.send("JOIN #team")
        try await bobAgain.expect(numeric: "366")
        #expect(try await Self.history(bobAgain, "CHATHISTORY LATEST #team * 100").isEmpty)
        #expect(try await Self.history(bobAgain, "CHATHISTORY AFTER #team timestamp=2000-01-01T00:00:00.000Z 100").isEmpty)
        for client in [alice, bob, carol, carolAgain, bobAgain] { await client.close() }
        try await server.shutdownAndRemove()
    }
}
