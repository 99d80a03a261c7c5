import Foundation
import IRCWire
import Testing

/// Limits and replies irctest checks, over real sockets.
@Suite("Protocol conformance over sockets")
struct ConformanceIntegrationTests {
    /// IRCv3 message-tags: a client's tag section holds at most 4094 bytes (4096 with '@' and
    /// the space); one byte more is refused with 417 and relayed to nobody.
    @Test func aClientTagSectionOverTheLimitIs417() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: ["message-tags", "echo-message"])
        let bob = try await TestClient.registered("bob", port: server.ipv4Port, caps: ["message-tags"])
        let atLimit = "@foo=bar;+baz=\(String(repeating: "a", count: 4081)) TAGMSG bob"
        #expect(atLimit.utf8.firstIndex(of: UInt8(ascii: "T")).map { atLimit.utf8.distance(from: atLimit.utf8.startIndex, to: $0) } == 4096)
        alice.send(atLimit)
        let echo = try await alice.expect(command: "TAGMSG")
        #expect(echo.tagValue("+baz")?.utf8.count == 4081)
        let relayed = try await bob.expect(command: "TAGMSG")
        #expect(relayed.tagValue("+baz")?.utf8.count == 4081)

        alice.send("@foo=bar;+baz=\(String(repeating: "a", count: 4082)) TAGMSG bob")
        try await alice.expect(numeric: "417")
        bob.send("PING :after")
        try await bob.expect { $0.command == "PONG" }
        #expect(bob.drain().allSatisfy { !$0.contains("TAGMSG") }, "nothing relayed")
        try await server.shutdownAndRemove()
    }

    /// With `serverPassword` set, a connection registers only after PASS with it; without it or
    /// with another it gets 464 and is closed (RFC 2812 3.1.1, Modern IRC).
    @Test func aServerPasswordIsRequiredBeforeRegistration() async throws {
        let server = try await TestServer { $0.serverPassword = "letmein" }
        for pass in [nil, "wrong", "letmein:extra"] {
            let client = try await TestClient.connect(port: server.ipv4Port)
            if let pass { client.send("PASS \(pass)") }
            client.send("NICK foo")
            client.send("USER foo 0 * :Foo")
            try await client.expect(numeric: "464")
            let rest = try await client.expectClosed()
            #expect(rest.contains { $0.hasPrefix("ERROR ") }, "closed with ERROR after PASS \(pass ?? "(none)")")
            #expect(!rest.contains { $0.contains(" 001 ") })
        }
        let admitted = try await TestClient.connect(port: server.ipv4Port)
        admitted.send("PASS letmein")
        admitted.send("NICK foo")
        admitted.send("USER foo 0 * :Foo")
        #expect(try await admitted.expect(numeric: "001").parameters.first == "foo", "a guest: PASS was not an account login")
        await admitted.close()
        try await server.shutdownAndRemove()
    }
}
