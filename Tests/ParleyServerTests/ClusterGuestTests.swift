import Foundation
import IRCWire
import PostgresTestSupport
import Testing

/// Guests and their transient channels across nodes: what an account reads of a conversation
/// with a guest, and what a channel's members read of its recent history, is the same whichever
/// node they ask. (In the serialized suite of `ClusterProcessTests`: these start several nodes too.)
extension ClusterProcessTests {
    /// One CHATHISTORY request's batch: the lines in it (others received meanwhile are left out).
    static func history(_ request: String, from client: TestClient) async throws -> [IRCMessage] {
        client.send(request)
        let lines = try await client.lines(through: { $0.command == "BATCH" && $0.parameters.first?.hasPrefix("-") == true }, "history batch",
                                           timeout: .seconds(10))
        return lines.filter { $0.tagValue("batch") != nil }
    }

    /// Asks `request` until its answer holds `count` lines of `commands` (each node commits what
    /// its users send on its own, a moment after relaying it), within 10 seconds; the last answer.
    static func history(_ request: String, from client: TestClient, until count: Int, of commands: Set<String> = ["PRIVMSG"]) async throws -> [IRCMessage] {
        let deadline = ContinuousClock.now + .seconds(10)
        while true {
            let found = try await history(request, from: client).filter { commands.contains($0.command) }
            if found.count >= count || ContinuousClock.now >= deadline { return found }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    @Test func aConversationWithAGuestOnAnotherNodeReadsTheSameOnEveryNode() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")

        let alice = try await TestClient.registered("alice", port: n1.ports[0], caps: Self.caps, password: "alice-password")
        let gus = try await TestClient.registered("gus", port: n2.ports[0], caps: Self.caps)
        try await Self.waitUntilOnline("gus", seenBy: alice)
        try await Self.waitUntilOnline("alice", seenBy: gus)
        alice.send("PRIVMSG gus :hello gus")
        try await gus.expect(timeout: .seconds(10), "alice's message") { $0.command == "PRIVMSG" && $0.parameters.last == "hello gus" }
        gus.send("PRIVMSG alice :hello alice")
        let reply = try await alice.expect(timeout: .seconds(10), "gus's reply") { $0.command == "PRIVMSG" && $0.parameters.last == "hello alice" }
        let replyTime = try #require(reply.tagValue("time"))

        // alice reads the conversation on n1, where she sent her part, and on n2, where gus sent
        // his: both halves, in order, with gus named, on both.
        let alicesPhone = try await TestClient.registered("alice", port: n2.ports[0], caps: Self.caps, password: "alice-password")
        for reader in [alice, alicesPhone] {
            let conversation = try await Self.history("CHATHISTORY LATEST gus * 10", from: reader, until: 2)
            #expect(conversation.map { $0.parameters.last } == ["hello gus", "hello alice"], "\(conversation)")
            #expect(conversation.map { $0.source?.description.split(separator: "!").first.map(String.init) } == ["alice", "gus"], "\(conversation)")
            #expect(conversation.first?.parameters.first == "gus", "\(conversation)")
            let targets = try await Self.history("CHATHISTORY TARGETS timestamp=2000-01-01T00:00:00.000Z timestamp=2100-01-01T00:00:00.000Z 10",
                                                 from: reader).filter { $0.command == "CHATHISTORY" }
            #expect(targets.map { $0.parameters } == [["TARGETS", "gus", "timestamp=\(replyTime)"]], "one conversation, ending with gus's reply: \(targets)")
        }

        for client in [alice, alicesPhone, gus] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }
}

extension ClusterProcessTests {
    static let playbackCaps = caps + ["draft/chathistory", "draft/event-playback", "draft/message-redaction"]

    @Test func aTransientChannelsRecentHistoryReadsTheSameOnEveryNode() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: [])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")
        let n3 = try await cluster.start("n3")

        // Guests' channel, so transient: its recent history is kept in memory only.
        let gus = try await TestClient.registered("gus", port: n1.ports[0], caps: Self.playbackCaps)
        let bea = try await TestClient.registered("bea", port: n2.ports[0], caps: Self.playbackCaps)
        gus.send("JOIN #chat")
        try await gus.expect { $0.command == "JOIN" }
        try await Self.waitUntilChannelExists("#chat", seenBy: bea)
        bea.send("JOIN #chat")
        try await gus.expect(timeout: .seconds(10), "bea joined") { $0.command == "JOIN" && $0.source?.description.hasPrefix("bea!") == true }

