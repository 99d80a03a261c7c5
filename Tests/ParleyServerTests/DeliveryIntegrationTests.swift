import Foundation
import IRCWire
import ParleyCore
import Testing

/// Offline delivery, receipts, read markers and chat history over real sockets and SQLite.
@Suite("Offline delivery and receipts over real sockets")
struct DeliveryIntegrationTests {
    static let passwords = GroupIntegrationTests.passwords
    static let login = GroupIntegrationTests.login

    static let modern = ["echo-message", "server-time", "message-tags", "batch", "labeled-response", "parley.chat/receipts", "draft/read-marker", "draft/chathistory"]

    @Test func offlineMessagesAreKeptAcrossARestartAndReplayedOnceInOrder() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        var bob = try await Self.login("bob", server, false, [])
        await bob.close()
        // Last seen is recorded when bob's connection closes.
        var lastSeen: String?
        for _ in 0..<100 {
            let whois = try await TestClient.registered("asker\(Int.random(in: 0..<100_000))", port: server.ipv4Port)
            whois.send("WHOIS bob")
            let note = try await whois.expect { $0.command == "318" || ($0.command == "NOTE" && $0.parameters.first == "WHOIS") }
            await whois.close()
            if note.command == "NOTE" { lastSeen = note.parameters[3]; break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let seen = try #require(lastSeen.flatMap { Timestamp(iso8601: $0) })

        let alice = try await Self.login("alice", server, false, Self.modern)
        for number in 1...5 {
            alice.send("@label=m\(number) PRIVMSG bob :message \(number)")
        }
        var ids: [String] = []
        for number in 1...5 {
            let echo = try await alice.expect { $0.command == "PRIVMSG" && $0.tagValue("label") == "m\(number)" || $0.command == "BATCH" && $0.tagValue("label") == "m\(number)" }
            if echo.command == "BATCH" {
                let message = try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "message \(number)" }
                ids.append(try #require(message.tagValue("msgid")))
            } else {
                ids.append(try #require(echo.tagValue("msgid")))
            }
        }
        let note = try await alice.expect { $0.command == "NOTE" }
        #expect(note.parameters.prefix(4) == ["PRIVMSG", "RECIPIENT_OFFLINE", "bob", seen.iso8601])
        #expect(note.parameters.last?.contains("bob is offline (last seen") == true)
        await alice.close()

        try await server.restart()

        // Two devices of bob come back at once: the account gets each message exactly once.
        let phone = try await TestClient.connect(port: server.ipv4Port)
        let laptop = try await TestClient.connect(host: "::1", port: server.ipv6Port)
        for device in [phone, laptop] {
            device.send("CAP LS 302")
            device.send("CAP REQ :batch server-time message-tags")
            device.send("PASS :bob:\(Self.passwords["bob"]!)")
            device.send("NICK bob")
            device.send("USER bob 0 * :Bob")
            device.send("CAP END")
        }
        for device in [phone, laptop] { try await device.expect(numeric: "001") }
        let lines = try await phone.settle() + (try await laptop.settle())
        let replayed = lines.compactMap { try? IRCMessage(parsing: $0) }.filter { $0.command == "PRIVMSG" }
        #expect(replayed.map { $0.parameters.last ?? "" } == (1...5).map { "message \($0)" })
        #expect(replayed.map { $0.tagValue("msgid") ?? "" } == ids)
        #expect(replayed.allSatisfy { $0.source == "alice!~alice@127.0.0.1" && $0.tagValue("batch") != nil })
        await phone.close(); await laptop.close()

        // Delivered is on disk too: after another restart nothing comes again.
        try await server.restart()
        bob = try await Self.login("bob", server, true, [])
        let after = try await bob.settle()
        #expect(!after.contains { (try? IRCMessage(parsing: $0))?.command == "PRIVMSG" })
        await bob.close()
        try await server.shutdownAndRemove()
    }

    @Test func receiptsForLiveAndReplayedMessagesAndWhileTheAuthorIsOffline() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        let alice = try await Self.login("alice", server, false, Self.modern)
        let bob = try await Self.login("bob", server, true, Self.modern)

        // Live: delivered at once, read when bob's client marks it.
        alice.send("PRIVMSG bob :live one")
        let echo = try await alice.expect(command: "PRIVMSG")
        let liveID = try #require(echo.tagValue("msgid"))
        let delivered = try await alice.expect(command: "RECEIPT")
        #expect(delivered.parameters.prefix(4) == ["bob", liveID, "delivered", "bob"])
        let atBob = try await bob.expect(command: "PRIVMSG")
        bob.send("MARKREAD alice timestamp=\(atBob.tagValue("time")!)")
        try await bob.expect(command: "MARKREAD")
        let read = try await alice.expect(command: "RECEIPT")
        #expect(read.parameters.prefix(4) == ["bob", liveID, "read", "bob"])
        #expect(read.parameters[4] == atBob.tagValue("time"))

        // Replayed: carol is offline; her delivery and read happen while alice is away.
        alice.send("PRIVMSG carol :waiting for you")
        let second = try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.first == "carol" }
        let replayID = try #require(second.tagValue("msgid"))
        try await alice.expect(command: "NOTE")
        await alice.close()
        try await Task.sleep(for: .milliseconds(50))
        let carol = try await Self.login("carol", server, false, Self.modern)
        let missed = try await carol.expect { $0.command == "PRIVMSG" && $0.parameters.last == "waiting for you" }
        carol.send("MARKREAD alice timestamp=\(missed.tagValue("time")!)")
        try await carol.expect(command: "MARKREAD")

        // alice returns (after a restart, even) and gets both receipts.
        try await server.restart()
        let aliceAgain = try await Self.login("alice", server, false, Self.modern)
        let first = try await aliceAgain.expect(command: "RECEIPT")
        let last = try await aliceAgain.expect(command: "RECEIPT")
        #expect(first.parameters.prefix(4) == ["carol", replayID, "delivered", "carol"])
        #expect(last.parameters.prefix(4) == ["carol", replayID, "read", "carol"])
        // And she can ask for the state of both messages.
        aliceAgain.send("RECEIPTS STATUS \(liveID),\(replayID)")
        let states = [try await aliceAgain.expect(command: "RECEIPT"), try await aliceAgain.expect(command: "RECEIPT")]
        #expect(states.map { $0.parameters[2] } == ["read", "read"])
        for client in [bob, carol, aliceAgain] { await client.close() }
        try await server.shutdownAndRemove()
    }

