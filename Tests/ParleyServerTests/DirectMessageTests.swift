import Foundation
import IRCWire
import Testing

@Suite("Direct messages over real sockets")
struct DirectMessageTests {
    @Test func threeClientsOnIPv4AndIPv6TalkPairwiseAtOnce() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port)
        let bob = try await TestClient.registered("bob", port: server.ipv4Port)
        let carol = try await TestClient.registered("carol", port: server.ipv6Port, host: "::1")
        let clients = [("alice", alice), ("bob", bob), ("carol", carol)]
        // Every client sends to both others before anyone reads: all six directions at once.
        for (sender, client) in clients {
            for (receiver, _) in clients where receiver != sender {
                client.send("PRIVMSG \(receiver) :\(sender) to \(receiver)")
            }
        }
        for (receiver, client) in clients {
            for (sender, _) in clients where sender != receiver {
                let message = try await client.expect("\(sender)'s message") { $0.command == "PRIVMSG" && $0.parameters.last == "\(sender) to \(receiver)" }
                let host = sender == "carol" ? "0::1" : "127.0.0.1"
                #expect(message.source == "\(sender)!~\(sender)@\(host)")
                #expect(message.parameters.first == receiver)
            }
        }
        for (_, client) in clients { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func senderLearnsAcceptedWithEchoMsgidAndLabel() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port, caps: ["echo-message", "labeled-response", "batch", "message-tags", "server-time"])
        let bob = try await TestClient.registered("bob", port: server.ipv6Port, host: "::1", caps: ["message-tags", "server-time"])
        alice.send("@label=abc123 PRIVMSG bob :are you there?")
        let echo = try await alice.expect(command: "PRIVMSG")
        #expect(echo.tagValue("label") == "abc123")
        let messageID = try #require(echo.tagValue("msgid"))
        let time = try #require(echo.tagValue("time"))
        let delivered = try await bob.expect(command: "PRIVMSG")
        #expect(delivered.tagValue("msgid") == messageID)
        #expect(delivered.tagValue("time") == time)
        #expect(delivered.parameters == ["bob", "are you there?"])

        alice.send("@label=def456 PRIVMSG nobody :hello?")
        let failure = try await alice.expect(numeric: "401")
        #expect(failure.tagValue("label") == "def456")
        #expect(failure.parameters == ["alice", "nobody", "No such nick/channel"])
        await alice.close(); await bob.close()
        try await server.shutdownAndRemove()
    }

    @Test func oversizedAndInvalidLinesGetErrorsAndTheConnectionSurvives() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port)
        let bob = try await TestClient.registered("bob", port: server.ipv4Port)
        // A body over 510 bytes: refused with 417, nothing delivered.
        alice.send("PRIVMSG bob :" + String(repeating: "a", count: 600))
        try await alice.expect(numeric: "417")
        // Far beyond the whole-line cap: still one 417, no unbounded buffering.
        alice.send("PRIVMSG bob :" + String(repeating: "b", count: 20_000))
        try await alice.expect(numeric: "417")
        // Invalid UTF-8 is refused by name.
        alice.sendRaw(Array("PRIVMSG bob :caf".utf8) + [0xC3, 0x28] + Array("\r\n".utf8))
        let invalid = try await alice.expect(command: "FAIL")
        #expect(invalid.parameters.prefix(2) == ["PRIVMSG", "INVALID_UTF8"])
        // The connection still works and bob got none of the refused lines.
        alice.send("PRIVMSG bob :still here")
        let received = try await bob.expect(command: "PRIVMSG")
        #expect(received.parameters.last == "still here")
        // A line that arrives in pieces (a multi-byte character split too) is one message.
        alice.sendRaw(Array("PRIVMSG bob :caf".utf8) + [0xC3])
        try await Task.sleep(for: .milliseconds(50))
        alice.sendRaw([0xA9] + Array(" in pieces\r\nPRIVMSG bob :and".utf8))
        try await Task.sleep(for: .milliseconds(50))
        alice.sendRaw(Array(" whole\r\n".utf8))
        #expect(try await bob.expect(command: "PRIVMSG").parameters.last == "café in pieces")
        #expect(try await bob.expect(command: "PRIVMSG").parameters.last == "and whole")
        await alice.close(); await bob.close()
        try await server.shutdownAndRemove()
    }

    @Test func floodsAreSlowedThenDisconnected() async throws {
        let server = try await TestServer { configuration in
            configuration.limits.floodCommandsPerSecond = 20
            configuration.limits.floodBurst = 5
            configuration.limits.floodQueueLimit = 30
        }
        let alice = try await TestClient.registered("alice", port: server.ipv4Port)
        let bob = try await TestClient.registered("bob", port: server.ipv4Port)
        // 15 messages: 5 at once, the other 10 paced at 20/s, so they take about half a second.
        let start = ContinuousClock.now
        for index in 1...15 { alice.send("PRIVMSG bob :\(index)") }
        for index in 1...15 {
            let message = try await bob.expect(command: "PRIVMSG")
            #expect(message.parameters.last == "\(index)", "held-back messages keep their order")
        }
        #expect(ContinuousClock.now - start >= .milliseconds(400), "flood control paced the burst")
        // A flood far past the queue limit is cut off with an ERROR saying why.
        let flooder = try await TestClient.registered("flooder", port: server.ipv4Port)
        for index in 1...200 { flooder.send("PRIVMSG bob :flood \(index)") }
        let lines = try await flooder.expectClosed()
        #expect(lines.contains { $0.hasPrefix("ERROR") && $0.contains("Excess Flood") })
        // Others are unaffected.
        alice.send("PRIVMSG bob :after the flood")
        try await bob.expect { $0.parameters.last == "after the flood" }
        await alice.close(); await bob.close()
        try await server.shutdownAndRemove()
    }

    @Test func aBurstToAGroupAndAPersonArrivesWholeAndInOrder() async throws {
        // One read holding many lines: each receiver's lines are gathered into one write, and
        // members with the same lines share one buffer. Nobody may get another's lines.
        let server = try await TestServer()
        let sender = try await TestClient.registered("sender", port: server.ipv4Port)
        var members: [TestClient] = []
        for name in ["m1", "m2", "m3", "m4"] {
            let member = try await TestClient.registered(name, port: server.ipv4Port)
            member.send("JOIN #burst")
            try await member.expect { $0.command == "JOIN" && $0.source?.hasPrefix(name + "!") == true }
            members.append(member)
        }
        sender.send("JOIN #burst")
        try await sender.expect(numeric: "366")
        var burst = ""
        for index in 1...3 { burst += "PRIVMSG #burst :group \(index)\r\n" }
        burst += "PRIVMSG m2 :just for m2\r\n"
        for index in 4...6 { burst += "PRIVMSG #burst :group \(index)\r\n" }
        sender.sendRaw(Array(burst.utf8))
        for (position, member) in members.enumerated() {
            var texts: [String] = []
            let expected = position == 1 ? 7 : 6
            while texts.count < expected {
                let message = try await member.expect(command: "PRIVMSG")
                texts.append(message.parameters.last ?? "")
            }
            var wanted = (1...3).map { "group \($0)" }
            if position == 1 { wanted.append("just for m2") }
            wanted += (4...6).map { "group \($0)" }
            #expect(texts == wanted, "member \(position + 1)")
        }
        for member in members { await member.close() }
        await sender.close()
        try await server.shutdownAndRemove()
    }

    @Test func aMessageSentJustBeforeHangingUpIsStillDelivered() async throws {
        let server = try await TestServer()
        let bob = try await TestClient.registered("bob", port: server.ipv4Port)
        for round in 1...5 {
            let leaver = try await TestClient.registered("leaver\(round)", port: server.ipv4Port)
            leaver.sendRaw(Array("PRIVMSG bob :bye \(round)\r\nQUIT :gone\r\n".utf8))
            await leaver.close()
            let message = try await bob.expect(command: "PRIVMSG")
            #expect(message.parameters.last == "bye \(round)")
        }
        await bob.close()
        try await server.shutdownAndRemove()
    }

    @Test func connectionsPerAddressAreCapped() async throws {
        let server = try await TestServer { $0.limits.maxConnectionsPerAddress = 2 }
        let first = try await TestClient.connect(port: server.ipv4Port)
        let second = try await TestClient.connect(port: server.ipv4Port)
        // Any answer shows the server has admitted them (connections are spread over event
        // loops, so without this the third could be admitted before the second).
        for client in [first, second] {
            client.send("PING :admitted")
            _ = try await client.expect { _ in true }
        }
        let third = try await TestClient.connect(port: server.ipv4Port)
        let lines = try await third.expectClosed()
        #expect(lines.first?.hasPrefix("ERROR :Closing link: 127.0.0.1 (Too many connections from your address)") == true)
        // IPv6 loopback is another address.
        let overIPv6 = try await TestClient.registered("six", port: server.ipv6Port, host: "::1")
        await first.close()
        // Its place is free once the server has forgotten the connection.
        try await server.waitForOpenConnections(2)
        let fourth = try await TestClient.registered("fourth", port: server.ipv4Port)
        for client in [second, overIPv6, fourth] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func connectionsStillRegisteringAreCappedAndTimedOut() async throws {
        let server = try await TestServer {
            $0.limits.maxUnregisteredConnections = 2
            $0.limits.registrationTimeoutSeconds = 3
        }
        let first = try await TestClient.connect(port: server.ipv4Port)
        let second = try await TestClient.connect(host: "::1", port: server.ipv6Port)
        // Any answer shows the server has admitted them: connections are spread over event
        // loops, so without this the third could be admitted first and one of these refused.
        for client in [first, second] {
            client.send("PING :admitted")
            _ = try await client.expect { _ in true }
        }
        let third = try await TestClient.connect(port: server.ipv4Port)
        let refused = try await third.expectClosed()
        #expect(refused.first?.contains("Too many connections are registering") == true)
        // One of them finishes registering: room for another.
        try await first.register("early")
        let fourth = try await TestClient.registered("fourth", port: server.ipv4Port)
        // The one that never registers is closed with a reason.
        let lines = try await second.expectClosed(timeout: .seconds(10))
        #expect(lines.last?.contains("Registration timed out") == true)
        for client in [first, fourth] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func gracefulShutdownTellsClientsWhy() async throws {
        let server = try await TestServer()
        let alice = try await TestClient.registered("alice", port: server.ipv4Port)
        try await server.stop()
        let lines = try await alice.expectClosed()
        #expect(lines.contains { $0.hasPrefix("ERROR") && $0.contains("Server shutting down") })
        try await server.shutdownAndRemove()
    }
}
