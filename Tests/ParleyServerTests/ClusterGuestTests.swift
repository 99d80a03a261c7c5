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
        for node in [n1, n2] { node.signal(SIGTERM) }
        for node in [n1, n2] { #expect(try await node.waitForExit(timeout: .seconds(15)) == 0, "\(node.logText)") }
        try await drop()
    }
}
