import Foundation
import IRCWire
import Testing

/// What someone outside a channel may learn about it, and the bounds on ban lists and WHO,
/// over real sockets.
@Suite("Channel privacy and bounded lists")
struct ChannelPrivacyTests {
    /// Sends `lines`, then a PING: once its PONG is back the server has answered everything
    /// before it. Returns those answers, parsed.
    static func answers(_ client: TestClient, to lines: [String]) async throws -> [IRCMessage] {
        for line in lines { client.send(line) }
        client.send("PING :answered")
        try await client.expect { $0.command == "PONG" && $0.parameters.last == "answered" }
        return client.drain().compactMap { try? IRCMessage(parsing: $0) }
    }

    @Test func outsidersLearnNothingPrivateAboutAClosedGroup() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        let alice = try await GroupIntegrationTests.login("alice", server)
        let setup = try await Self.answers(alice, to: [
            "JOIN #closed", "TOPIC #closed :our plans", "MODE #closed +kl sesame 5", "MODE #closed +b *!*@spy.example",
        ])
        #expect(setup.contains { $0.command == "MODE" && $0.parameters.prefix(2) == ["#closed", "+b"] })

        let eve = try await TestClient.registered("eve", port: server.ipv4Port)
        let seen = try await Self.answers(eve, to: [
            "MODE #closed", "MODE #closed b", "MODE #closed +b", "TOPIC #closed", "NAMES #closed", "WHO #closed",
            "LIST", "LIST #closed", "WHOIS alice", "PRIVMSG ChanServ :INFO #closed",
        ])
        let refused = seen.filter { $0.command == "442" }.map { $0.parameters[1] }
        #expect(refused == ["#closed", "#closed", "#closed", "#closed"], "MODE (modes, b, +b) and TOPIC are refused: \(seen)")
        let leaks = seen.filter { ["324", "329", "332", "333", "353", "352", "322", "367"].contains($0.command) }
        #expect(leaks.isEmpty, "nothing of #closed is shown: \(leaks)")
        let text = seen.map { String(describing: $0) }.joined(separator: "\n")
        for secret in ["sesame", "spy.example", "our plans", "alice!"] {
            #expect(!text.contains(secret), "\(secret) is not shown to an outsider")
        }
        #expect(seen.contains { $0.command == "366" && $0.parameters[1] == "#closed" }, "NAMES ends, empty")
        #expect(seen.contains { $0.command == "315" && $0.parameters[1] == "#closed" }, "WHO ends, empty")
        #expect(seen.contains { $0.command == "NOTICE" && $0.parameters.last?.contains("closed group") == true }, "ChanServ INFO refuses")
        #expect(!seen.contains { $0.command == "319" && $0.parameters.last?.contains("#closed") == true }, "WHOIS hides it")

        // Its owner still sees everything.
        let own = try await Self.answers(alice, to: ["MODE #closed", "MODE #closed b"])
        #expect(own.first { $0.command == "324" }?.parameters.dropFirst(2) == ["+intlk", "5", "sesame"])
        #expect(own.contains { $0.command == "329" })
        #expect(own.first { $0.command == "367" }?.parameters.dropFirst(2).first == "*!*@spy.example")
        for client in [alice, eve] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func anOpenGroupsBanListIsForItsMembers() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        let alice = try await GroupIntegrationTests.login("alice", server)
        _ = try await Self.answers(alice, to: ["JOIN #open", "MODE #open -i", "MODE #open +b *!*@spy.example"])

