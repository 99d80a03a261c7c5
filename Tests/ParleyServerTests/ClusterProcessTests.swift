import Foundation
import IRCWire
import ParleyStorePostgres
import PostgresTestSupport
import Testing

/// Several `parley-server` processes on one PostgreSQL database behave as one server: each test
/// starts real nodes (`--node-name`) on a fresh database and talks to them over real sockets.
///
/// Nodes learn of each other's users through the database, a moment after it happens; where a
/// test needs that to have happened it waits for something a user sees (MONITOR's 730), never
/// for a fixed time.
@Suite("Several nodes on one PostgreSQL", .serialized)
struct ClusterProcessTests {
    static let caps = ["message-tags", "server-time", "echo-message", "parley.chat/receipts", "draft/read-marker", "batch"]

    struct Cluster {
        let directory: URL
        let config: URL
        let database: PostgresDatabaseURL
        var nodes: [ServerProcess] = []

        mutating func start(_ name: String) async throws -> ServerProcess {
            let node = try await ServerProcess(dataDirectory: directory, configFile: config, arguments: ["--node-name", name])
            nodes.append(node)
            return node
        }
    }

    static func makeCluster(accounts: [String]) async throws -> (Cluster, drop: @Sendable () async throws -> Void) {
        let (url, drop) = try await TestPostgres.freshDatabase()
        let (directory, config) = try PostgresServerTests.makeConfig(database: url)
        for name in accounts {
            let created = try ServerProcess.run(["account", "create", name, "--database", url.description], input: "\(name)-password\n")
            #expect(created.status == 0, "\(created.errors)")
        }
        return (Cluster(directory: directory, config: config, database: url), drop)
    }

    /// Each client joins `channel` in turn (seeing its own JOIN) while the nodes cannot hear each
    /// other: a lock on `cluster_events` holds every payload back until all have joined.
    static func join(_ channel: String, _ clients: [TestClient], whileNodesCannotHearEachOtherIn database: PostgresDatabaseURL) async throws {
        try await HeldTransaction.holding("LOCK TABLE cluster_events IN SHARE MODE", on: database) {
            for client in clients {
                client.send("JOIN \(channel)")
                try await client.expect { $0.command == "JOIN" && $0.parameters.first == channel }
            }
        }
    }

    /// Waits until `watcher`'s node knows `nick` is online somewhere in the cluster.
    static func waitUntilOnline(_ nick: String, seenBy watcher: TestClient) async throws {
        watcher.send("MONITOR + \(nick)")
        try await watcher.expect(timeout: .seconds(20), "\(nick) online") { $0.command == "730" && $0.parameters.last?.hasPrefix(nick + "!") == true }
        watcher.send("MONITOR - \(nick)")
    }

