import Foundation
import IRCWire
import ParleyStorePostgres
import PostgresTestSupport
import Testing

/// What becomes of messages when a node dies, or is only taken for dead: every message reaches
/// its recipient once, live or at the next login on any node. (In the serialized suite of
/// `ClusterProcessTests`: these start several nodes too.)
extension ClusterProcessTests {
    /// Logs in without skipping the welcome burst: what was missed may come within it.
    static func login(_ nick: String, port: Int) async throws -> TestClient {
        let client = try await TestClient.connect(port: port)
        client.send("CAP LS 302")
        client.send("CAP REQ :\(caps.joined(separator: " "))")
        client.send("PASS :\(nick):\(nick)-password")
        client.send("NICK \(nick)")
        client.send("USER \(nick) 0 * :\(nick)")
        client.send("CAP END")
        try await client.expect(numeric: "001")
        return client
    }

    /// Two nodes on a fresh database with the accounts alice and bob, alice logged in through n1
    /// and bob through n2 (the caller removes `cluster.directory` and calls `drop` at the end).
    static func aliceAndBobOnTwoNodes() async throws
        -> (cluster: Cluster, drop: @Sendable () async throws -> Void, n1: ServerProcess, n2: ServerProcess, alice: TestClient, bob: TestClient) {
        var (cluster, drop) = try await makeCluster(accounts: ["alice", "bob"])
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")
        let alice = try await TestClient.registered("alice", port: n1.ports[0], caps: caps, password: "alice-password")
        let bob = try await TestClient.registered("bob", port: n2.ports[0], caps: caps, password: "bob-password")
        return (cluster, drop, n1, n2, alice, bob)
    }

    /// Two nodes on a fresh database, alice logged in on n1 and bob on n2, and n1 knowing that
    /// bob is online (alice MONITORs him).
    static func aliceOnN1BobOnN2() async throws
        -> (cluster: Cluster, drop: @Sendable () async throws -> Void, n1: ServerProcess, n2: ServerProcess, alice: TestClient, bob: TestClient) {
        let (cluster, drop, n1, n2, alice, bob) = try await aliceAndBobOnTwoNodes()
        alice.send("MONITOR + bob")
        try await alice.skip(through: { $0.command == "730" && $0.parameters.last?.hasPrefix("bob!") == true }, "bob online", timeout: .seconds(20))
        return (cluster, drop, n1, n2, alice, bob)
    }

    /// alice makes the group #team and adds bob, who is on another node; returns once bob is in.
    static func aliceMakesTeam(_ alice: TestClient, adding bob: TestClient) async throws {
        alice.send("JOIN #team")
        try await alice.expect { $0.command == "JOIN" }
        alice.send("INVITE bob #team")
        try await bob.expect(timeout: .seconds(10), "bob joined") { $0.command == "JOIN" && $0.parameters.first == "#team" }
    }

    /// Terminates the database connection that holds `node`'s liveness lock (in this test's
    /// database only: `pg_locks` lists every database's), as a network cut would.
    static func dropLivenessConnection(of node: String, in cluster: Cluster) async throws {
        try await TestPostgres.execute("""
            SELECT pg_terminate_backend(pid) FROM pg_locks
            WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND objsubid = 2 AND classid::text = '\(PostgresClusterLink.lockClass)'
              AND objid::text = (SELECT number::text FROM cluster_nodes WHERE name = '\(node)')
            """, on: cluster.database)
    }

    /// Expects each of `texts` once among what `client` received and receives up to a PING's answer.
    static func expectOnce(_ texts: String..., at client: TestClient, timeout: Duration = .seconds(20)) async throws {
        for text in texts {
            let line = try await client.expect(timeout: timeout, "\(text)") { $0.command == "PRIVMSG" && $0.parameters.last == text }
            #expect(line.source?.description.hasPrefix("alice!") == true, "\(line)")
        }
        client.send("PING :once")
        let rest = try await client.lines(through: { $0.command == "PONG" && $0.parameters.last == "once" }, "PONG")
        #expect(!rest.contains { $0.command == "PRIVMSG" && texts.contains($0.parameters.last ?? "") }, "delivered once: \(rest)")
    }

    @Test func aMessageSentToADeadNodeBeforeItIsNoticedWaitsForItsRecipient() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        try await Self.aliceMakesTeam(alice, adding: bob)