        let eve = try await TestClient.registered("eve", port: server.ipv4Port)
        let seen = try await Self.answers(eve, to: ["MODE #open b", "MODE #open"])
        #expect(seen.first { $0.command == "442" }?.parameters[1] == "#open", "the ban list (with who set each ban) is refused")
        #expect(!seen.contains { $0.command == "367" })
        #expect(seen.first { $0.command == "324" }?.parameters.dropFirst(2) == ["+nt"], "an open group's modes stay public")
        for client in [alice, eve] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func publicChannelsKeepTheStandardView() async throws {
        let server = try await TestServer()
        let guest = try await TestClient.registered("guest", port: server.ipv4Port)
        _ = try await Self.answers(guest, to: ["JOIN #public", "MODE #public +b *!*@spy.example"])

        let eve = try await TestClient.registered("eve", port: server.ipv4Port)
        let seen = try await Self.answers(eve, to: ["MODE #public", "MODE #public b", "TOPIC #public", "NAMES #public"])
        #expect(!seen.contains { $0.command == "442" })
        #expect(seen.contains { $0.command == "324" } && seen.contains { $0.command == "329" })
        #expect(seen.first { $0.command == "367" }?.parameters.dropFirst(2).first == "*!*@spy.example")
        #expect(seen.contains { $0.command == "368" } && seen.contains { $0.command == "331" } && seen.contains { $0.command == "353" })
        for client in [guest, eve] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func theBanListIsCappedAndAdvertised() async throws {
        let server = try await TestServer { $0.limits.maxBansPerChannel = 3 }
        let op = try await TestClient.connect(port: server.ipv4Port)
        op.send("NICK op")
        op.send("USER op 0 * :Op")
        let isupport = try await op.expect { $0.command == "005" && $0.parameters.contains { $0.hasPrefix("MAXLIST=") } }
        #expect(isupport.parameters.contains("MAXLIST=b:3,e:3,I:3"), "each list its own limit")
        try await op.skip(through: { $0.command == "MODE" }, "the welcome burst")

        let replies = try await Self.answers(op, to: [
            "JOIN #c", "MODE #c +b a!*@*", "MODE #c +b b!*@*", "MODE #c +b c!*@*", "MODE #c +b d!*@*", "MODE #c b",
        ])
        #expect(replies.filter { $0.command == "MODE" && $0.parameters.prefix(2) == ["#c", "+b"] }.count == 3)
        let full = replies.first { $0.command == "478" }
        #expect(full?.parameters.prefix(3) == ["op", "#c", "b"], "ERR_BANLISTFULL names the channel and the list")
        #expect(replies.filter { $0.command == "367" }.map { $0.parameters[2] } == ["a!*@*", "b!*@*", "c!*@*"])
        await op.close()
        try await server.shutdownAndRemove()
    }

    @Test func whoByMaskIsBoundedAndSaysSo() async throws {
        let server = try await TestServer { $0.limits.maxWhoReplies = 3 }
        var watchers: [TestClient] = []
        for index in 1...5 {
            let client = try await TestClient.registered("w\(index)", port: server.ipv4Port)
            // Users are invisible (+i) by default, and WHO by mask lists only visible ones.
            _ = try await Self.answers(client, to: ["MODE w\(index) -i", "JOIN #room"])
            watchers.append(client)
        }
        let asker = try await TestClient.registered("asker", port: server.ipv4Port)

        let masked = try await Self.answers(asker, to: ["WHO w*"])
        #expect(masked.filter { $0.command == "352" }.count == 3, "three of the five")
        let note = masked.first { $0.command == "NOTE" }
        #expect(note?.parameters.prefix(3) == ["WHO", "TRUNCATED", "w*"])
        #expect(masked.last { $0.command != "PONG" }?.command == "315", "the list still ends with RPL_ENDOFWHO")

        let everyone = try await Self.answers(asker, to: ["WHO *"])
        #expect(everyone.filter { $0.command == "352" }.count == 3)
        #expect(everyone.contains { $0.command == "NOTE" })

        // Direct lookups are not cut: a nick, and a channel's members.
        let one = try await Self.answers(asker, to: ["WHO w4"])
        #expect(one.filter { $0.command == "352" }.map { $0.parameters[5] } == ["w4"])
        #expect(!one.contains { $0.command == "NOTE" })
        let room = try await Self.answers(asker, to: ["WHO #room"])
        #expect(room.filter { $0.command == "352" }.count == 5)
        #expect(!room.contains { $0.command == "NOTE" })
        for client in watchers + [asker] { await client.close() }
        try await server.shutdownAndRemove()
    }
}