    /// An author without a receipts client: delivered receipts wait across a restart until the
    /// author comes back with one, that of a message replayed to an offline recipient (its row
    /// says so) and that of one had at once, which has no recipient row (the store keeps since
    /// when the author's receipts wait).
    @Test func deliveredReceiptsWaitAcrossARestartForAnAuthorWithoutReceipts() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        let plain = ["echo-message", "server-time", "message-tags"]
        let alice = try await Self.login("alice", server, false, plain)
        alice.send("PRIVMSG carol :first")
        let first = try #require(try await alice.expect(command: "PRIVMSG").tagValue("msgid"))
        // carol gets it as she logs in: its delivered receipt is the first of alice's to wait.
        let carol = try await Self.login("carol", server, false, [])
        try await carol.expect { $0.command == "PRIVMSG" && $0.parameters.last?.hasSuffix("first") == true }
        let bob = try await Self.login("bob", server, false, Self.modern)
        alice.send("PRIVMSG bob :second")
        let second = try #require(try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "second" }.tagValue("msgid"))
        try await bob.expect(command: "PRIVMSG")
        for client in [alice, bob, carol] { await client.close() }

        try await server.restart()
        let aliceAgain = try await Self.login("alice", server, false, Self.modern)
        let receipts = [try await aliceAgain.expect(command: "RECEIPT"), try await aliceAgain.expect(command: "RECEIPT")]
        #expect(Set(receipts.map { Array($0.parameters.prefix(4)) }) == [["carol", first, "delivered", "carol"], ["bob", second, "delivered", "bob"]])
        await aliceAgain.close()
        try await server.shutdownAndRemove()
    }

    /// A message bob had as it was sent, still unread at a restart, is followed again from the
    /// store: his read after the restart reaches alice as a receipt, once.
    @Test func aMessageHadAtOnceAndReadAfterARestartGetsItsReadReceipt() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        let alice = try await Self.login("alice", server, false, Self.modern)
        let bob = try await Self.login("bob", server, true, Self.modern)
        alice.send("PRIVMSG bob :read me later")
        let id = try #require(try await alice.expect(command: "PRIVMSG").tagValue("msgid"))
        #expect(try await alice.expect(command: "RECEIPT").parameters.prefix(4) == ["bob", id, "delivered", "bob"])
        let message = try await bob.expect(command: "PRIVMSG")
        for client in [alice, bob] { await client.close() }

        try await server.restart()
        let aliceAgain = try await Self.login("alice", server, false, Self.modern)
        let bobAgain = try await Self.login("bob", server, true, Self.modern)
        bobAgain.send("MARKREAD alice timestamp=\(message.tagValue("time")!)")
        try await bobAgain.expect(command: "MARKREAD")
        let read = try await aliceAgain.expect(command: "RECEIPT")
        #expect(read.parameters.prefix(5) == ["bob", id, "read", "bob", message.tagValue("time")!])
        let quiet = try await aliceAgain.settle()
        #expect(!quiet.contains { $0.contains("RECEIPT") }, "once: \(quiet)")
        aliceAgain.send("RECEIPTS STATUS \(id)")
        #expect(try await aliceAgain.expect(command: "RECEIPT").parameters[2] == "read")
        for client in [aliceAgain, bobAgain] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func readReceiptOptOutSurvivesARestart() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        let bob = try await Self.login("bob", server, false, Self.modern)
        bob.send("RECEIPTS READ OFF")
        try await bob.expect { $0.command == "RECEIPTS" && $0.parameters.prefix(2) == ["READ", "OFF"] }
        await bob.close()
        try await server.restart()
        let alice = try await Self.login("alice", server, false, Self.modern)
        let bobAgain = try await Self.login("bob", server, true, Self.modern)
        alice.send("PRIVMSG bob :private reader")
        let id = try #require(try await alice.expect(command: "PRIVMSG").tagValue("msgid"))
        try await alice.expect(command: "RECEIPT")  // delivered
        let message = try await bobAgain.expect(command: "PRIVMSG")
        bobAgain.send("MARKREAD alice timestamp=\(message.tagValue("time")!)")
        try await bobAgain.expect(command: "MARKREAD")
        let quiet = try await alice.settle()
        #expect(!quiet.contains { $0.contains("RECEIPT") && $0.contains(" read ") })
        alice.send("RECEIPTS STATUS \(id)")
        #expect(try await alice.expect(command: "RECEIPT").parameters[2] == "delivered")
        for client in [alice, bobAgain] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func chathistoryServesParticipantsOnly() async throws {
        let server = try await GroupIntegrationTests.makeServerWithAccounts()
        let alice = try await Self.login("alice", server, false, Self.modern)
        let bob = try await Self.login("bob", server, true, Self.modern)
        let dave = try await Self.login("dave", server, false, Self.modern)
        alice.send("JOIN #inner")
        try await alice.expect(numeric: "366")
        alice.send("INVITE bob #inner")
        try await bob.expect(numeric: "366")
        for number in 1...3 {
            alice.send("PRIVMSG bob :direct \(number)")
            alice.send("PRIVMSG #inner :group \(number)")
        }
        for _ in 1...3 { try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.first == "#inner" } }

        bob.send("@label=h1 CHATHISTORY LATEST alice * 10")
        var direct: [String] = []
        for _ in 1...3 {
            direct.append(try await bob.expect { $0.command == "PRIVMSG" && $0.tagValue("batch") != nil && $0.parameters.first == "bob" }.parameters.last ?? "")
        }
        #expect(direct.suffix(3) == ["direct 1", "direct 2", "direct 3"])

        bob.send("CHATHISTORY BEFORE #inner timestamp=2100-01-01T00:00:00.000Z 2")
        var group: [String] = []
        for _ in 1...2 { group.append(try await bob.expect { $0.command == "PRIVMSG" && $0.tagValue("batch") != nil && $0.parameters.first == "#inner" }.parameters.last ?? "") }
        #expect(group == ["group 2", "group 3"])

        bob.send("CHATHISTORY AFTER alice timestamp=2000-01-01T00:00:00.000Z 1")
        #expect(try await bob.expect { $0.command == "PRIVMSG" && $0.tagValue("batch") != nil && $0.parameters.first == "bob" }.parameters.last == "direct 1")
        bob.send("CHATHISTORY TARGETS timestamp=2000-01-01T00:00:00.000Z timestamp=2100-01-01T00:00:00.000Z 10")
        var targets: [String] = []
        for _ in 1...2 { targets.append(try await bob.expect { $0.command == "CHATHISTORY" }.parameters[1]) }
        #expect(Set(targets) == ["alice", "#inner"])

        // dave is in neither conversation.
        dave.send("CHATHISTORY LATEST #inner * 10")
        let refused = try await dave.expect(command: "FAIL")
        #expect(refused.parameters.prefix(4) == ["CHATHISTORY", "INVALID_TARGET", "LATEST", "#inner"])
        dave.send("CHATHISTORY LATEST alice * 10")
        let daveView = try await dave.settle()
        #expect(!daveView.contains { $0.contains("direct") }, "dave's conversation with alice is empty: \(daveView)")
        let guest = try await TestClient.registered("guest", port: server.ipv4Port)
        guest.send("CHATHISTORY LATEST alice * 10")
        #expect(try await guest.expect(command: "FAIL").parameters[1] == "INVALID_TARGET")
        for client in [alice, bob, dave, guest] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func fullInboxesAreRefusedWithAReason() async throws {
        let server = try await TestServer { $0.history.maxUndeliveredPerAccount = 3 }
        for name in ["alice", "bob"] {
            try await AccountTests.createAccount(name, password: Self.passwords[name]!, port: server.ipv4Port)
        }
        let alice = try await Self.login("alice", server, false, ["echo-message"])
        for number in 1...3 { alice.send("PRIVMSG bob :\(number)") }
        for _ in 1...3 { try await alice.expect(command: "NOTE") }
        alice.send("PRIVMSG bob :one too many")
        let fail = try await alice.expect(command: "FAIL")
        #expect(fail.parameters.prefix(3) == ["PRIVMSG", "INBOX_FULL", "bob"])
        await alice.close()
        try await server.shutdownAndRemove()
    }
}
