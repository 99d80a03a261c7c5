import Foundation
import IRCWire
import Testing

/// Every CHATHISTORY form returns at most its limit, and at most the server's.
@Suite("Chat history limits over real sockets")
struct HistoryBoundsTests {
    @Test func everyFormReturnsAtMostItsLimitAndTheServers() async throws {
        let server = try await TestServer { $0.history.chathistoryLimit = 5 }
        for name in ["alice", "bob"] {
            try await AccountTests.createAccount(name, password: GroupIntegrationTests.passwords[name]!, port: server.ipv4Port)
        }
        let alice = try await GroupIntegrationTests.login("alice", server, caps: IdentityTests.modern)
        let bob = try await GroupIntegrationTests.login("bob", server, caps: IdentityTests.modern)
        var ids: [String] = []
        for number in 1...12 {
            alice.send("PRIVMSG bob :m\(number)")
            ids.append(try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "m\(number)" }.tagValue("msgid") ?? "")
        }
        #expect(try await IdentityTests.history(bob, "CHATHISTORY AROUND alice msgid=\(ids[5]) 1") == ["m6"], "AROUND with limit 1 is that message alone")
        #expect(try await IdentityTests.history(bob, "CHATHISTORY AROUND alice msgid=\(ids[5]) 3") == ["m5", "m6", "m7"])
        #expect(try await IdentityTests.history(bob, "CHATHISTORY AROUND alice msgid=\(ids[5]) 100").count == 5, "the server's limit")
        #expect(try await IdentityTests.history(bob, "CHATHISTORY LATEST alice * 100") == ["m8", "m9", "m10", "m11", "m12"])
        #expect(try await IdentityTests.history(bob, "CHATHISTORY BEFORE alice msgid=\(ids[11]) 2") == ["m10", "m11"])
        #expect(try await IdentityTests.history(bob, "CHATHISTORY AFTER alice msgid=\(ids[0]) 100") == ["m2", "m3", "m4", "m5", "m6"])
        #expect(try await IdentityTests.history(bob, "CHATHISTORY BETWEEN alice msgid=\(ids[0]) msgid=\(ids[11]) 100").count == 5)
        for client in [alice, bob] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func theDailyStorageQuotaAndMarkReadTargetsOverRealSockets() async throws {
        let server = try await TestServer { $0.history.storedBytesPerAccountPerDay = 2000 }
        for name in ["alice", "bob"] {
            try await AccountTests.createAccount(name, password: GroupIntegrationTests.passwords[name]!, port: server.ipv4Port)
        }
        let alice = try await GroupIntegrationTests.login("alice", server, caps: IdentityTests.modern)
        // Messages to oneself are stored too: they count against the quota.
        let text = String(repeating: "n", count: 400)
        for number in 1...4 {
            alice.send("PRIVMSG alice :\(number) \(text)")
            try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last?.hasPrefix("\(number) ") == true }
        }
        alice.send("@+pad=\(String(repeating: "t", count: 500)) PRIVMSG bob :\(text)")
        let refused = try await alice.expect(command: "FAIL")
        #expect(refused.parameters.prefix(3) == ["PRIVMSG", "QUOTA_EXCEEDED", "bob"])
        #expect(try await IdentityTests.history(alice, "CHATHISTORY LATEST bob * 10").isEmpty, "nothing of it was stored")

        // MARKREAD only for conversations alice is part of.
        alice.send("MARKREAD somebody-else timestamp=2025-01-01T00:00:00.000Z")
        #expect(try await alice.expect(command: "FAIL").parameters.prefix(3) == ["MARKREAD", "INVALID_TARGET", "somebody-else"])
        alice.send("MARKREAD #nowhere timestamp=2025-01-01T00:00:00.000Z")
        #expect(try await alice.expect(command: "FAIL").parameters.prefix(3) == ["MARKREAD", "INVALID_TARGET", "#nowhere"])
        alice.send("MARKREAD bob timestamp=2025-01-01T00:00:00.000Z")
        #expect(try await alice.expect(command: "MARKREAD").parameters == ["bob", "timestamp=2025-01-01T00:00:00.000Z"])
        await alice.close()
        try await server.shutdownAndRemove()
    }
}