        // Turns, each seen by the other before the next: messages and a TOPIC change from both nodes.
        var live: [(command: String, text: String, msgid: String)] = []
        for (speaker, listener, line, text) in [(gus, bea, "PRIVMSG #chat :one", "one"), (bea, gus, "PRIVMSG #chat :two", "two"),
                                                (gus, bea, "TOPIC #chat :the plan", "the plan"), (bea, gus, "PRIVMSG #chat :three", "three")] {
            let command = String(line.prefix { $0 != " " })
            speaker.send(line)
            let heard = try await listener.expect(timeout: .seconds(10), text) { $0.command == command && $0.parameters.last == text }
            let echo = try await speaker.expect(timeout: .seconds(10), "\(text) echoed") { $0.command == command && $0.parameters.last == text }
            #expect(echo.tagValue("msgid") == heard.tagValue("msgid"), "one id for one event: \(echo) \(heard)")
            live.append((command, text, try #require(heard.tagValue("msgid"))))
        }

        // Both members read what they saw live, in that order, with the same ids; so does someone
        // who joins later on a third node (with draft/event-playback, and without: messages only).
        let cleo = try await TestClient.registered("cleo", port: n3.ports[0], caps: Self.playbackCaps)
        let dan = try await TestClient.registered("dan", port: n3.ports[0], caps: Self.caps + ["draft/chathistory"])
        for late in [cleo, dan] {
            late.send("JOIN #chat")
            try await late.expect { $0.command == "JOIN" }
        }
        // bea's node decides who gets her REDACT below: it must have heard of both joins.
        for late in ["cleo", "dan"] {
            try await bea.expect(timeout: .seconds(10), "\(late) joined, seen on n2") { $0.command == "JOIN" && $0.source?.description.hasPrefix(late + "!") == true }
        }
        func read(_ reader: TestClient) async throws -> [String] {
            try await Self.history("CHATHISTORY LATEST #chat * 10", from: reader)
                .filter { $0.command == "PRIVMSG" || $0.command == "TOPIC" }
                .map { "\($0.command) \($0.parameters.last ?? "") \($0.tagValue("msgid") ?? "-")" }
        }
        let everything = live.map { "\($0.command) \($0.text) \($0.msgid)" }
        for reader in [gus, bea, cleo] {
            let read = try await read(reader)
            #expect(read == everything, "\(read)")
        }
        let messagesOnly = try await read(dan)
        #expect(messagesOnly == everything.filter { $0.hasPrefix("PRIVMSG") }, "\(messagesOnly)")

        // bea takes "two" back (on n2): nobody reads it any more, on any node.
        bea.send("REDACT #chat \(live[1].msgid)")
        for client in [gus, bea, cleo] {
            let redact = try await client.expect(timeout: .seconds(10), "the REDACT") { $0.command == "REDACT" }
            #expect(redact.parameters == ["#chat", live[1].msgid], "\(redact)")
        }
        let afterRedaction = everything.enumerated().filter { $0.offset != 1 }.map(\.element)
        for reader in [gus, bea, cleo] {
            let read = try await read(reader)
            #expect(read == afterRedaction, "\(read)")
        }

        // A node started now learns the history from the nodes with members (each message once,
        // the redacted one left out), and the channel's modes: someone joining there needs the
        // key the channel asks for, then reads the same.
        gus.send("MODE #chat +k sesame")
        for member in [gus, bea] { try await member.expect(timeout: .seconds(10), "+k") { $0.command == "MODE" && $0.parameters.last == "sesame" } }
        let n4 = try await cluster.start("n4")
        let eve = try await TestClient.registered("eve", port: n4.ports[0], caps: Self.playbackCaps)
        try await Self.waitUntilChannelExists("#chat", seenBy: eve)
        eve.send("JOIN #chat")
        let refusal = try await eve.expect(timeout: .seconds(10), "JOIN refused or accepted") { $0.command == "475" || $0.command == "JOIN" }
        #expect(refusal.command == "475", "a key on the new node too: \(refusal)")
        eve.send("JOIN #chat sesame")
        try await eve.expect(timeout: .seconds(10), "eve's JOIN") { $0.command == "JOIN" }
        let deadline = ContinuousClock.now + .seconds(10)
        var evesRead = try await read(eve)
        while evesRead.count < afterRedaction.count && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            evesRead = try await read(eve)
        }
        #expect(evesRead == afterRedaction, "\(evesRead)")

        for client in [gus, bea, cleo, dan, eve] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2, n3, n4])
        try await drop()
    }
}