    /// Asks WHOIS until `watcher`'s node says `nick` is logged in (330): the poll ends on the
    /// condition, within `timeout`.
    static func waitUntilLoggedIn(_ nick: String, seenBy watcher: TestClient, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            watcher.send("WHOIS \(nick)")
            let reply = try await watcher.lines(through: { $0.command == "318" }, "end of WHOIS")
            if reply.contains(where: { $0.command == "330" }) { return }
            guard ContinuousClock.now < deadline else { throw ServerProcess.Failure(description: "\(nick) never showed as logged in") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    @Test func usersOnThreeNodesTalkAsOnOneServer() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice", "bob", "carol"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")
        let n3 = try await cluster.start("n3")

        let alice = try await TestClient.registered("alice", port: n1.ports[0], caps: Self.caps, password: "alice-password")
        let bob = try await TestClient.registered("bob", port: n2.ports[0], caps: Self.caps, password: "bob-password")
        let carol = try await TestClient.registered("carol", port: n3.ports[1], host: "::1", caps: Self.caps, password: "carol-password")
        try await Self.waitUntilOnline("bob", seenBy: alice)
        try await Self.waitUntilOnline("carol", seenBy: alice)
        try await Self.waitUntilOnline("alice", seenBy: carol)

        // A direct message: the same line as on one node, delivered and read receipts back.
        alice.send("PRIVMSG bob :hello from n1")
        let echo = try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "hello from n1" }
        let received = try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == "hello from n1" }
        #expect(received.source?.description.hasPrefix("alice!") == true)
        #expect(received.tagValue("msgid") == echo.tagValue("msgid"), "one message, one id on both nodes")
        #expect(received.tagValue("msgid")?.hasPrefix("n1.") == true, "message ids name the node: \(received)")
        try await alice.expect(timeout: .seconds(10), "delivered receipt") { $0.command == "RECEIPT" && $0.parameters.contains("delivered") }
        bob.send("MARKREAD alice timestamp=\(received.tagValue("time")!)")
        try await alice.expect(timeout: .seconds(10), "read receipt") { $0.command == "RECEIPT" && $0.parameters.contains("read") }

        // WHOIS of a user on another node.
        alice.send("WHOIS carol")
        let whois = try await alice.expect(numeric: "311")
        #expect(whois.parameters[1] == "carol")

        // A group: created on n1, members on n2 and n3, everyone hears everyone.
        alice.send("JOIN #team")
        try await alice.expect { $0.command == "JOIN" }
        alice.send("INVITE bob #team")
        alice.send("INVITE carol #team")
        try await bob.expect(timeout: .seconds(10), "bob joined") { $0.command == "JOIN" && $0.parameters.first == "#team" }
        try await carol.expect(timeout: .seconds(10), "carol joined") { $0.command == "JOIN" && $0.parameters.first == "#team" }
        carol.send("PRIVMSG #team :hello from n3")
        carol.send("PING :sent")
        let carolSaw = try await carol.lines(through: { $0.command == "PONG" }, "PONG")
        let refusals = carolSaw.filter { ["404", "442", "403", "FAIL"].contains($0.command) }
        #expect(refusals.isEmpty, "\(refusals)")
        #expect(carolSaw.contains { $0.command == "PRIVMSG" && $0.parameters.last == "hello from n3" }, "stored (a group made on n1), so echoed: \(carolSaw)")
        for member in [alice, bob] {
            let line = try await member.expect(timeout: .seconds(10), "carol's group message") { $0.command == "PRIVMSG" && $0.parameters.last == "hello from n3" }
            #expect(line.parameters.first == "#team" && line.source?.description.hasPrefix("carol!") == true)
        }
        // History read on n2 of a group made on n1 with a message stored by n3.
        bob.send("CHATHISTORY LATEST #team * 10")
        let history = try await bob.lines(through: { $0.command == "BATCH" && $0.parameters.first?.hasPrefix("-") == true }, "history batch")
        #expect(history.contains { $0.command == "PRIVMSG" && $0.parameters.last == "hello from n3" && $0.source?.description.hasPrefix("carol!") == true },
                "\(history)")
        bob.send("PING :before-names")
        try await bob.skip(through: { $0.command == "PONG" }, "PONG")
        bob.send("NAMES #team")
        let names = try await bob.expect(numeric: "353")
        #expect(["alice", "bob", "carol"].allSatisfy { names.parameters.last?.contains($0) == true }, "\(names)")

        // Nicks are unique across nodes, guests' too.
        let zed = try await TestClient.registered("zed", port: n1.ports[0])
        try await Self.waitUntilOnline("zed", seenBy: carol)
        let impostor = try await TestClient.connect(port: n3.ports[0])
        impostor.send("NICK zed")
        impostor.send("USER z 0 * :z")
        try await impostor.expect(numeric: "433")

        for client in [alice, bob, carol, zed, impostor] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2, n3])
        try await drop()
    }

    /// Members who join a group on n2 get a message alice sends through n1 before n1 heard of
    /// their JOIN, live: n2 writes the group's lines to its own members from its own member
    /// list. A lock on `cluster_events` holds every payload back (n2's news of the JOINs
    /// included) until alice's message is decided and stored; it was then found only in the
    /// group's history.
    @Test func aGroupMessageSentBeforeItsNodeHeardOfAJoinReachesTheNewMemberLive() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceAndBobOnTwoNodes()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let gus = try await TestClient.registered("gus", port: n2.ports[0], caps: ["server-time"])
        try await Self.waitUntilOnline("bob", seenBy: alice)
        alice.send("JOIN #open")
        alice.send("MODE #open -i")
        try await alice.expect { $0.command == "MODE" && $0.parameters.first == "#open" }
        // n2 has the group open once it has alice's next line (n1 sends in order).
        alice.send("PRIVMSG bob :ready")
        try await bob.expect(timeout: .seconds(10), "alice's line") { $0.command == "PRIVMSG" && $0.parameters.last == "ready" }

        let sent = try await HeldTransaction.holding("LOCK TABLE cluster_events IN SHARE MODE", on: cluster.database) {
            for member in [bob, gus] {
                member.send("JOIN #open")
                try await member.expect { $0.command == "JOIN" && $0.parameters.first == "#open" }
            }
            alice.send("PRIVMSG #open :before n1 heard of you")
            // The echo: decided and stored on n1, while n2's news of the JOINs waits.
            return try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "before n1 heard of you" }
        }

        // Once n1 has heard of the JOINs (their lines to alice), a second message: each must
        // have had the first before it, once.
        for nick in ["bob", "gus"] {
            try await alice.expect(timeout: .seconds(20), "\(nick)'s JOIN") { $0.command == "JOIN" && $0.source?.description.hasPrefix(nick + "!") == true }
        }
        alice.send("PRIVMSG #open :after")
        let bobSaw = try await bob.lines(through: { $0.command == "PRIVMSG" && $0.parameters.last == "after" }, "the second message",
                                         timeout: .seconds(20))
        let first = bobSaw.filter { $0.command == "PRIVMSG" && $0.parameters.last == "before n1 heard of you" }
        #expect(first.count == 1, "live, once: \(bobSaw)")
        #expect(first.first?.tagValue("msgid") == sent.tagValue("msgid") && first.first?.parameters.first == "#open"
                && first.first?.source?.description.hasPrefix("alice!") == true, "the same line: \(first)")
        // gus, a guest with server-time only, gets the tags of his capabilities: the time alone.
        let gusSaw = try await gus.lines(through: { $0.command == "PRIVMSG" && $0.parameters.last == "after" }, "the second message",
                                         timeout: .seconds(20))
        let gusFirst = gusSaw.filter { $0.command == "PRIVMSG" && $0.parameters.last == "before n1 heard of you" }
        #expect(gusFirst.count == 1, "live, once: \(gusSaw)")
        #expect(gusFirst.first?.tags.map(\.key) == ["time"] && gusFirst.first?.tagValue("time") == sent.tagValue("time"), "\(gusFirst)")

        for client in [alice, bob, gus] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    /// Two guests who join one channel on two nodes while the nodes cannot hear each other
    /// (each node makes the channel for its own user) see each other's JOIN once the nodes
    /// catch up, once each: each node writes the lines of the other's JOIN to its own users
    /// when it runs it. Before, each node had written the JOIN line to the members it knew,
    /// none on the other node, so neither saw the other arrive.
    @Test func guestsJoiningOneChannelOnTwoNodesAtOnceSeeEachOther() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: [])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")
        let gus = try await TestClient.registered("gus", port: n1.ports[0], caps: [])
        let ida = try await TestClient.registered("ida", port: n2.ports[0], caps: [])
        try await Self.waitUntilOnline("ida", seenBy: gus)

        try await Self.join("#both", [gus, ida], whileNodesCannotHearEachOtherIn: cluster.database)

        try await gus.expect(timeout: .seconds(20), "ida's JOIN") { $0.command == "JOIN" && $0.source?.description.hasPrefix("ida!") == true }
        try await ida.expect(timeout: .seconds(20), "gus's JOIN") { $0.command == "JOIN" && $0.source?.description.hasPrefix("gus!") == true }
        // Once each: a message from each after the JOINs comes after no second JOIN line.
        gus.send("PRIVMSG #both :hello ida")
        let idaSaw = try await ida.lines(through: { $0.command == "PRIVMSG" && $0.parameters.last == "hello ida" }, "gus's message",
                                         timeout: .seconds(20))
        #expect(!idaSaw.contains { $0.command == "JOIN" }, "\(idaSaw)")
        ida.send("PRIVMSG #both :hello gus")
        let gusSaw = try await gus.lines(through: { $0.command == "PRIVMSG" && $0.parameters.last == "hello gus" }, "ida's message",
                                         timeout: .seconds(20))
        #expect(!gusSaw.contains { $0.command == "JOIN" }, "\(gusSaw)")

        for client in [gus, ida] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    /// Two accounts who make one group on two nodes while the nodes cannot hear each other
    /// (each node makes it for its own user, owned by that user) end with one group on every
    /// node and in the database: owned by the one who made it first, the other a plain member
    /// who is told why. Before, each node kept its own owner, and the database the last
    /// writer's, with the other creator's membership row lost or both rows owners.
    @Test func accountsMakingOneGroupOnTwoNodesAtOnceEndWithOneOwner() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceAndBobOnTwoNodes()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        try await Self.waitUntilOnline("bob", seenBy: alice)

        try await Self.join("#both", [alice, bob], whileNodesCannotHearEachOtherIn: cluster.database)

        // alice's group was made first: bob learns he is a member of it, and why.
        let mode = try await bob.expect(timeout: .seconds(20), "the owner's MODE") { $0.command == "MODE" && $0.parameters.first == "#both" }
        #expect(mode.parameters.dropFirst().map { $0 } == ["+q-q", "alice", "bob"], "\(mode)")
        let notice = try await bob.expect { $0.command == "NOTICE" }
        #expect(notice.parameters.last?.contains("alice made it first") == true, "\(notice)")
        try await alice.expect(timeout: .seconds(20), "bob's JOIN") { $0.command == "JOIN" && $0.source?.description.hasPrefix("bob!") == true }

        for (client, node) in [(alice, "n1"), (bob, "n2")] {
            // The NAMES of the JOIN first (each was the owner then).
            let before = try await client.expect(numeric: "353")
            #expect(before.parameters.last?.hasPrefix("~") == true, "\(node): \(before)")
            try await client.expect(numeric: "366")
            client.send("NAMES #both")
            let names = try await client.expect(numeric: "353")
            #expect(Set(names.parameters.last?.split(separator: " ").map(String.init) ?? []) == ["~alice", "bob"], "\(node): \(names)")
        }
        // Only the owner manages the member list, on either node.
        bob.send("KICK #both alice")
        let refused = try await bob.expect { $0.command == "482" }
        #expect(refused.parameters.contains("#both"), "\(refused)")

        // The database keeps the same group: alice owns it, both are members, one owner (both
        // nodes store the settled group once they have heard of both claims).
        try await Self.waitForValue("""
            SELECT (SELECT a.name FROM groups g JOIN accounts a ON a.id = g.owner_id WHERE g.key = '#both') || ' ' ||
                   (SELECT string_agg(a.name || ':' || m.role, ',' ORDER BY a.name) FROM group_members m
                    JOIN accounts a ON a.id = m.account_id JOIN groups g ON g.id = m.group_id WHERE g.key = '#both')
            """, on: cluster.database, "the group as alice's") { $0 == "alice alice:3,bob:0" }  // roles: 3 owner, 0 member

        for client in [alice, bob] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    @Test func aKilledNodeIsNoticedAndItsUsersMessagesWaitForThem() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice", "bob"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")
        let n3 = try await cluster.start("n3")

        let alice = try await TestClient.registered("alice", port: n1.ports[0], caps: Self.caps, password: "alice-password")
        let bob = try await TestClient.registered("bob", port: n2.ports[0], caps: Self.caps, password: "bob-password")
        alice.send("MONITOR + bob")
        // (A 731 may come first, when n1 has not heard of bob yet.)
        try await alice.skip(through: { $0.command == "730" }, "bob online", timeout: .seconds(20))

        n2.signal(SIGKILL)
        _ = try await bob.expectClosed(timeout: .seconds(10))
        // Noticed within a minute (the liveness check runs every few seconds).
        try await alice.expect(timeout: .seconds(60), "bob offline") { $0.command == "731" }
        alice.send("PRIVMSG bob :are you there?")
        let offline = try await alice.expect { $0.command == "NOTE" || $0.command == "WARN" || $0.command == "FAIL" }
        #expect(offline.parameters.contains("RECIPIENT_OFFLINE"), "\(offline)")

        // bob comes back on another node and gets the message, once.
        let back = try await TestClient.connect(port: n3.ports[0])
        back.send("CAP LS 302")
        back.send("CAP REQ :\(Self.caps.joined(separator: " "))")
        back.send("PASS :bob:bob-password")
        back.send("NICK bob")
        back.send("USER bob 0 * :Bob")
        back.send("CAP END")
        let missed = try await back.expect(timeout: .seconds(10), "the missed message") { $0.command == "PRIVMSG" && $0.parameters.last == "are you there?" }
        #expect(missed.source?.description.hasPrefix("alice!") == true)
        back.send("PING :after")
        let rest = try await back.lines(through: { $0.command == "PONG" }, "PONG")
        #expect(!rest.contains { $0.parameters.last == "are you there?" }, "delivered once")

        // The killed node's name can start again, and its users come back without duplicates.
        let restarted = try await cluster.start("n2")
        let bob2 = try await TestClient.registered("bob", port: restarted.ports[0], caps: Self.caps, password: "bob-password")
        bob2.send("PING :settled")
        let afterRestart = try await bob2.lines(through: { $0.command == "PONG" }, "PONG")
        #expect(!afterRestart.contains { $0.parameters.last == "are you there?" }, "not delivered again after the restart")

        for client in [alice, back, bob2] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n3, restarted])
        try await drop()
    }

    @Test func anAccountMadeAnywhereLogsInEverywhereAtOnce() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")

        // Created with REGISTER on n1, then logged in on n2 (and a second session kept on n1).
        let dave = try await TestClient.registered("dave", port: n1.ports[0], caps: ["draft/account-registration"])
        dave.send("REGISTER * dave-password")
        try await dave.expect { $0.command == "REGISTER" && $0.parameters.first == "SUCCESS" }
        let alice = try await TestClient.registered("alice", port: n2.ports[0], caps: Self.caps, password: "alice-password")
        // Once n2 has heard of dave's login, it has heard of his account (n1 sent both, in order).
        try await Self.waitUntilLoggedIn("dave", seenBy: alice)
        let daveOnN2 = try await TestClient.registered("dave", port: n2.ports[0], caps: Self.caps, password: "dave-password")
        // dave's account was made on n1 after n2 started: n2 stores his messages all the same.
        daveOnN2.send("PRIVMSG alice :from dave on n2")
        let daveEcho = try await daveOnN2.expect { ($0.command == "PRIVMSG" && $0.parameters.last == "from dave on n2") || $0.command == "FAIL" }
        #expect(daveEcho.command == "PRIVMSG", "\(daveEcho)")
        alice.send("PRIVMSG dave :to both of your sessions")
        try await daveOnN2.expect(timeout: .seconds(10), "on n2") { $0.command == "PRIVMSG" && $0.parameters.last == "to both of your sessions" }
        try await dave.expect(timeout: .seconds(10), "on n1") { $0.command == "PRIVMSG" && $0.parameters.last == "to both of your sessions" }

        // Accounts made on both nodes one after the other (their ids interleave in the table):
        // each node still stores messages between them.
        let frank = try await TestClient.registered("frank", port: n2.ports[0], caps: ["draft/account-registration"] + Self.caps)
        frank.send("REGISTER * frank-password")
        try await frank.expect { $0.command == "REGISTER" && $0.parameters.first == "SUCCESS" }
        try await Self.waitUntilLoggedIn("frank", seenBy: dave)
        let gina = try await TestClient.registered("gina", port: n1.ports[0], caps: ["draft/account-registration"] + Self.caps)
        gina.send("REGISTER * gina-password")
        try await gina.expect { $0.command == "REGISTER" && $0.parameters.first == "SUCCESS" }
        gina.send("PRIVMSG frank :hello frank")
        let ginaEcho = try await gina.expect { ($0.command == "PRIVMSG" && $0.parameters.last == "hello frank") || $0.command == "FAIL" }
        #expect(ginaEcho.command == "PRIVMSG", "stored on n1 although frank's account was made on n2: \(ginaEcho)")
        try await frank.expect(timeout: .seconds(10), "gina's message") { $0.command == "PRIVMSG" && $0.parameters.last == "hello frank" }
        await frank.close()
        await gina.close()

        // Created by the admin command while the nodes run: it returns once they have it.
        let created = try ServerProcess.run(["account", "create", "erin", "--database", cluster.database.description], input: "erin-password\n")
        #expect(created.status == 0, "\(created.errors)")
        let erin = try await TestClient.registered("erin", port: n2.ports[1], host: "::1", password: "erin-password")
        // A new password takes effect on the running nodes at once; the old one stops working.
        let reset = try ServerProcess.run(["account", "reset-password", "erin", "--database", cluster.database.description], input: "erin-new-password\n")
        #expect(reset.status == 0, "\(reset.errors)")
        let old = try await TestClient.connect(port: n1.ports[0])
        old.send("PASS :erin:erin-password")
        old.send("NICK erin")
        old.send("USER e 0 * :e")
        try await old.expect(numeric: "464")
        let fresh = try await TestClient.registered("erin", port: n1.ports[0], password: "erin-new-password")

        for client in [dave, alice, daveOnN2, erin, old, fresh] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    @Test func whileTheDatabaseIsDownNodesKeepTheirUsersAndRefuseWhatNeedsIt() async throws {
        let postgres = try await DedicatedPostgres.make()
        try await TestPostgres.execute("CREATE DATABASE parley", on: postgres.url)
        let url = postgres.url.with(database: "parley")
        let (directory, config) = try PostgresServerTests.makeConfig(database: url)
        defer { try? FileManager.default.removeItem(at: directory) }
        for name in ["alice", "bob"] {
            let created = try ServerProcess.run(["account", "create", name, "--database", url.description], input: "\(name)-password\n")
            #expect(created.status == 0, "\(created.errors)")
        }
        let n1 = try await ServerProcess(dataDirectory: directory, configFile: config, arguments: ["--node-name", "n1"])
        let n2 = try await ServerProcess(dataDirectory: directory, configFile: config, arguments: ["--node-name", "n2"])
        let caps = Self.caps + ["labeled-response"]
        let alice = try await TestClient.registered("alice", port: n1.ports[0], caps: caps, password: "alice-password")
        let bob = try await TestClient.registered("bob", port: n2.ports[0], caps: caps, password: "bob-password")
        try await Self.waitUntilOnline("bob", seenBy: alice)

        try postgres.crash()
        alice.send("@label=down PRIVMSG bob :while the database is down")
        let refused = try await alice.expect(timeout: .seconds(15), "the refusal") { $0.tagValue("label") == "down" }
        #expect(refused.command == "FAIL" && refused.parameters.contains("STORAGE_FAILED"), "\(refused)")
        alice.send("PING :still-here")
        try await alice.expect { $0.command == "PONG" }
        #expect(!alice.isClosed && !bob.isClosed, "connections are kept")
        // A group made meanwhile: it exists at once, and is stored once the database is back.
        alice.send("JOIN #madewhiledown")
        try await alice.expect { $0.command == "JOIN" && $0.parameters.first == "#madewhiledown" }

        try postgres.restart()
        // Recovery is the nodes' own: the first message that is stored again goes through,
        // with its echo to alice and its line to bob on the other node.
        var delivered = false
        for attempt in 1...60 where !delivered {
            alice.send("@label=try\(attempt) PRIVMSG bob :after recovery \(attempt)")
            let reply = try await alice.expect(timeout: .seconds(15), "reply \(attempt)") { $0.tagValue("label") == "try\(attempt)" }
            // The echo, alone or in a labeled batch with the delivery receipt.
            if reply.command != "FAIL" {
                delivered = true
                try await bob.expect(timeout: .seconds(15), "the message on n2") { $0.command == "PRIVMSG" && $0.parameters.last == "after recovery \(attempt)" }
            } else {
                try await Task.sleep(for: .milliseconds(250))  // polling for recovery, not waiting on it
            }
        }
        #expect(delivered, "storage recovered by itself: \(n1.logText.suffix(2000))")
        // Before, the group's row was dropped with the failed commit: it lived in memory only
        // and was gone at the next restart.
        let members = "SELECT count(*)::text FROM group_members m JOIN groups g ON g.id = m.group_id WHERE g.key = '#madewhiledown'"
        try await Self.waitForValue(members, on: url, "the group made while the database was down, stored with its member") { $0 == "1" }

        for client in [alice, bob] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
    }

    @Test func aNodeNameHeldByARunningNodeIsRefused() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: [])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let second = try ServerProcess.run(["serve", "--config", cluster.config.path, "--node-name", "n1", "--listen", "127.0.0.1:0"])
        #expect(second.status != 0)
        #expect(second.errors.contains("node name n1 is held by a running node"), "\(second.errors)")
        #expect(second.errors.split(separator: "\n").count <= 2, "one clear line: \(second.errors)")
        let noDatabase = try ServerProcess.run(["serve", "--node-name", "n9", "--listen", "127.0.0.1:0"])
        #expect(noDatabase.status != 0 && noDatabase.errors.contains("--database"), "\(noDatabase.errors)")
        n1.signal(SIGTERM)
        #expect(try await n1.waitForExit(timeout: .seconds(15)) == 0)
        try await drop()
    }
}
