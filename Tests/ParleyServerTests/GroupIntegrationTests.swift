import Foundation
import IRCWire
import Testing

/// Groups over real sockets with three accounts (carol on ::1), a real SQLite file, and restarts.
@Suite("Groups over real sockets")
struct GroupIntegrationTests {
    static let passwords = ["alice": "alice-password", "bob": "bob-password", "carol": "carol-password", "dave": "dave-password"]

    static func makeServerWithAccounts() async throws -> TestServer {
        let server = try await TestServer()
        for (name, password) in passwords.sorted(by: { $0.key < $1.key }) {
            try await AccountTests.createAccount(name, password: password, port: server.ipv4Port)
        }
        return server
    }

    static func login(_ name: String, _ server: TestServer, ipv6: Bool = false, caps: [String] = []) async throws -> TestClient {
        try await TestClient.registered(
            name, port: ipv6 ? server.ipv6Port : server.ipv4Port, host: ipv6 ? "::1" : "127.0.0.1",
            caps: caps, password: passwords[name])
    }

    @Test func ownerManagesMembersAndMessagesReachExactlyTheMembers() async throws {
        let server = try await Self.makeServerWithAccounts()
        let alice = try await Self.login("alice", server, caps: ["echo-message", "server-time", "message-tags"])
        let bob = try await Self.login("bob", server)
        let carol = try await Self.login("carol", server, ipv6: true)
        let dave = try await Self.login("dave", server)

        alice.send("JOIN #team")
        let names = try await alice.expect(numeric: "353")
        #expect(names.parameters.last == "~alice")
        alice.send("INVITE bob #team")
        alice.send("INVITE carol #team")
        try await bob.expect { $0.command == "JOIN" && $0.parameters.first == "#team" }
        try await carol.expect { $0.command == "JOIN" && $0.parameters.first == "#team" }

        // Owner-only actions from a member and from an outsider are refused.
        bob.send("INVITE dave #team")
        #expect(try await bob.expect(numeric: "482").parameters[1] == "#team")
        bob.send("KICK #team carol")
        try await bob.expect(numeric: "482")
        bob.send("RENAME #team #bobs")
        try await bob.expect(numeric: "482")
        dave.send("JOIN #team")
        try await dave.expect(numeric: "473")
        dave.send("PRIVMSG #team :hello?")
        try await dave.expect(numeric: "404")
        dave.send("MODE #team -i")
        try await dave.expect(numeric: "442")

        // Fan-out: every member sees sender and group; the outsider sees nothing.
        carol.send("PRIVMSG #team :hi from carol over IPv6")
        for member in [alice, bob] {
            let message = try await member.expect { $0.command == "PRIVMSG" }
            #expect(message.source == "carol!~carol@0::1")
            #expect(message.parameters == ["#team", "hi from carol over IPv6"])
        }
        alice.send("PRIVMSG #team :welcome both")
        let echo = try await alice.expect { $0.command == "PRIVMSG" && $0.source?.hasPrefix("alice!") == true }
        #expect(echo.tagValue("msgid") != nil && echo.tagValue("time") != nil)
        for member in [bob, carol] {
            let message = try await member.expect { $0.command == "PRIVMSG" }
            #expect(message.parameters == ["#team", "welcome both"])
            #expect(message.source?.hasPrefix("alice!") == true)
        }
        let outsiderSaw = try await dave.settle().filter { (try? IRCMessage(parsing: $0))?.parameters.first == "#team" }
        #expect(outsiderSaw.isEmpty, "dave is not a member: \(outsiderSaw)")

        // The owner removes carol: she sees the KICK and cannot come back.
        alice.send("KICK #team carol :reorganising")
        let kick = try await carol.expect(command: "KICK")
        #expect(kick.parameters == ["#team", "carol", "reorganising"])
        carol.send("JOIN #team")
        try await carol.expect(numeric: "473")
        bob.send("PRIVMSG #team :carol is gone")
        _ = try await bob.settle()  // bob's message has been handled
        #expect(try await carol.settle().filter { $0.contains("carol is gone") }.isEmpty)

        for client in [alice, bob, carol, dave] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func membershipOwnershipAndTopicSurviveARestartAndMembersAreJoinedAtLogin() async throws {
        let server = try await Self.makeServerWithAccounts()
        var alice = try await Self.login("alice", server)
        alice.send("JOIN #keep")
        try await alice.expect(numeric: "366")
        alice.send("TOPIC #keep :What we keep")
        alice.send("INVITE bob #keep")
        alice.send("INVITE carol #keep")  // carol is offline: joined at her next login
        try await alice.expect { $0.command == "NOTE" && $0.parameters.prefix(2) == ["INVITE", "MEMBER_OFFLINE"] }
        alice.send("MODE #keep +k sesame")
        try await alice.expect { $0.command == "MODE" && $0.parameters.prefix(2) == ["#keep", "+k"] }
        await alice.close()

        try await server.restart()

        // bob logs in over IPv6 and is in the group at once, with its topic and names.
        let bob = try await Self.login("bob", server, ipv6: true)
        let joined = try await bob.expect { $0.command == "JOIN" }
        #expect(joined.parameters.first == "#keep")
        let topic = try await bob.expect(numeric: "332")
        #expect(topic.parameters.last == "What we keep")
        // carol, invited while offline before the restart, is joined too.
        let carol = try await Self.login("carol", server)
        try await carol.expect { $0.command == "JOIN" && $0.parameters.first == "#keep" }
        try await bob.expect { $0.command == "JOIN" && $0.source?.hasPrefix("carol!") == true }

        // Ownership survived: alice still manages the group, bob still cannot.
        alice = try await Self.login("alice", server)
        let aliceNames = try await alice.expect(numeric: "353")
        #expect(aliceNames.parameters.last?.split(separator: " ").contains("~alice") == true)
        bob.send("MODE #keep -k")
        try await bob.expect(numeric: "482")
        alice.send("MODE #keep")
        let modes = try await alice.expect(numeric: "324")
        #expect(modes.parameters.dropFirst(2).first == "+intk")
        alice.send("KICK #keep bob :bye")
        try await bob.expect(command: "KICK")

        try await server.restart()
        let bobAgain = try await Self.login("bob", server)
        #expect(try await bobAgain.settle().filter { $0.contains(" JOIN ") }.isEmpty, "removed members are not joined again")
        for client in [alice, bob, carol, bobAgain] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func renameIsSeenWithAndWithoutTheCapabilityAndSurvivesARestart() async throws {
        let server = try await Self.makeServerWithAccounts()
        let alice = try await Self.login("alice", server, caps: ["draft/channel-rename"])
        let bob = try await Self.login("bob", server, ipv6: true)
        alice.send("JOIN #old")
        try await alice.expect(numeric: "366")
        alice.send("TOPIC #old :Renamed topic")
        alice.send("INVITE bob #old")
        try await bob.expect(numeric: "366")
        bob.send("PRIVMSG #old :before the rename")
        try await alice.expect { $0.command == "PRIVMSG" }

        _ = try await bob.settle()
        alice.send("RENAME #old #new :a better name")
        let rename = try await alice.expect(command: "RENAME")
        #expect(rename.parameters == ["#old", "#new", "a better name"])
        // Without the capability: PART of the old name, JOIN of the new, with topic and names.
        let part = try await bob.expect(command: "PART")
        #expect(part.parameters == ["#old", "a better name"])
        let join = try await bob.expect(command: "JOIN")
        #expect(join.parameters.first == "#new")
        #expect(try await bob.expect(numeric: "332").parameters.last == "Renamed topic")
        #expect(try await bob.expect(numeric: "353").parameters.last == "~alice bob")

        let guest = try await TestClient.registered("guest", port: server.ipv4Port)
        guest.send("JOIN #old")
        let fail = try await guest.expect(command: "FAIL")
        #expect(fail.parameters.prefix(4) == ["JOIN", "CHANNEL_RENAMED", "#old", "#new"])

        // Members, owner and stored messages carried over, also across a restart.
        try await server.restart()
        let bobAgain = try await Self.login("bob", server)
        try await bobAgain.expect { $0.command == "JOIN" && $0.parameters.first == "#new" }
        let stored = try await server.storedMessages(group: "#new")
        #expect(stored.map(\.text) == ["before the rename"])
        for client in [alice, bob, guest, bobAgain] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func openGroupsTransientChannelsAndIrcBasics() async throws {
        let server = try await Self.makeServerWithAccounts()
        let alice = try await Self.login("alice", server, caps: ["multi-prefix", "userhost-in-names"])
        let dave = try await Self.login("dave", server, ipv6: true)
        let guest = try await TestClient.registered("visitor", port: server.ipv4Port)
        alice.send("JOIN #open")
        try await alice.expect(numeric: "366")
        alice.send("MODE #open -i")
        try await alice.expect(command: "MODE")
        dave.send("JOIN #open")
        try await dave.expect(numeric: "366")
        guest.send("JOIN #open")
        try await guest.expect(numeric: "366")
        _ = try await alice.settle()
        alice.send("NAMES #open")
        let names = try await alice.expect(numeric: "353")
        #expect(names.parameters.last == "~@alice!~alice@127.0.0.1 dave!~dave@0::1 visitor!~visitor@127.0.0.1")
        alice.send("LIST")
        let listed = try await alice.expect(numeric: "322")
        #expect(listed.parameters.prefix(3) == ["alice", "#open", "3"])

        // A guest's channel is transient: it is not stored and ends with its last user.
        guest.send("JOIN #lounge")
        try await guest.expect(numeric: "366")
        guest.send("PART #lounge")
        try await guest.expect(command: "PART")
        try await server.restart()
        let groups = try await server.storedGroups()
        #expect(groups.map(\.name) == ["#open"])
        #expect(Set(groups.first?.members.keys.map { $0 } ?? []) == ["alice", "dave"], "dave joined the open group and is a member")
        for client in [alice, dave, guest] { await client.close() }
        try await server.shutdownAndRemove()
    }
}