        n2.signal(SIGKILL)
        _ = try await bob.expectClosed(timeout: .seconds(10))
        // n1 checks its peers every few seconds: for now bob still counts as online there, so
        // these go to n2's connection, which is gone.
        alice.send("PRIVMSG bob :into the gap")
        alice.send("PRIVMSG #team :also into the gap")
        try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "into the gap" }
        try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "also into the gap" }
        try await alice.expect(timeout: .seconds(60), "bob offline") { $0.command == "731" }
        // The sender learns that the deliveries did not happen after all.
        for _ in 0..<2 {
            let deferred = try await alice.expect(timeout: .seconds(20), "delivery deferred") { $0.command == "NOTE" && $0.parameters.contains("DELIVERY_DEFERRED") }
            #expect(deferred.parameters.prefix(3) == ["PRIVMSG", "DELIVERY_DEFERRED", "bob"], "\(deferred)")
        }

        let back = try await Self.login("bob", port: n1.ports[0])
        try await Self.expectOnce("into the gap", "also into the gap", at: back)

        for client in [alice, back] { await client.close() }
        try await ServerProcess.stopCleanly([n1])
        try await drop()
    }

    @Test func whatADeadNodeHeldForOfflineUsersIsDeliveredByAnotherOnce() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice", "bob", "carol"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")

        // alice on n2 writes to bob, who is offline: n2 holds the message for him.
        let alice = try await TestClient.registered("alice", port: n2.ports[0], caps: Self.caps, password: "alice-password")
        let carol = try await TestClient.registered("carol", port: n1.ports[0], caps: Self.caps, password: "carol-password")
        alice.send("PRIVMSG bob :held by n2")
        let offline = try await alice.expect { $0.command == "NOTE" }
        #expect(offline.parameters.contains("RECIPIENT_OFFLINE"), "\(offline)")
        carol.send("MONITOR + alice")
        try await carol.skip(through: { $0.command == "730" }, "alice online", timeout: .seconds(20))

        // n2 dies and does not come back (for now): n1 takes over what it held.
        n2.signal(SIGKILL)
        try await carol.expect(timeout: .seconds(60), "alice offline") { $0.command == "731" }
        let bob = try await Self.login("bob", port: n1.ports[0])
        try await Self.expectOnce("held by n2", at: bob)
        await bob.close()

        // n2 starts again: it does not deliver it a second time.
        let restarted = try await cluster.start("n2")
        let bobAgain = try await Self.login("bob", port: restarted.ports[0])
        bobAgain.send("PING :settled")
        let afterRestart = try await bobAgain.lines(through: { $0.command == "PONG" }, "PONG")
        #expect(!afterRestart.contains { $0.parameters.last == "held by n2" }, "not delivered again: \(afterRestart)")

        for client in [alice, carol, bobAgain] { await client.close() }
        try await ServerProcess.stopCleanly([n1, restarted])
        try await drop()
    }

    /// Read receipts due to an author whose node died: the node that notices the death follows
    /// the messages sent through it, and the author gets each read receipt once at their next
    /// login on another node, for a read made before the death was noticed (a direct message)
    /// and one made after (a group message).
    @Test func readReceiptsDueToAnAuthorWhoseNodeDiedReachThemAtTheirNextLogin() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        try await Self.aliceMakesTeam(alice, adding: bob)
        alice.send("PRIVMSG bob :read me")
        alice.send("PRIVMSG #team :read me too")
        let direct = try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == "read me" }
        let inGroup = try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == "read me too" }
        let directID = try #require(direct.tagValue("msgid"))
        let groupID = try #require(inGroup.tagValue("msgid"))
        for id in [directID, groupID] {
            try await alice.expect(timeout: .seconds(10), "delivered receipt") { $0.command == "RECEIPT" && $0.parameters.dropFirst().first == id }
        }
        bob.send("MONITOR + alice")
        try await bob.skip(through: { $0.command == "730" }, "alice online", timeout: .seconds(20))

        n1.signal(SIGKILL)
        _ = try await alice.expectClosed(timeout: .seconds(10))
        // Before n2 notices (it checks its peers every few seconds), bob reads alice's message...
        bob.send("MARKREAD alice timestamp=\(try #require(direct.tagValue("time")))")
        try await bob.expect(command: "MARKREAD")
        try await bob.expect(timeout: .seconds(60), "alice offline") { $0.command == "731" }
        // ... and after, the group's.
        bob.send("MARKREAD #team timestamp=\(try #require(inGroup.tagValue("time")))")
        try await bob.expect(command: "MARKREAD")

        let aliceBack = try await Self.login("alice", port: n2.ports[0])
        var awaited: Set<String> = [directID, groupID]
        while !awaited.isEmpty {
            let waiting = awaited
            let receipt = try await aliceBack.expect(timeout: .seconds(20), "read receipts of \(waiting) (direct \(directID), group \(groupID)); n2: \(n2.logText)") {
                $0.command == "RECEIPT" && waiting.contains($0.parameters.dropFirst().first ?? "") && $0.parameters.dropFirst(2).first == "read"
            }
            #expect(receipt.parameters.dropFirst(3).first == "bob", "\(receipt)")
            awaited.remove(receipt.parameters[1])
        }
        aliceBack.send("PING :once")
        let rest = try await aliceBack.lines(through: { $0.command == "PONG" && $0.parameters.last == "once" }, "PONG")
        #expect(!rest.contains { $0.command == "RECEIPT" && $0.parameters.dropFirst(2).first == "read" }, "each read receipt once: \(rest)")

        for client in [bob, aliceBack] { await client.close() }
        try await ServerProcess.stopCleanly([n2])
        try await drop()
    }

    /// bob reads a group message of alice's after her node n1 died but before n2 noticed: n1
    /// never took the read (it comes back with the rest of what was sent to n1), so n2, which
    /// follows n1's messages from then on, sends alice the read receipt once at her next login,
    /// though bob's stored position says the message was read before. Before, it was never sent.
    @Test func aGroupReadADeadNodeNeverTookReachesTheAuthorAtTheirNextLogin() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        try await Self.aliceMakesTeam(alice, adding: bob)
        alice.send("PRIVMSG #team :read me before they notice")
        let inGroup = try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == "read me before they notice" }
        let id = try #require(inGroup.tagValue("msgid"))
        try await alice.expect(timeout: .seconds(10), "delivered receipt") { $0.command == "RECEIPT" && $0.parameters.dropFirst().first == id }
        bob.send("MONITOR + alice")
        try await bob.skip(through: { $0.command == "730" }, "alice online", timeout: .seconds(20))

        n1.signal(SIGKILL)
        _ = try await alice.expectClosed(timeout: .seconds(10))
        bob.send("MARKREAD #team timestamp=\(try #require(inGroup.tagValue("time")))")
        let beforeTheNotice = try await bob.lines(through: { $0.command == "MARKREAD" && $0.parameters.first == "#team" }, "MARKREAD #team")
        #expect(!beforeTheNotice.contains { $0.command == "731" }, "bob read before n2 noticed: \(beforeTheNotice)")
        try await bob.expect(timeout: .seconds(60), "alice offline") { $0.command == "731" }
        try await Self.waitForValue("SELECT followed_by FROM cluster_nodes WHERE name = 'n1'", on: cluster.database,
                                    "n2 follows n1's messages", timeout: .seconds(30)) { $0 == "n2" }

        let aliceBack = try await Self.aliceGetsBobsReadReceiptOnce(of: id, on: n2)
        for client in [bob, aliceBack] { await client.close() }
        try await ServerProcess.stopCleanly([n2])
        try await drop()
    }

    /// The node that followed a dead node's messages dies in turn: the node that notices that
    /// takes over what it followed too, and the author gets the read receipt of a message sent
    /// through the first dead node once, at their next login. Before, nobody followed it any more
    /// and the receipt was never sent.
    @Test func readReceiptsDueToAnAuthorWhoseNodeAndItsFollowerDiedReachThemAtTheirNextLogin() async throws {
        let (cluster0, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        // n1 dies: n2, the only other node, follows alice's message for its receipts.
        let direct = try await Self.sendThenKillTheSendersNode("read me later", from: alice, to: bob, n1: n1, in: cluster)
        // n3 starts (knowing n2 alive), then n2 dies too, before bob has read the message.
        let n3 = try await cluster.start("n3")
        n2.signal(SIGKILL)
        _ = try await bob.expectClosed(timeout: .seconds(10))
        try await Self.waitForValue("SELECT followed_by FROM cluster_nodes WHERE name = 'n2'", on: cluster.database,
                                    "n3 follows n2's messages", timeout: .seconds(60)) { $0 == "n3" }

        let (bobBack, aliceBack) = try await Self.bobReadsThenAliceGetsTheReceiptOnce(direct, on: n3)
        for client in [bobBack, aliceBack] { await client.close() }
        try await ServerProcess.stopCleanly([n3])
        try await drop()
    }

    /// The node that followed a dead node's messages dies too and starts again before any other
    /// node noticed (here none is left to notice): its new run follows them again, and the
    /// author gets the read receipt once at their next login. Before, the new run followed only
    /// its own messages and the receipt was never sent.
    @Test func aFollowerThatStartsAgainBeforeItsDeathIsNoticedFollowsWhatItFollowed() async throws {
        let (cluster0, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let direct = try await Self.sendThenKillTheSendersNode("read me after the restart", from: alice, to: bob, n1: n1, in: cluster)
        n2.signal(SIGKILL)
        _ = try await bob.expectClosed(timeout: .seconds(10))
        let restarted = try await cluster.start("n2")

        let (bobBack, aliceBack) = try await Self.bobReadsThenAliceGetsTheReceiptOnce(direct, on: restarted)
        for client in [bobBack, aliceBack] { await client.close() }
        try await ServerProcess.stopCleanly([restarted])
        try await drop()
    }

    /// alice (on n1) sends bob a message and gets its delivered receipt; then n1 dies and the
    /// test waits until n2 follows its messages. Returns the message as bob got it.
    static func sendThenKillTheSendersNode(_ text: String, from alice: TestClient, to bob: TestClient, n1: ServerProcess,
                                           in cluster: Cluster) async throws -> IRCMessage {
        alice.send("PRIVMSG bob :\(text)")
        let direct = try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == text }
        let id = try #require(direct.tagValue("msgid"))
        try await alice.expect(timeout: .seconds(10), "delivered receipt") { $0.command == "RECEIPT" && $0.parameters.dropFirst().first == id }
        n1.signal(SIGKILL)
        _ = try await alice.expectClosed(timeout: .seconds(10))
        try await Self.waitForValue("SELECT followed_by FROM cluster_nodes WHERE name = 'n1'", on: cluster.database,
                                    "n2 follows n1's messages", timeout: .seconds(60)) { $0 == "n2" }
        return direct
    }

    /// bob logs in on `node` and reads `direct` (alice's message); alice logs in there and
    /// gets its read receipt, once. Returns both clients.
    static func bobReadsThenAliceGetsTheReceiptOnce(_ direct: IRCMessage, on node: ServerProcess) async throws -> (TestClient, TestClient) {
        let id = try #require(direct.tagValue("msgid"))
        let bobBack = try await Self.login("bob", port: node.ports[0])
        bobBack.send("MARKREAD alice timestamp=\(try #require(direct.tagValue("time")))")
        try await bobBack.expect(command: "MARKREAD")
        return (bobBack, try await aliceGetsBobsReadReceiptOnce(of: id, on: node))
    }

    /// alice logs in on `node` and gets bob's read receipt of message `id`, once. Returns her client.
    static func aliceGetsBobsReadReceiptOnce(of id: String, on node: ServerProcess) async throws -> TestClient {
        let aliceBack = try await Self.login("alice", port: node.ports[0])
        let receipt = try await aliceBack.expect(timeout: .seconds(20), "read receipt of \(id); node: \(node.logText)") {
            $0.command == "RECEIPT" && $0.parameters.dropFirst().first == id && $0.parameters.dropFirst(2).first == "read"
        }
        #expect(receipt.parameters.dropFirst(3).first == "bob", "\(receipt)")
        aliceBack.send("PING :once")
        let rest = try await aliceBack.lines(through: { $0.command == "PONG" && $0.parameters.last == "once" }, "PONG")
        #expect(!rest.contains { $0.command == "RECEIPT" && $0.parameters.dropFirst(2).first == "read" }, "the read receipt once: \(rest)")
        return aliceBack
    }

    /// Asks the database `sql` (one value) until `holds` is true of its answer, within `timeout`:
    /// for what only the database shows (a commit, a row taken).
    @discardableResult
    static func waitForValue(_ sql: String, on database: PostgresDatabaseURL, _ what: String, timeout: Duration = .seconds(20),
                             until holds: (String?) -> Bool) async throws -> String? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let value = try await TestPostgres.firstValue(sql, on: database)
            if holds(value) { return value }
            guard ContinuousClock.now < deadline else { throw ServerProcess.Failure(description: "\(what): not within \(timeout)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Waits until `node`'s log has a line containing one of `texts`; returns the first found.
    /// Waits until `text` is in the node's log `times` times.
    static func waitForLog(_ text: String, times: Int, in node: ServerProcess, timeout: Duration = .seconds(30)) async throws {
        try await ServerProcess.waitForLog(text, times: times, in: { node.logText }, timeout: timeout)
    }

    static func waitForLog(_ texts: String..., in node: ServerProcess, timeout: Duration = .seconds(30)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            let log = node.logText
            if let found = texts.first(where: { log.contains($0) }) { return found }
            guard ContinuousClock.now < deadline else { throw ServerProcess.Failure(description: "no \(texts) in the log:\n\(log)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// A node whose database connection drops for a moment (its backend is terminated; the
    /// database itself is fine, and with the connection go its liveness lock and notifications)
    /// takes its lock back before the others take it for dead: it keeps its users, who get
    /// what was sent to them meanwhile, once. Before, a peer checking in that moment took it
    /// for dead, and the node disconnected all its users when it was back.
    @Test func aNodeCutOffForAMomentKeepsItsUsers() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }

        // n2 pauses (so that it cannot take its lock back at once) and loses its connection.
        n2.signal(SIGSTOP)
        try await Self.dropLivenessConnection(of: "n2", in: cluster)
        // n1's next check finds n2's lock missing.
        let seen = try await Self.waitForLog("lock is missing", "cluster node gone", in: n1)
        alice.send("PRIVMSG bob :while you were away a moment")
        n2.signal(SIGCONT)
        _ = try await Self.waitForLog("reconnected to the database", in: n2)

        try await Self.expectOnce("while you were away a moment", at: bob)
        #expect(!bob.isClosed)
        #expect(seen == "lock is missing", "n1 took n2 for dead at once")
        alice.send("PING :still here")
        let atAlice = try await alice.lines(through: { $0.command == "PONG" && $0.parameters.last == "still here" }, "PONG")
        #expect(!atAlice.contains { $0.command == "731" }, "bob never went offline: \(atAlice)")

        // Checked before the nodes stop: n2 leaving then is seen as gone, and may be logged so.
        #expect(!n1.logText.contains("cluster node gone"), "\(n1.logText)")
        for client in [alice, bob] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    /// A node that gets its database back while its liveness lock is still held elsewhere (the
    /// backend of the connection it lost, which the database has not ended yet) carries on
    /// without it and takes it back as soon as it is free: the others never take it for dead,
    /// and it keeps its users. Before, it went on without its lock for good (and said that
    /// another process had taken its name), so the others would take it for dead once that
    /// backend let go, while its users were still connected.
    @Test func aNodeWhoseLockIsHeldWhenItReconnectsTakesItBackOnceFree() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }

        // n2 pauses and loses its connection; a connection of the test's own takes n2's lock
        // (waiting until the ended backend has let it go) and holds it while n2 goes on.
        n2.signal(SIGSTOP)
        try await Self.dropLivenessConnection(of: "n2", in: cluster)
        let lockN2 = """
            SELECT pg_advisory_xact_lock(CAST(\(PostgresClusterLink.lockClass) AS INT),
                                         (SELECT number FROM cluster_nodes WHERE name = 'n2'))
            """
        try await HeldTransaction.holding(lockN2, on: cluster.database) {
            n2.signal(SIGCONT)
            // (What the node said of it before this change, too, so that the test shows the
            // difference where it is.)
            _ = try await Self.waitForLog("lock is still held elsewhere", "another process took this node's name", in: n2)
        }
        // Let go: n2 takes it back at its next check.
        _ = try await Self.waitForLog("took this node's lock back", in: n2)

        alice.send("PRIVMSG bob :after the lock came back")
        try await Self.expectOnce("after the lock came back", at: bob)
        #expect(!bob.isClosed)
        let declaredDead = try await TestPostgres.firstValue("SELECT declared_dead::text FROM cluster_nodes WHERE name = 'n2'", on: cluster.database)
        #expect(declaredDead == "0", "n1 took n2 for dead")
        #expect(!n2.logText.contains("another process took this node's name"), "\(n2.logText)")

        // Checked before the nodes stop: n2 leaving then is seen as gone, and may be logged so.
        #expect(!n1.logText.contains("cluster node gone"), "\(n1.logText)")
        for client in [alice, bob] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    /// What a node reads of its rows while another transaction holds them locked (a peer
    /// returning them, say): it is applied at once, and deleted when the lock is let go. Before,
    /// the read was a `DELETE ... RETURNING`: it waited on the lock, timed out (the result
    /// discarded), and deleted the rows on the server later: the message was lost.
    @Test func aReadHeldUpByLockedRowsLosesNothingAndAppliesItOnce() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }

        // n2 pauses, so that the message for bob waits in its row.
        n2.signal(SIGSTOP)
        let n2Number = try #require(try await TestPostgres.firstValue("SELECT number::text FROM cluster_nodes WHERE name = 'n2'", on: cluster.database))
        alice.send("PRIVMSG bob :behind a lock")
        let waiting = try await Self.waitForValue("SELECT max(id)::text FROM cluster_events WHERE target = \(n2Number)", on: cluster.database,
                                                  "a row for n2 in cluster_events") { $0 != nil }
        let row = try #require(waiting)
        try await HeldTransaction.holding("SELECT id FROM cluster_events WHERE target = \(n2Number) FOR UPDATE", on: cluster.database) {
            n2.signal(SIGCONT)
            // n2's attempt to delete the row gives up on the lock, on the server: its connection
            // (with its liveness lock) is kept, not closed by a client-side timeout.
            _ = try await Self.waitForLog("deleting the rows read failed", in: n2)
            #expect(!n2.logText.contains("cluster read timed out"), "\(n2.logText)")
            try await bob.expect(timeout: .seconds(10), "the message, with its row still locked") { $0.command == "PRIVMSG" && $0.parameters.last == "behind a lock" }
        }

        // Once the lock is gone the row is deleted, and the message was applied once.
        try await Self.waitForValue("SELECT id::text FROM cluster_events WHERE id = \(row)", on: cluster.database, "row \(row) deleted") { $0 == nil }
        bob.send("PING :once")
        let rest = try await bob.lines(through: { $0.command == "PONG" && $0.parameters.last == "once" }, "PONG")
        #expect(!rest.contains { $0.command == "PRIVMSG" && $0.parameters.last == "behind a lock" }, "applied once: \(rest)")
        #expect(!n2.logText.contains("reconnected to the database"), "n2 kept its connection: \(n2.logText)")

        for client in [alice, bob] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    /// A row whose INSERT timed out (held up here by a lock on the table) may commit after all:
    /// the sender writes it again, and the receiver, seeing it twice, applies it once.
    @Test func aRowWrittenAgainAfterItsInsertTimedOutIsAppliedOnce() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceOnN1BobOnN2()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }

        try await HeldTransaction.holding("LOCK TABLE cluster_events IN SHARE MODE", on: cluster.database) {
            alice.send("PRIVMSG bob :written twice")
            _ = try await Self.waitForLog("cluster write failed; will retry", in: n1)
        }

        try await bob.expect(timeout: .seconds(20), "the message") { $0.command == "PRIVMSG" && $0.parameters.last == "written twice" }
        // Both rows were read (the one given up on committed too) before bob's PING.
        _ = try await Self.waitForLog("skipped rows written twice", in: n2)
        bob.send("PING :once")
        let rest = try await bob.lines(through: { $0.command == "PONG" && $0.parameters.last == "once" }, "PONG")
        #expect(!rest.contains { $0.command == "PRIVMSG" && $0.parameters.last == "written twice" }, "applied once: \(rest)")

        for client in [alice, bob] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    /// A user connected to two nodes that both die at once: a message sent to them in that
    /// moment went to both nodes' connections and reached neither. Once both deaths are
    /// noticed, it waits for the user's next login, on any node, and is delivered then, once.
    @Test func aMessageToAUserWhoseNodesAllDieAtOnceIsDeliveredAtTheNextLogin() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice", "bob"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")
        let n3 = try await cluster.start("n3")

        let alice = try await TestClient.registered("alice", port: n1.ports[0], caps: Self.caps, password: "alice-password")
        let bobs = [try await TestClient.registered("bob", port: n2.ports[0], caps: Self.caps, password: "bob-password"),
                    try await TestClient.registered("bob", port: n3.ports[0], caps: Self.caps, password: "bob-password")]
        alice.send("MONITOR + bob")
        try await alice.skip(through: { $0.command == "730" }, "bob online", timeout: .seconds(20))
        // n1 knows both of bob's connections once it has their lines (each node sends a
        // connection's snapshot before anything it does).
        for (index, bob) in bobs.enumerated() {
            bob.send("PRIVMSG alice :hello from \(index)")
            try await alice.expect(timeout: .seconds(10), "bob's line from node \(index)") { $0.command == "PRIVMSG" && $0.parameters.last == "hello from \(index)" }
        }

        n2.signal(SIGKILL)
        n3.signal(SIGKILL)
        for bob in bobs { _ = try await bob.expectClosed(timeout: .seconds(10)) }
        // n1 has not noticed yet (it checks every few seconds): the message goes to both nodes.
        alice.send("PRIVMSG bob :into both gaps")
        try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "into both gaps" }
        try await alice.expect(timeout: .seconds(60), "bob offline") { $0.command == "731" }
        let deferred = try await alice.expect(timeout: .seconds(20), "delivery deferred") { $0.command == "NOTE" && $0.parameters.contains("DELIVERY_DEFERRED") }
        #expect(deferred.parameters.prefix(3) == ["PRIVMSG", "DELIVERY_DEFERRED", "bob"], "\(deferred)")
        alice.send("PING :one note")
        let notes = try await alice.lines(through: { $0.command == "PONG" && $0.parameters.last == "one note" }, "PONG")
        #expect(!notes.contains { $0.command == "NOTE" && $0.parameters.contains("DELIVERY_DEFERRED") }, "told once: \(notes)")

        let back = try await Self.login("bob", port: n1.ports[0])
        try await Self.expectOnce("into both gaps", at: back)

        for client in [alice, back] { await client.close() }
        try await ServerProcess.stopCleanly([n1])
        try await drop()
    }

    @Test func aNodeTakenForDeadWhileCutOffStartsOverWithoutDuplicates() async throws {
        let (cluster, drop, n1, n2, alice, bob) = try await Self.aliceAndBobOnTwoNodes()
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let zed = try await TestClient.registered("zed", port: n2.ports[0])
        try await Self.waitUntilOnline("zed", seenBy: alice)
        alice.send("MONITOR + bob")
        try await alice.skip(through: { $0.command == "730" && $0.parameters.last?.hasPrefix("bob!") == true }, "bob online", timeout: .seconds(20))

        // n2 stops (SIGSTOP) and loses its database connection, hence its liveness lock: n1
        // takes it for dead, although n2 still has its users.
        n2.signal(SIGSTOP)
        try await Self.dropLivenessConnection(of: "n2", in: cluster)
        try await alice.skip(through: { $0.command == "731" && $0.parameters.last?.contains("bob") == true }, "bob offline", timeout: .seconds(60))
        // Meanwhile: a message for bob, and zed's nick taken by someone on n1.
        alice.send("PRIVMSG bob :while you were cut off")
        try await alice.expect { $0.command == "NOTE" && $0.parameters.contains("RECIPIENT_OFFLINE") }
        let newZed = try await TestClient.registered("zed", port: n1.ports[0])
        // ... and a group made with bob in it, which n2 never heard of.
        alice.send("JOIN #gap")
        try await alice.expect { $0.command == "JOIN" && $0.parameters.first == "#gap" }
        alice.send("INVITE bob #gap")
        try await alice.expect { $0.command == "NOTE" && $0.parameters.contains("MEMBER_OFFLINE") }
        // (n1 answers before it commits: n2 reads the groups again once n1 says all it decided
        // before hearing n2's hello is committed, so bob's place in #gap is there however soon
        // n2 goes on.)

        // n2 goes on: it finds it was taken for dead, and disconnects its users saying why.
        n2.signal(SIGCONT)
        let bobLast = try await bob.expectClosed(timeout: .seconds(30))
        #expect(bobLast.contains { $0.contains("lost contact") }, "\(bobLast)")
        let zedLast = try await zed.expectClosed(timeout: .seconds(10))
        #expect(zedLast.contains { $0.contains("lost contact") }, "\(zedLast)")
        // It refuses connections until it has caught up with n1 (once at start, once now).
        try await Self.waitForLog("caught up with the other nodes", times: 2, in: n2)

        // One zed in the whole cluster, and bob gets what was sent to him once, on n2.
        let bobBack = try await Self.login("bob", port: n2.ports[0])
        try await bobBack.expect(timeout: .seconds(10), "joined to #gap at login") { $0.command == "JOIN" && $0.parameters.first == "#gap" }
        try await Self.expectOnce("while you were cut off", at: bobBack)
        try await Self.waitUntilOnline("zed", seenBy: bobBack)
        let impostor = try await TestClient.connect(port: n2.ports[0])
        impostor.send("NICK zed")
        impostor.send("USER z 0 * :z")
        try await impostor.expect(timeout: .seconds(20), "nick in use") { $0.command == "433" }
        #expect(!newZed.isClosed)

        for client in [alice, bobBack, newZed, impostor] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }
}

