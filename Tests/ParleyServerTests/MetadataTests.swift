import Foundation
import IRCWire
import Testing

/// IRCv3 metadata (`draft/metadata-3`) over real sockets: users set their own keys, channel
/// operators their channel's, and subscribers hear changes in the channels they share.
@Suite("IRCv3 metadata")
struct MetadataTests {
    static let caps = ["draft/metadata-3", "batch"]

    /// Sends a PING and returns every line received before its PONG (what the server sent in
    /// answer to everything before it).
    func linesBeforePong(_ client: TestClient, _ token: String) async throws -> [IRCMessage] {
        client.send("PING :\(token)")
        return try await client.lines(through: { $0.command == "PONG" && $0.parameters.last == token }, "PONG \(token)").dropLast()
    }

    @Test func usersAndOperatorsSetMetadataAndSubscribersHearOfIt() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: Self.caps)
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, caps: Self.caps)

        bob.send("METADATA * SUB display-name")
        let subscribed = try await bob.expect(numeric: "770")
        #expect(subscribed.parameters == ["bob", "display-name"])
        alice.send("JOIN #chan")
        try await alice.skip(through: { $0.command == "366" }, "end of names")
        bob.send("JOIN #chan")
        try await bob.skip(through: { $0.command == "366" }, "end of names")
        _ = alice.drain()

        alice.send("METADATA * SET display-name :Alice A.")
        #expect(try await alice.expect(numeric: "761").parameters == ["alice", "alice", "display-name", "*", "Alice A."])
        #expect(try await bob.expect(numeric: "761").parameters == ["bob", "alice", "display-name", "*", "Alice A."])

        // GET answers every key in order, in a metadata batch.
        bob.send("METADATA alice GET display-name avatar")
        let batch = try await bob.lines(through: { $0.command == "BATCH" && $0.parameters.first?.hasPrefix("-") == true }, "end of batch")
        #expect(batch.map(\.command) == ["BATCH", "761", "766", "BATCH"])
        #expect(Array(batch[0].parameters.dropFirst()) == ["metadata", "alice"])
        #expect(batch[2].parameters == ["bob", "alice", "avatar", "key not set"])

        // Nobody changes another user's metadata, and only operators a channel's.
        bob.send("METADATA alice SET display-name :Not Alice")
        #expect(try await bob.expect(command: "FAIL").parameters.prefix(4) == ["METADATA", "KEY_NO_PERMISSION", "alice", "display-name"])
        bob.send("METADATA #chan SET url :https://example.org/bob")
        #expect(try await bob.expect(command: "FAIL").parameters.prefix(4) == ["METADATA", "KEY_NO_PERMISSION", "#chan", "url"])
        alice.send("METADATA #chan SET url :https://example.org/")
        #expect(try await alice.expect(numeric: "761").parameters == ["alice", "#chan", "url", "*", "https://example.org/"])
        bob.send("METADATA #chan LIST")
        let list = try await bob.lines(through: { $0.command == "BATCH" && $0.parameters.first?.hasPrefix("-") == true }, "end of batch")
        #expect(list.filter { $0.command == "761" }.map(\.parameters) == [["bob", "#chan", "url", "*", "https://example.org/"]])

        // Values are bounded; a refused value changes nothing.
        alice.send("METADATA * SET display-name :\(String(repeating: "x", count: 301))")
        #expect(try await alice.expect(command: "FAIL").parameters.prefix(3) == ["METADATA", "INVALID_VALUE", "display-name"])

        bob.send("WHOIS alice")
        #expect(try await bob.expect(numeric: "760").parameters == ["bob", "alice", "display-name", "*", "Alice A."])
        try await bob.skip(through: { $0.command == "318" }, "end of WHOIS")

        // Someone subscribed who joins later hears the members' values with the join.
        let carol = try await TestClient.registered("carol", port: server.ipv4Port, caps: Self.caps)
        carol.send("METADATA * SUB display-name url")
        try await carol.expect(numeric: "770")
        carol.send("JOIN #chan")
        let joined = try await linesBeforePong(carol, "joined")
        #expect(try await bob.expect(command: "JOIN").source?.hasPrefix("carol!") == true)
        #expect(Set(joined.filter { $0.command == "761" }.map { $0.parameters.dropFirst().prefix(2) }) == [["#chan", "url"], ["alice", "display-name"]])

        // Removing a key: the setter gets RPL_KEYNOTSET, and so do subscribers.
        alice.send("METADATA * SET display-name")
        #expect(try await alice.expect(numeric: "766").parameters.prefix(3) == ["alice", "alice", "display-name"])
        #expect(try await bob.expect(numeric: "766").parameters.prefix(3) == ["bob", "alice", "display-name"])
        #expect(try await carol.expect(numeric: "766").parameters.prefix(3) == ["carol", "alice", "display-name"])
        // bob is not subscribed to url, and the refused SETs reached nobody.
        #expect(try await linesBeforePong(bob, "end").map(\.command) == [])
        try await server.shutdownAndRemove()
    }

    @Test func aClosedChannelShowsOutsidersNoMetadata() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: Self.caps)
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, caps: Self.caps)
        alice.send("JOIN #secret")
        try await alice.skip(through: { $0.command == "366" }, "end of names")
        alice.send("METADATA #secret SET topic-url :https://example.org/hidden")
        try await alice.expect(numeric: "761")
        alice.send("MODE #secret +i")
        try await alice.expect(command: "MODE")
        for subcommand in ["GET topic-url", "LIST", "SYNC"] {
            bob.send("METADATA #secret \(subcommand)")
            let replies = try await linesBeforePong(bob, subcommand.prefix(3).lowercased())
            #expect(replies.map(\.command) == ["FAIL"])
            #expect(replies.first?.parameters.prefix(2) == ["METADATA", "KEY_NO_PERMISSION"])
        }
        bob.send("METADATA nobody LIST")
        #expect(try await bob.expect(command: "FAIL").parameters.prefix(3) == ["METADATA", "INVALID_TARGET", "nobody"])
        try await server.shutdownAndRemove()
    }
}
