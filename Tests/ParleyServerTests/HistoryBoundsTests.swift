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
}