extension ClusterProcessTests {
    /// A node reads the groups as it starts. A change another node decided just before it
    /// heard of the new node was not sent to it, and may be committed just after that read (a
    /// lock on the members' table holds it here): the new node reads the groups again once the
    /// others say all they decided before its hello is committed, before it takes users, so
    /// a member added in that moment is a member there too.
    @Test func aMemberAddedAsANodeStartsIsAMemberThere() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice", "bob"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let alice = try await Self.login("alice", port: n1.ports[0])
        alice.send("JOIN #late")
        try await alice.expect { $0.command == "JOIN" && $0.parameters.first == "#late" }
        try await Self.waitForValue("SELECT key FROM groups WHERE key = '#late'", on: cluster.database, "#late committed") { $0 != nil }

        let (loads, loaded) = AsyncStream.makeStream(of: Void.self)
        let starting: Task<ServerProcess, any Error> = try await HeldTransaction.holding("LOCK TABLE group_members IN SHARE MODE", on: cluster.database) {
            alice.send("INVITE bob #late")
            try await alice.expect { $0.command == "NOTE" && $0.parameters.contains("MEMBER_OFFLINE") }
            let (directory, config) = (cluster.directory, cluster.config)
            let starting = Task { () async throws -> ServerProcess in
                defer { loaded.finish() }
                return try await ServerProcess(dataDirectory: directory, configFile: config, arguments: ["--node-name", "n2"], whileStarting: { log in
                    try await ServerProcess.waitForLog("loaded accounts and groups", in: log)
                    loaded.yield()
                })
            }
            // n2 has read the groups, without bob in #late: n1 cannot commit him yet (or n2
            // failed to start: `starting.value` says why).
            for await _ in loads { break }
            return starting
        }
        let n2 = try await starting.value
        cluster.nodes.append(n2)

