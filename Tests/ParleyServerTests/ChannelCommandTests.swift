import Foundation
import IRCWire
import Testing

/// Channel and server commands irctest checks (+e, +I, +C, LIST filters, INVITE lists, LINKS),
/// over real sockets.
@Suite("Channel and server commands over sockets")
struct ChannelCommandTests {
    /// Takes everything up to a PING round trip: what came back for the commands sent before it.
    static func replies(_ client: TestClient, _ token: String = "barrier") async throws -> [IRCMessage] {
        client.send("PING :\(token)")
        return try await client.lines(through: { $0.command == "PONG" && $0.parameters.last == token }, "PONG \(token)").dropLast()
    }

    @Test func banAndInviteExceptionsLetMatchingGuestsIn() async throws {
        let server = try await TestServer()
        let op = try await TestClient.registered("chanop", port: server.ipv4Port)
        let bar = try await TestClient.registered("bar", port: server.ipv4Port)
        let baz = try await TestClient.registered("baz", port: server.ipv4Port)
        op.send("JOIN #chan")
        op.send("MODE #chan +b ba*!*@*")
        _ = try await Self.replies(op)
        bar.send("JOIN #chan")
        try await bar.expect(numeric: "474")

        op.send("MODE #chan +e *ar!*@*")
        #expect(try await op.expect(command: "MODE").parameters == ["#chan", "+e", "*ar!*@*"])
        bar.send("JOIN #chan")
        try await bar.expect { $0.command == "JOIN" && $0.parameters.first == "#chan" }
        baz.send("JOIN #chan")
        try await baz.expect(numeric: "474")

        // +I lets a matching user past +i without an invitation; others still need one.
        op.send("MODE #chan -b+i ba*!*@*")
        op.send("MODE #chan +I baz!*@*")
        _ = try await Self.replies(op)
        let qux = try await TestClient.registered("qux", port: server.ipv4Port)
        qux.send("JOIN #chan")
        try await qux.expect(numeric: "473")
        baz.send("JOIN #chan")
        try await baz.expect { $0.command == "JOIN" && $0.parameters.first == "#chan" }
        try await op.expect { $0.command == "JOIN" && $0.source?.hasPrefix("baz!") == true }

        // The lists, each with its own numerics, naming who set the entry.
        op.send("MODE #chan +e")
        op.send("MODE #chan I")
        let lists = try await Self.replies(op)
        #expect(lists.map(\.command) == ["348", "349", "346", "347"])
        #expect(Array(lists[0].parameters.prefix(3)) == ["chanop", "#chan", "*ar!*@*"])
        #expect(lists[0].parameters[3].hasPrefix("chanop!"))
        #expect(Array(lists[2].parameters.prefix(3)) == ["chanop", "#chan", "baz!*@*"])
        // Only operators read them.
        bar.send("MODE #chan e")
        try await bar.expect(numeric: "482")
        for client in [op, bar, baz, qux] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func aBanExceptionLiftsAMute() async throws {
        let server = try await TestServer()
        let op = try await TestClient.registered("chanop", port: server.ipv4Port)
        let qux = try await TestClient.registered("qux", port: server.ipv4Port)
        op.send("JOIN #chan")
        op.send("MODE #chan +b m:qux!*@*")
        _ = try await Self.replies(op)
        qux.send("JOIN #chan")
        qux.send("PRIVMSG #chan :muted")
        #expect(try await Self.replies(qux).map(\.command).contains("404"))
        op.send("MODE #chan +e m:qux!*@*")
        _ = try await Self.replies(op)
        qux.send("PRIVMSG #chan :heard")
        #expect(try await op.expect(command: "PRIVMSG").parameters == ["#chan", "heard"])
        for client in [op, qux] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func noCTCPModeRefusesCTCPButAction() async throws {
        let server = try await TestServer()
        let op = try await TestClient.registered("chanop", port: server.ipv4Port)
        let user = try await TestClient.registered("user", port: server.ipv4Port)
        op.send("JOIN #chan")
        op.send("MODE #chan +C")
        _ = try await Self.replies(op)
        user.send("JOIN #chan")
        _ = try await Self.replies(user)
        user.send("PRIVMSG #chan :\u{01}ACTION waves\u{01}")
        user.send("PRIVMSG #chan :\u{01}PING 12345\u{01}")
        let refused = try await user.expect(numeric: "404")
        #expect(refused.parameters.prefix(2) == ["user", "#chan"])
        let got = try await Self.replies(op).filter { $0.command == "PRIVMSG" }
        #expect(got.map { $0.parameters.last } == ["\u{01}ACTION waves\u{01}"])
        op.send("MODE #chan")
        #expect(try await op.expect(numeric: "324").parameters[2].contains("C"))
        for client in [op, user] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func listFiltersByMaskExcludedMaskAndUserCount() async throws {
        let server = try await TestServer()
        let foo = try await TestClient.registered("foo", port: server.ipv4Port)
        let bar = try await TestClient.registered("bar", port: server.ipv4Port)
        foo.send("JOIN #chan1,#chan2,#other")
        bar.send("JOIN #chan2")
        _ = try await Self.replies(foo)
        _ = try await Self.replies(bar)
        func list(_ parameter: String) async throws -> Set<String> {
            foo.send("LIST \(parameter)")
            let lines = try await foo.lines(through: { $0.command == "323" }, "323 for LIST \(parameter)")
            return Set(lines.filter { $0.command == "322" }.map { $0.parameters[1] })
        }
        #expect(try await list("#CH*") == ["#chan1", "#chan2"], "masks compare case-folded")
        #expect(try await list("*an1,#other") == ["#chan1", "#other"])
        #expect(try await list("!#c*n2") == ["#chan1", "#other"])
        #expect(try await list(">1") == ["#chan2"])
        #expect(try await list("<2,#ch*") == ["#chan1"])
        #expect(try await list("#nothing") == [])
        for client in [foo, bar] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func inviteAloneListsInvitationsAndAnInvitationPassesTheLimit() async throws {
        let server = try await TestServer()
        let op = try await TestClient.registered("chanop", port: server.ipv4Port)
        let user = try await TestClient.registered("user", port: server.ipv4Port)
        op.send("JOIN #chan")
        op.send("MODE #chan +l 1")
        _ = try await Self.replies(op)
        user.send("JOIN #chan")
        try await user.expect(numeric: "471")
        user.send("INVITE")
        #expect(try await Self.replies(user).map(\.command) == ["337"])

        op.send("INVITE user #chan")
        try await op.expect(numeric: "341")
        try await user.expect(command: "INVITE")
        user.send("INVITE")
        let listed = try await Self.replies(user)
        #expect(listed.map(\.command) == ["336", "337"])
        #expect(listed.first?.parameters == ["user", "#chan"])
        user.send("INVITE chanop")
        try await user.expect(numeric: "461")

        user.send("JOIN #chan")
        try await user.skip(through: { $0.command == "366" }, "the join's names")
        user.send("INVITE")
        #expect(try await Self.replies(user).map(\.command) == ["337"], "the invitation was used")
        for client in [op, user] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func namesOfSeveralChannelsEndsOnce() async throws {
        let server = try await TestServer()
        let client = try await TestClient.registered("nick1", port: server.ipv4Port)
        client.send("JOIN #chan1,#chan2")
        _ = try await Self.replies(client)
        client.send("NAMES #chan1,#nowhere,#chan2")
        let lines = try await Self.replies(client)
        #expect(lines.map(\.command) == ["353", "353", "366"])
        #expect(lines[0].parameters == ["nick1", "=", "#chan1", "@nick1"])
        #expect(lines[1].parameters == ["nick1", "=", "#chan2", "@nick1"])
        #expect(lines[2].parameters.prefix(2) == ["nick1", "#chan1,#nowhere,#chan2"])
        await client.close()
        try await server.shutdownAndRemove()
    }

    @Test func linksNamesThisServerWithItsDescription() async throws {
        let server = try await TestServer { $0.serverDescription = "the test node" }
        let client = try await TestClient.registered("nick", port: server.ipv4Port)
        client.send("LINKS")
        let lines = try await Self.replies(client)
        #expect(lines.map(\.command) == ["364", "365"])
        let name = lines[0].source ?? ""
        #expect(lines[0].parameters == ["nick", name, name, "0 the test node"])
        #expect(lines[1].parameters.prefix(2) == ["nick", "*"])
        await client.close()
        try await server.shutdownAndRemove()
    }
}
