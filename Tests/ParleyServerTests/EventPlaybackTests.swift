import Foundation
import IRCWire
import Testing

/// IRCv3 `draft/event-playback` over real sockets: CHATHISTORY replays TOPIC changes and TAGMSG
/// to clients that asked for it, and only messages to the others.
@Suite("IRCv3 event playback")
struct EventPlaybackTests {
    static let plain = ["message-tags", "echo-message", "batch", "server-time", "draft/chathistory"]
    static let events = plain + ["draft/event-playback"]

    func history(_ client: TestClient, _ target: String) async throws -> [IRCMessage] {
        client.send("CHATHISTORY LATEST \(target) * 20")
        let lines = try await client.lines(through: { $0.command == "BATCH" && $0.parameters.first?.hasPrefix("-") == true }, "history batch")
        // What the batch holds (earlier lines, such as a JOIN, are not history).
        return lines.filter { $0.command != "BATCH" && $0.tagValue("batch") != nil }
    }

    @Test func aChannelsTopicChangesAndTagMessagesAreReplayedOnlyWithEventPlayback() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: Self.events)
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, caps: Self.plain)
        for client in [alice, bob] {
            client.send("JOIN #chan")
            try await client.skip(through: { $0.command == "366" }, "end of names")
        }
        alice.send("TOPIC #chan :the topic")
        let topic = try await alice.expect(command: "TOPIC")
        let topicID = try #require(topic.tagValue("msgid"))
        #expect(try await bob.expect(command: "TOPIC").tagValue("msgid") == topicID)
        alice.send("PRIVMSG #chan :hello")
        let messageID = try #require(try await alice.expect(command: "PRIVMSG").tagValue("msgid"))
        alice.send("@+typing=active TAGMSG #chan")
        try await alice.expect { $0.command == "TAGMSG" && $0.tagValue("+typing") == "active" }
        alice.send("@+draft/react=ok TAGMSG #chan")
        let tagID = try #require(try await alice.expect(command: "TAGMSG").tagValue("msgid"))

        let replayed = try await history(alice, "#chan")
        #expect(replayed.map(\.command) == ["TOPIC", "PRIVMSG", "TAGMSG"])
        #expect(replayed.map { $0.tagValue("msgid") } == [topicID, messageID, tagID])
        #expect(replayed[0].parameters == ["#chan", "the topic"] && replayed[0].tagValue("time") == topic.tagValue("time"))
        #expect(replayed[2].parameters == ["#chan"] && replayed[2].tagValue("+draft/react") == "ok")
        #expect(try await history(bob, "#chan").map(\.command) == ["PRIVMSG"])
        try await server.shutdownAndRemove()
    }

    /// Typing notifications are never kept; other tag messages (reactions) are.
    @Test func tagMessagesToGroupsAndAccountsAreStoredForHistoryOnly() async throws {
        let server = try await TestServer()
        try await AccountTests.createAccount("alice", password: "alice-password", port: server.ipv4Port)
        try await AccountTests.createAccount("bob", password: "bob-password", port: server.ipv4Port)
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: Self.events, password: "alice-password")
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, caps: Self.plain, password: "bob-password")
        alice.send("JOIN #grp")
        try await alice.skip(through: { $0.command == "366" }, "end of names")
        alice.send("MODE #grp -i")
        try await alice.expect(command: "MODE")
        bob.send("JOIN #grp")
        try await bob.skip(through: { $0.command == "366" }, "end of names")

        alice.send("@+draft/react=yes TAGMSG #grp")
        let groupTag = try #require(try await alice.expect(command: "TAGMSG").tagValue("msgid"))
        #expect(try await bob.expect(command: "TAGMSG").tagValue("+draft/react") == "yes")
        alice.send("@+typing=active TAGMSG bob")
        try await bob.expect { $0.command == "TAGMSG" && $0.tagValue("+typing") == "active" }
        alice.send("@+draft/react=no TAGMSG bob")
        let directTag = try #require(try await alice.expect { $0.command == "TAGMSG" && $0.tagValue("+draft/react") == "no" }.tagValue("msgid"))
        #expect(try await bob.expect { $0.command == "TAGMSG" && $0.parameters == ["bob"] }.tagValue("+draft/react") == "no")
        await alice.close()
        await bob.close()

        // Kept on disk across a restart, never waiting for anyone as a message would.
        try await server.restart()
        let back = try await TestClient.registered("alice", port: server.ipv4Port, caps: Self.events, password: "alice-password")
        let inGroup = try await history(back, "#grp")
        #expect(inGroup.map(\.command) == ["TAGMSG"] && inGroup.first?.tagValue("msgid") == groupTag)
        #expect(inGroup.first?.tagValue("+draft/react") == "yes")
        let direct = try await history(back, "bob")
        #expect(direct.map(\.command) == ["TAGMSG"] && direct.first?.tagValue("msgid") == directTag)
        #expect(direct.first?.parameters == ["bob"])
        let bobAgain = try await TestClient.registered("bob", port: server.ipv4Port, caps: Self.plain, password: "bob-password")
        #expect(try await history(bobAgain, "alice").isEmpty, "no TAGMSG without event-playback, and none waited as missed")
        try await server.shutdownAndRemove()
    }
}