        let bob = try await Self.login("bob", port: n2.ports[0])
        try await bob.expect(timeout: .seconds(10), "joined to #late at login on n2") { $0.command == "JOIN" && $0.parameters.first == "#late" }
        // n2 counts him as a member: alice's message to #late reaches him there.
        alice.send("PRIVMSG #late :made it")
        try await bob.expect(timeout: .seconds(10), "the group message") { $0.command == "PRIVMSG" && $0.parameters.last == "made it" }

        for client in [alice, bob] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    /// Nodes started at the same moment each wait for the other's answer to their hello while
    /// they catch up: each answers the other's hello at once, not after its own catching up
    /// (then both waited the whole timeout). Whether both saw the other at start depends on
    /// timing (their logs say): the pair is started again, on a fresh database, until they did
    /// (three times in four here), five times at most.
    @Test func nodesStartedTogetherDoNotWaitForEachOther() async throws {
        for attempt in 1...5 {
            let (cluster, drop) = try await Self.makeCluster(accounts: [])
            defer { try? FileManager.default.removeItem(at: cluster.directory) }
            let (directory, config) = (cluster.directory, cluster.config)
            let started = ContinuousClock.now
            async let first = ServerProcess(dataDirectory: directory, configFile: config, arguments: ["--node-name", "n1"])
            async let second = ServerProcess(dataDirectory: directory, configFile: config, arguments: ["--node-name", "n2"])
            let (n1, n2) = try await (first, second)
            let took = ContinuousClock.now - started
            let sawEachOther = [n1, n2].allSatisfy { node in
                node.logText.split(separator: "\n").contains { $0.contains("joined the cluster") && !$0.contains("peers=[]") }
            }
            for node in [n1, n2] {
                #expect(!node.logText.contains("did not answer this node's hello in time"), "\(node.logText)")
            }
            guard sawEachOther || attempt == 5 else {
                try await ServerProcess.stopCleanly([n1, n2])
                try await drop()
                continue
            }
            if sawEachOther { #expect(took < .seconds(5), "both waited for the other: \(took)") }
            let amy = try await TestClient.registered("amy", port: n1.ports[0])
            let ben = try await TestClient.registered("ben", port: n2.ports[0])
            try await Self.waitUntilOnline("amy", seenBy: ben)
            for client in [amy, ben] { await client.close() }
            try await ServerProcess.stopCleanly([n1, n2])
            try await drop()
            return
        }
    }

    /// An operator looking at the database's connections (`pg_stat_activity`) sees which node
    /// each serves, and what for.
    @Test func eachNodesDatabaseConnectionsSayWhichNodeTheyServe() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: [])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let names = try await TestPostgres.firstValue("""
            SELECT string_agg(DISTINCT application_name, ',' ORDER BY application_name) FROM pg_stat_activity
            WHERE datname = current_database() AND application_name LIKE 'parley-server%'
            """, on: cluster.database)
        #expect(names == "parley-server n1 cluster control,parley-server n1 cluster writer,parley-server n1 store")
        try await ServerProcess.stopCleanly([n1])
        try await drop()
    }

    @Test func eachNodesMetricsSayWhichNodeItIs() async throws {
        let (cluster, drop) = try await Self.makeCluster(accounts: [])
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        var nodes: [ServerProcess] = []
        for name in ["n1", "n2"] {
            nodes.append(try await ServerProcess(dataDirectory: cluster.directory, configFile: cluster.config,
                                                 arguments: ["--node-name", name, "--metrics-listen", "127.0.0.1:0"]))
        }
        for (index, node) in nodes.enumerated() {
            let port = try #require(node.metricsPort, "\(node.logText)")
            let answer = try await HTTPFetch.get("/metrics", port: port)
            let info = answer.text.split(separator: "\n").filter { $0.hasPrefix("parley_node_info") }
            let series = info.map { $0.split(separator: " ") }
            #expect(series.map { String($0[0]) } == ["parley_node_info{node=\"n\(index + 1)\",number=\"\(index + 1)\"}"], "\(answer.text)")
            #expect(series.first.flatMap { Double($0[1]) } == 1, "\(info)")
        }
        try await ServerProcess.stopCleanly(nodes)
        try await drop()
    }
}

/// REDACT and METADATA between users on different nodes: the same lines as on one node.
extension ClusterProcessTests {
    static let redactionCaps = caps + ["draft/message-redaction"]
    static let metadataCaps = caps + ["draft/metadata-3"]

    @Test func aMessageIsRedactedFromAnyNode() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice", "bob", "carol"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")

        let alice = try await TestClient.registered("alice", port: n1.ports[0], caps: Self.redactionCaps, password: "alice-password")
        let bob = try await TestClient.registered("bob", port: n2.ports[0], caps: Self.redactionCaps, password: "bob-password")
        try await Self.waitUntilOnline("bob", seenBy: alice)
        try await Self.aliceMakesTeam(alice, adding: bob)
        alice.send("PRIVMSG #team :oops")
        let groupID = try #require(try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "oops" }.tagValue("msgid"))
        try await bob.expect(timeout: .seconds(10), "the group message") { $0.command == "PRIVMSG" && $0.parameters.last == "oops" }
        alice.send("PRIVMSG carol :secret")
        let directID = try #require(try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "secret" }.tagValue("msgid"))
        try await alice.expect { $0.command == "NOTE" && $0.parameters.contains("RECIPIENT_OFFLINE") }

        // alice's other device, on n2, where neither message was sent, takes both back.
        let alicesPhone = try await TestClient.registered("alice", port: n2.ports[0], caps: Self.redactionCaps, password: "alice-password")
        alicesPhone.send("REDACT #team \(groupID) :typo")
        alicesPhone.send("REDACT carol \(directID)")
        alicesPhone.send("PING :redacted")
        let answers = try await alicesPhone.lines(through: { $0.command == "PONG" }, "PONG", timeout: .seconds(10))
        #expect(!answers.contains { $0.command == "FAIL" }, "\(answers)")
        for client in [alice, bob] {
            let redact = try await client.expect(timeout: .seconds(10), "the REDACT") { $0.command == "REDACT" && $0.parameters.first == "#team" }
            #expect(redact.parameters == ["#team", groupID, "typo"] && redact.source?.description.hasPrefix("alice!") == true, "\(redact)")
        }
        // Gone from history, and from carol's inbox kept by n1.
        bob.send("CHATHISTORY LATEST #team * 10")
        let history = try await bob.lines(through: { $0.command == "BATCH" && $0.parameters.first?.hasPrefix("-") == true }, "history batch")
        #expect(!history.contains { $0.parameters.last == "oops" }, "\(history)")
        let carol = try await Self.login("carol", port: n2.ports[0])
        carol.send("PING :inbox")
        let inbox = try await carol.lines(through: { $0.command == "PONG" && $0.parameters.last == "inbox" }, "PONG")
        #expect(!inbox.contains { $0.parameters.last == "secret" }, "\(inbox)")

        for client in [alice, bob, alicesPhone, carol] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }

    @Test func metadataReachesSubscribersOnOtherNodes() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["alice", "bob", "carol"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")

        let alice = try await TestClient.registered("alice", port: n1.ports[0], caps: Self.metadataCaps, password: "alice-password")
        let bob = try await TestClient.registered("bob", port: n2.ports[0], caps: Self.metadataCaps, password: "bob-password")
        try await Self.waitUntilOnline("bob", seenBy: alice)
        try await Self.aliceMakesTeam(alice, adding: bob)
        // bob's subscription, then a message from him: n1 has the first when alice has the second.
        bob.send("METADATA * SUB display-name")
        try await bob.expect(numeric: "770")
        bob.send("PRIVMSG #team :subscribed")
        try await alice.expect(timeout: .seconds(10), "bob's message") { $0.command == "PRIVMSG" && $0.parameters.last == "subscribed" }

        alice.send("METADATA * SET display-name :Alice A.")
        #expect(try await alice.expect(numeric: "761").parameters == ["alice", "alice", "display-name", "*", "Alice A."])
        #expect(try await bob.expect(numeric: "761", timeout: .seconds(10)).parameters == ["bob", "alice", "display-name", "*", "Alice A."])
        // n2 keeps it too, and so does a node started later.
        bob.send("METADATA alice GET display-name")
        #expect(try await bob.expect(numeric: "761", timeout: .seconds(10)).parameters == ["bob", "alice", "display-name", "*", "Alice A."])
        let n3 = try await cluster.start("n3")
        let carol = try await TestClient.registered("carol", port: n3.ports[0], caps: Self.metadataCaps, password: "carol-password")
        try await Self.waitUntilOnline("alice", seenBy: carol)
        carol.send("METADATA alice GET display-name")
        #expect(try await carol.expect(numeric: "761", timeout: .seconds(10)).parameters == ["carol", "alice", "display-name", "*", "Alice A."])

        for client in [alice, bob, carol] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2, n3])
        try await drop()
    }
}

extension ClusterProcessTests {
    /// Asks LIST until `watcher`'s node knows `channel` exists (its users are invisible, so
    /// NAMES would not show them to an outsider); the poll ends on the condition.
    static func waitUntilChannelExists(_ channel: String, seenBy watcher: TestClient) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            watcher.send("LIST \(channel)")
            let reply = try await watcher.lines(through: { $0.command == "323" }, "end of LIST")
            if reply.contains(where: { $0.command == "322" && $0.parameters.dropFirst().first == channel }) { return }
            guard ContinuousClock.now < deadline else { throw ServerProcess.Failure(description: "\(channel) never showed") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    @Test func aTransientChannelsMessageIsRedactedFromAnotherNode() async throws {
        let (cluster0, drop) = try await Self.makeCluster(accounts: ["bob", "carol"])
        var cluster = cluster0
        defer { try? FileManager.default.removeItem(at: cluster.directory) }
        let n1 = try await cluster.start("n1")
        let n2 = try await cluster.start("n2")

        // A guest's channel is transient (an account's would be a group); gus is its operator.
        let gus = try await TestClient.registered("gus", port: n1.ports[0], caps: Self.redactionCaps)
        let carol = try await TestClient.registered("carol", port: n1.ports[0], caps: Self.redactionCaps, password: "carol-password")
        let bob = try await TestClient.registered("bob", port: n2.ports[0], caps: Self.redactionCaps, password: "bob-password")
        gus.send("JOIN #chat")
        try await gus.expect { $0.command == "JOIN" }
        try await Self.waitUntilChannelExists("#chat", seenBy: bob)
        bob.send("JOIN #chat")
        try await gus.expect(timeout: .seconds(10), "bob joined") { $0.command == "JOIN" && $0.source?.description.hasPrefix("bob!") == true }
        carol.send("JOIN #chat")
        try await bob.expect(timeout: .seconds(10), "carol joined") { $0.command == "JOIN" && $0.source?.description.hasPrefix("carol!") == true }
        bob.send("PRIVMSG #chat :off topic")
        let id = try #require(try await bob.expect { $0.command == "PRIVMSG" && $0.parameters.last == "off topic" }.tagValue("msgid"))
        try await gus.expect(timeout: .seconds(10), "bob's message") { $0.command == "PRIVMSG" && $0.parameters.last == "off topic" }
        try await carol.expect(timeout: .seconds(10), "bob's message") { $0.command == "PRIVMSG" && $0.parameters.last == "off topic" }

        // carol, not an operator, may not; n2, which keeps the message, says so.
        carol.send("REDACT #chat \(id)")
        let refused = try await carol.expect(timeout: .seconds(10), "the refusal") { $0.command == "FAIL" }
        #expect(refused.parameters.prefix(4) == ["REDACT", "REDACT_FORBIDDEN", "#chat", id], "\(refused)")
        // gus, the channel's operator, may.
        gus.send("REDACT #chat \(id) :spam")
        for client in [gus, bob, carol] {
            let redact = try await client.expect(timeout: .seconds(10), "the REDACT") { $0.command == "REDACT" }
            #expect(redact.parameters == ["#chat", id, "spam"] && redact.source?.description.hasPrefix("gus!") == true, "\(redact)")
        }
        // An id of a node that is not up (there is no n9) is answered by the node asked, which
        // knows the names of the nodes that are (n2 said its own).
        let unknownID = "n9" + id.drop { $0 != "." }
        gus.send("REDACT #chat \(unknownID)")
        let unknown = try await gus.expect(timeout: .seconds(10), "the answer") { $0.command == "FAIL" }
        #expect(unknown.parameters.prefix(4) == ["REDACT", "UNKNOWN_MSGID", "#chat", unknownID], "\(unknown)")

        for client in [gus, bob, carol] { await client.close() }
        try await ServerProcess.stopCleanly([n1, n2])
        try await drop()
    }
}
