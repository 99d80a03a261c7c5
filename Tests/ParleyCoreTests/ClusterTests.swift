import Foundation
import IRCWire
import NIOCore
import Testing
@testable import ParleyCore

/// Two nodes of a cluster as plain values: what one publishes is applied by the other, and the
/// lines one writes for the other's connections land in their inboxes, as the shell's bus does.
struct ClusterHarness {
    var nodes: [CoreHarness]

    /// Nodes (indices) of an earlier version, which neither write channel lines to their own
    /// members (they skip those records) nor say they do.
    let earlierVersion: Set<Int>

    init(nodes count: Int = 2, accounts: [(String, String)] = [], earlierVersion: Set<Int> = []) {
        self.earlierVersion = earlierVersion
        nodes = (1...count).map { number in
            CoreHarness(configure: {
                $0.clusterNode = UInt16(number)
                $0.clusterNodeName = "n\(number)"
            }, accounts: accounts)
        }
        // What the hellos and their answers say (`ClusterRecord.writesChannelLines`, `nodeName`).
        for node in nodes.indices where !earlierVersion.contains(node) {
            for peer in nodes.indices where peer != node && !earlierVersion.contains(peer) {
                nodes[node].server.peerWritesChannelLines(UInt16(peer + 1))
                nodes[node].server.peerNamed(UInt16(peer + 1), "n\(peer + 1)")
            }
        }
    }

    /// Carries events and lines between the nodes until nothing is left in flight.
    mutating func settle() {
        var moved = true
        while moved {
            moved = false
            for source in nodes.indices {
                let events = nodes[source].published
                let lines = nodes[source].forwarded
                let closes = nodes[source].closedRemotely
                let channelLines = nodes[source].channelLines
                nodes[source].published = []
                nodes[source].forwarded = []
                nodes[source].closedRemotely = []
                nodes[source].channelLines = []
                if !events.isEmpty || !lines.isEmpty || !closes.isEmpty || !channelLines.isEmpty { moved = true }
                for target in nodes.indices where target != source {
                    for event in events {
                        var outbox = Outbox()
                        nodes[target].server.applyClusterEvent(event, now: nodes[target].now, into: &outbox)
                        nodes[target].apply(outbox)
                    }
                }
                for delivery in lines {
                    let target = Int(delivery.connection.node) - 1
                    var outbox = Outbox()
                    outbox.deliveries = [delivery]
                    nodes[target].apply(outbox)
                }
                // As the shell sends them: to the nodes the sender knows to write them.
                for target in nodes.indices where target != source && !earlierVersion.contains(target)
                    && nodes[source].server.channelLineNodes.contains(UInt16(target + 1)) {
                    for channelLine in channelLines {
                        var outbox = Outbox()
                        nodes[target].server.deliverChannelLine(channelLine.line, channel: channelLine.channel, statusPrefix: channelLine.statusPrefix,
                                                                into: &outbox)
                        nodes[target].apply(outbox)
                    }
                }
                for id in closes { nodes[Int(id.node) - 1].close(id) }
            }
        }
    }

    @discardableResult
    mutating func send(_ node: Int, _ id: ConnectionID, _ lines: String...) -> [String] {
        for line in lines { nodes[node].send(id, line).forEach { nodes[node].received[id, default: []].append($0) } }
        settle()
        return nodes[node].inbox(id)
    }

    @discardableResult
    mutating func register(_ node: Int, _ nick: String, password: String? = nil, caps: [String] = []) -> ConnectionID {
        let id = nodes[node].register(nick, password: password, caps: caps)
        settle()
        nodes[node].received[id] = []
        return id
    }
}

@Suite("Cluster: nodes applying each other's events")
struct ClusterTests {
    static let caps = ["message-tags", "server-time", "echo-message", "parley.chat/receipts", "draft/read-marker"]

    @Test func directMessageReachesAUserOnAnotherNodeWithTheSameLine() {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password")
        let bob = cluster.register(1, "bob", password: "bob-password")
        let whois = cluster.send(0, alice, "WHOIS bob")
        #expect(whois.first?.contains(" 311 alice bob ") == true, "node 1 lists a user of node 2: \(whois)")
        cluster.send(0, alice, "PRIVMSG bob :hello across")
        #expect(cluster.nodes[1].inbox(bob).contains { $0.hasSuffix(" PRIVMSG bob :hello across") && $0.contains(":alice!") })
        cluster.send(1, bob, "PRIVMSG alice :hi back")
        #expect(cluster.nodes[0].inbox(alice).contains { $0.hasSuffix(" PRIVMSG alice :hi back") })
    }

    /// Other nodes let a node's user into a channel on that node's word (they may not know the
    /// channel's modes yet), so a JOIN its node refused must not reach them: bob, banned, stays
    /// out on both nodes, and of "JOIN #chan,#open" only #open is run there. Before, the refused
    /// JOIN was passed on and alice's node let him in.
    @Test func aJoinItsNodeRefusedIsNotRunByTheOthers() {
        var cluster = ClusterHarness()
        let alice = cluster.register(0, "alice")
        let bob = cluster.register(1, "bob")
        cluster.send(0, alice, "JOIN #chan", "MODE #chan +b bob!*@*")
        #expect(cluster.send(1, bob, "JOIN #chan").commands == ["474"])
        cluster.send(1, bob, "JOIN #chan,#open")
        for node in cluster.nodes.indices {
            #expect(cluster.nodes[node].server.channels["#chan"]?.contains(bob) == false, "node \(node + 1)")
            #expect(cluster.nodes[node].server.channels["#open"]?.contains(bob) == true, "node \(node + 1)")
        }
        #expect(!cluster.nodes[0].inbox(alice).contains { $0.contains("JOIN #chan") && $0.hasPrefix(":bob!") })
    }

    @Test func nicksAreUniqueAcrossNodes() {
        var cluster = ClusterHarness()
        cluster.register(0, "carol")
        let other = cluster.nodes[1].connect()
        #expect(cluster.send(1, other, "NICK carol").commands == ["433"])
        cluster.send(1, other, "NICK dave", "USER d 0 * :d")
        let dave = other
        // A nick given up on one node is free on the other.
        let carolNow = cluster.nodes[0].server.sessions.values.first { $0.nick?.name == "carol" }!.id
        cluster.send(0, carolNow, "NICK erin")
        #expect(cluster.send(1, dave, "NICK carol").commands == ["NICK"])
    }

    @Test func messageToAnOfflineAccountIsDeliveredOnceWhereverItLogsIn() {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: Self.caps)
        let offline = cluster.send(0, alice, "PRIVMSG bob :while you were out")
        #expect(offline.contains { $0.contains("RECIPIENT_OFFLINE") })
        let bob = cluster.nodes[1].connect()
        cluster.send(1, bob, "CAP LS 302", "CAP REQ :\(Self.caps.joined(separator: " "))", "PASS :bob:bob-password", "NICK bob", "USER b 0 * :b")
        let welcome = cluster.send(1, bob, "CAP END")
        // The backlog is held by node 1 (where alice sent it) and reaches bob on node 2.
        #expect(welcome.filter { $0.contains("while you were out") }.count == 1, "\(welcome)")
        let bobAgain = cluster.register(1, "bob", password: "bob-password", caps: Self.caps)
        #expect(!cluster.nodes[1].inbox(bobAgain).contains { $0.contains("while you were out") }, "delivered once only")
        #expect(cluster.nodes[0].server.undeliveredCount == 0)
        #expect(cluster.nodes[0].inbox(alice).contains { $0.contains("RECEIPT") && $0.contains("delivered") })
    }

    @Test func readOnOneNodeSendsTheReceiptFromTheSendersNode() {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: Self.caps)
        let bob = cluster.register(1, "bob", password: "bob-password", caps: Self.caps)
        cluster.send(0, alice, "PRIVMSG bob :read me")
        let line = cluster.nodes[1].inbox(bob).first { $0.contains("read me") }!
        let time = try! IRCMessage(parsing: line).tagValue("time")!
        _ = cluster.nodes[0].inbox(alice)
        cluster.send(1, bob, "MARKREAD alice timestamp=\(time)")
        #expect(cluster.nodes[0].inbox(alice).contains { $0.contains("RECEIPT") && $0.contains("read") })
    }

    @Test func groupMembersOnBothNodesHearEachOther() {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password")
        let bob = cluster.register(1, "bob", password: "bob-password")
        cluster.send(0, alice, "JOIN #team")
        cluster.send(0, alice, "INVITE bob #team")
        #expect(cluster.nodes[1].inbox(bob).contains { $0.contains("JOIN #team") })
        cluster.send(1, bob, "PRIVMSG #team :hello team")
        #expect(cluster.nodes[0].inbox(alice).contains { $0.hasSuffix("PRIVMSG #team :hello team") })
        let names = cluster.send(1, bob, "NAMES #team")
        #expect(names.first?.contains("alice") == true && names.first?.contains("bob") == true, "\(names)")
    }

    @Test func aNodeThatGoesAwayTakesItsUsersWithIt() {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: Self.caps)
        cluster.send(0, alice, "MONITOR + bob")
        cluster.register(1, "bob", password: "bob-password")
        #expect(cluster.nodes[0].inbox(alice).commands.contains("730"))
        var outbox = Outbox()
        cluster.nodes[0].server.remoteNodeGone(2, now: cluster.nodes[0].now, into: &outbox)
        cluster.nodes[0].apply(outbox)
        #expect(cluster.nodes[0].inbox(alice).commands.contains("731"), "bob is offline for alice")
        #expect(cluster.send(0, alice, "PRIVMSG bob :are you there").contains { $0.contains("RECIPIENT_OFFLINE") })
    }

    /// When bob (on n2) reads a group message of alice's after n2 noticed that alice's node n1
    /// died, relative to n2 loading n1's messages to follow them (`adoptFollowed`).
    enum GroupReadMoment: CaseIterable, Sendable {
        /// Before the load, which finds bob's read position stored: the store counts the read
        /// receipt as sent (the author's receipts were not waiting then).
        case beforeTheLoadWhichSeesItsPosition
        /// Before the load, which does not see its position yet.
        case beforeTheLoadWhichMissesItsPosition
        case afterTheLoad
    }

    /// A group read made on n2 once n1's death was noticed reaches alice, the message's author,
    /// once at her next login on n2, whichever the order of the read, its stored position and
    /// n2's load of n1's messages. Before, a load that saw the position dropped the message (all
    /// its receipts counted as sent), and the receipt was never sent.
    @Test(arguments: GroupReadMoment.allCases)
    func aGroupReadMadeOnceAnAuthorsNodeDeathWasNoticedReachesTheAuthorOnce(_ moment: GroupReadMoment) throws {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: Self.caps)
        let bob = cluster.register(1, "bob", password: "bob-password", caps: Self.caps)
        cluster.send(0, alice, "JOIN #team")
        cluster.send(0, alice, "INVITE bob #team")
        cluster.send(0, alice, "PRIVMSG #team :read me too")
        let line = try #require(cluster.nodes[1].inbox(bob).first { $0.contains("read me too") })
        let message = try IRCMessage(parsing: line)
        let id = try #require(message.tagValue("msgid"))
        let sent = try #require(message.tagValue("time").flatMap { Timestamp(iso8601: $0) })

        // n1 dies; n2 alone from now on.
        var n2 = cluster.nodes[1]
        n2.advance(milliseconds: 3_000)
        let noticed = n2.now
        var outbox = Outbox()
        n2.server.remoteNodeGone(1, now: noticed, into: &outbox)
        n2.apply(outbox)
        n2.advance(milliseconds: 10)
        // What the store gives n2 for n1's message: bob is a member without a row of his own,
        // his state derived from his read position if stored (alice's receipts not waiting).
        func stored(positionStored: Bool) -> StoredMessage {
            StoredMessage(
                id: id, time: sent, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~alice@127.0.0.1",
                targetKind: .group, target: "#team", command: "PRIVMSG", text: "",
                recipients: [StoredRecipient(account: "bob", deliveredAt: sent, readAt: positionStored ? sent : nil,
                                             deliveredNotified: true, readNotified: positionStored)])
        }
        func adopt(_ message: StoredMessage) {
            var outbox = Outbox()
            n2.server.adoptFollowed([message], from: 1, noticed: noticed, now: n2.now, into: &outbox)
            n2.apply(outbox)
        }
        switch moment {
        case .beforeTheLoadWhichSeesItsPosition:
            n2.send(bob, "MARKREAD #team timestamp=\(sent.iso8601)")
            adopt(stored(positionStored: true))
        case .beforeTheLoadWhichMissesItsPosition:
            n2.send(bob, "MARKREAD #team timestamp=\(sent.iso8601)")
            adopt(stored(positionStored: false))
        case .afterTheLoad:
            adopt(stored(positionStored: false))
            n2.send(bob, "MARKREAD #team timestamp=\(sent.iso8601)")
        }

        let aliceBack = n2.connect()
        n2.send(aliceBack, "CAP LS 302", "CAP REQ :\(Self.caps.joined(separator: " "))", "PASS :alice:alice-password", "NICK alice", "USER a 0 * :a")
        var lines = n2.send(aliceBack, "CAP END")
        lines += n2.send(aliceBack, "MARKREAD #team", "PING :once")
        let receipts = lines.filter { $0.contains(" RECEIPT #team \(id) read bob ") }
        #expect(receipts.count == 1, "\(moment): \(lines)")
    }

    /// A group read made on n2 after alice's node n1 died but before n2 noticed, which n1 never
    /// took (it came back to n2 with the rest of what was sent to n1), reaches alice once at her
    /// next login, though the store has bob's position past the message; a read n1 took before
    /// dying was told by n1 and is not sent again. Before, no receipt for the untaken read was
    /// ever sent.
    @Test func aGroupReadTheDeadAuthorsNodeNeverTookReachesTheAuthorOnce() throws {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: Self.caps)
        let bob = cluster.register(1, "bob", password: "bob-password", caps: Self.caps)
        cluster.send(0, alice, "JOIN #team")
        cluster.send(0, alice, "INVITE bob #team")
        func post(_ text: String) throws -> (id: String, time: Timestamp) {
            cluster.nodes[0].advance(milliseconds: 1_000)
            cluster.send(0, alice, "PRIVMSG #team :\(text)")
            let message = try IRCMessage(parsing: try #require(cluster.nodes[1].inbox(bob).last { $0.contains(text) }))
            return (try #require(message.tagValue("msgid")), try #require(message.tagValue("time").flatMap { Timestamp(iso8601: $0) }))
        }
        let first = try post("first")
        let second = try post("second")
        // n1 takes bob's read of the first and tells alice.
        cluster.nodes[1].advance(milliseconds: 2_000)
        cluster.send(1, bob, "MARKREAD #team timestamp=\(first.time.iso8601)")
        #expect(cluster.nodes[0].inbox(alice).contains { $0.contains(" RECEIPT #team \(first.id) read bob ") })

        // n1 dies; bob reads the second on n2 before n2 notices, and n1 never takes it.
        var n2 = cluster.nodes[1]
        n2.advance(milliseconds: 1_000)
        n2.send(bob, "MARKREAD #team timestamp=\(second.time.iso8601)")
        n2.advance(milliseconds: 5_000)
        let noticed = n2.now
        var outbox = Outbox()
        n2.server.remoteNodeGone(1, now: noticed, into: &outbox)
        n2.apply(outbox)
        // The store has bob's position at the second: both count as read and told.
        let stored = [first, second].map { message in
            StoredMessage(
                id: message.id, time: message.time, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~alice@127.0.0.1",
                targetKind: .group, target: "#team", command: "PRIVMSG", text: "",
                recipients: [StoredRecipient(account: "bob", deliveredAt: message.time, readAt: second.time,
                                             deliveredNotified: true, readNotified: true)])
        }
        outbox = Outbox()
        n2.server.adoptFollowed(stored, from: 1, untakenReads: [UntakenRead(account: "bob", conversation: "#team", time: second.time)],
                                noticed: noticed, now: n2.now, into: &outbox)
        n2.apply(outbox)

        let aliceBack = n2.connect()
        n2.send(aliceBack, "CAP LS 302", "CAP REQ :\(Self.caps.joined(separator: " "))", "PASS :alice:alice-password", "NICK alice", "USER a 0 * :a")
        var lines = n2.send(aliceBack, "CAP END")
        lines += n2.send(aliceBack, "MARKREAD #team", "PING :once")
        #expect(lines.filter { $0.contains(" RECEIPT #team \(second.id) read bob ") }.count == 1, "\(lines)")
        #expect(!lines.contains { $0.contains(" RECEIPT #team \(first.id) ") }, "\(lines)")
    }
}

@Suite("Cluster records between nodes")
struct ClusterCodecTests {
    @Test func everyRecordSurvivesTheTripThroughBytes() throws {
        let snapshot = SessionSnapshot(
            connection: ConnectionID(3 << ConnectionID.nodeShift | 77), host: "::1", isSecure: true,
            connectedAt: Timestamp(millisecondsSince1970: 1_764_000_000_123), nick: "Zoë", username: "~z", realname: "Zoë Q",
            accountKey: "zoë", awayMessage: "lunch", isOperator: false, isInvisible: true, capabilityBits: 0b1011,
            channels: ["#a", "#b"], monitoredNicks: ["bob"], metadataSubscriptions: ["avatar"], metadata: ["avatar": "https://a.example/z"],
            guestIdentityPrefix: "!mxbg6jcw.")
        let records: [ClusterRecord] = [
            .hello(rejoin: false),
            .hello(rejoin: true),
            .event(.session(snapshot)),
            .event(.command(snapshot.connection, try IRCMessage(parsing: "@label=x JOIN #team2 key"), at: Timestamp(millisecondsSince1970: 5))),
            .event(.closed(snapshot.connection, reason: "Quit: bye", at: Timestamp(millisecondsSince1970: 6))),
            .event(.read(account: "bob", conversation: "#team", time: Timestamp(millisecondsSince1970: 7), disclose: true)),
            .lines(snapshot.connection, ByteBuffer(string: ":a PRIVMSG b :hi\r\n")),
            .close(snapshot.connection),
            .handedOver(messageID: "n3.abc-1", account: "zoë"),
            .handedOverToSeveral(messageID: "n3.abc-2", account: "zoë", alsoVia: [2, 4095]),
            .caughtUp,
            .channelLine(channel: "#team", statusPrefix: nil, line: ByteBuffer(string: "@time=2026-12-07T05:00:00.000Z :a!~a@h PRIVMSG #team :hé\r\n")),
            .channelLine(channel: "#team", statusPrefix: UInt8(ascii: "@"), line: ByteBuffer(string: ":a!~a@h NOTICE @#team :ops\r\n")),
            .writesChannelLines,
            .nodeName("node-7"),
            .event(.redacted(messageID: "n3.abc-2")),
            .event(.redactRequest(snapshot.connection, channel: "#chat", messageID: "n1.abc-3", reason: "spam")),
            .event(.redactRequest(snapshot.connection, channel: "#chat", messageID: "n1.abc-4", reason: nil)),
            .event(.recentMessage(StoredMessage(
                id: "n3.abc-5", time: Timestamp(millisecondsSince1970: 8), senderNick: "Zoë", senderAccount: nil, senderGuest: "!mxbg6jcw.3000000000004d",
                senderPrefix: "Zoë!~z@::1", targetKind: .group, target: "#chat", command: "PRIVMSG", text: "hé", clientTags: "+draft/reply=n1.abc-3"))),
            .event(.recentMessage(StoredMessage(
                id: "n3.abc-6", time: Timestamp(millisecondsSince1970: 9), senderNick: "Zoë", senderAccount: "zoë",
                senderPrefix: "Zoë!~z@::1", targetKind: .group, target: "#chat", command: "TOPIC", text: ""))),
            .event(.recentRedacted(channel: "#chat", messageID: "n3.abc-5")),
            .event(.channelState(TransientChannelState(
                name: "#chat", createdAt: 10, topic: "plans", topicSetBy: "Zoë!~z@::1", topicSetAt: 11, modes: "iknt", key: "sesame", limit: 20,
                bans: [.init(mask: "*!*@bad.example", setBy: "Zoë", setAt: 12)], banExceptions: [], inviteExceptions: [],
                invitedNicks: ["bob"], ranks: [snapshot.connection.rawValue: ChannelRole.op.rawValue], voiced: [5], metadata: ["url": "https://x"]))),
        ]
        var bytes = ByteBuffer()
        for record in records { ClusterCodec.append(record, to: &bytes) }
        #expect(try ClusterCodec.decode(bytes) == records)
    }

    @Test func aTruncatedPayloadIsRefusedNotMisread() {
        var bytes = ByteBuffer()
        ClusterCodec.append(.lines(ConnectionID(1), ByteBuffer(string: "PING x\r\n")), to: &bytes)
        bytes.moveWriterIndex(to: bytes.writerIndex - 3)
        #expect(throws: ClusterCodec.DecodingError.self) { try ClusterCodec.decode(bytes) }
    }
}

extension ClusterTests {
    @Test func anAccountRegisteredOnOneNodeLogsInOnTheOther() {
        var cluster = ClusterHarness()
        let dave = cluster.register(0, "dave", caps: ["draft/account-registration"])
        #expect(cluster.send(0, dave, "REGISTER * dave-password").contains { $0.contains("REGISTER SUCCESS dave") })
        let other = cluster.nodes[1].connect()
        cluster.send(1, other, "PASS :dave:dave-password", "NICK dave")
        let welcome = cluster.send(1, other, "USER d 0 * :d")
        #expect(welcome.contains { $0.contains(" 001 dave ") }, "\(welcome)")
        // Both sessions are one user: a message to dave reaches both.
        let alice = cluster.register(1, "alice")
        cluster.send(1, alice, "PRIVMSG dave :both")
        #expect(cluster.nodes[0].inbox(dave).contains { $0.hasSuffix("PRIVMSG dave :both") })
        #expect(cluster.nodes[1].inbox(other).contains { $0.hasSuffix("PRIVMSG dave :both") })
    }
}

extension ClusterTests {
    @Test func kickTopicRenameAndAwayActAcrossNodes() {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: ["draft/channel-rename"])
        let bob = cluster.register(1, "bob", password: "bob-password", caps: ["draft/channel-rename"])
        cluster.send(0, alice, "JOIN #team")
        cluster.send(0, alice, "INVITE bob #team")
        _ = cluster.nodes[1].inbox(bob)

        cluster.send(0, alice, "TOPIC #team :plans")
        #expect(cluster.nodes[1].inbox(bob).contains { $0.hasSuffix("TOPIC #team :plans") })
        #expect(cluster.send(1, bob, "TOPIC #team").contains { $0.hasSuffix("#team :plans") }, "bob's node knows the topic")

        cluster.send(1, bob, "AWAY :at lunch")
        #expect(cluster.send(0, alice, "WHOIS bob").contains { $0.contains(" 301 alice bob :at lunch") })

        cluster.send(0, alice, "RENAME #team #crew :new name")
        #expect(cluster.nodes[1].inbox(bob).contains { $0.contains("RENAME #team #crew") })
        cluster.send(1, bob, "PRIVMSG #crew :still here")
        #expect(cluster.nodes[0].inbox(alice).contains { $0.hasSuffix("PRIVMSG #crew :still here") })

        cluster.send(0, alice, "KICK #crew bob :bye")
        #expect(cluster.nodes[1].inbox(bob).contains { $0.contains("KICK #crew bob :bye") })
        let refused = cluster.send(1, bob, "PRIVMSG #crew :let me back")
        #expect(refused.commands == ["404"], "bob's node knows he was removed: \(refused)")
        #expect(!cluster.nodes[0].inbox(alice).contains { $0.contains("let me back") })
    }
}

extension ClusterTests {
    @Test func oneNickTakenOnTwoNodesAtOnceEndsWithOneHolder() {
        var cluster = ClusterHarness()
        // Both register before either node hears of the other's user.
        let first = cluster.nodes[0].register("zed")
        cluster.nodes[1].advance(milliseconds: 5)
        let second = cluster.nodes[1].register("zed")
        cluster.settle()
        // The first to connect keeps it; the other is renamed and told why, on its own node.
        let renamed = cluster.nodes[1].inbox(second)
        #expect(renamed.contains { $0.contains("NOTE NICK NICKNAME_COLLISION zed") }, "\(renamed)")
        let nickLine = renamed.first(command: "NICK")
        #expect(nickLine?.source?.description.hasPrefix("zed!") == true && nickLine?.parameters.first?.hasPrefix("Guest") == true)
        #expect(cluster.nodes[0].inbox(first).isEmpty, "the holder notices nothing")
        // Both nodes agree on who is zed and who is the guest.
        for node in 0...1 {
            let asker = cluster.register(node, "asker\(node)")
            let whois = cluster.send(node, asker, "WHOIS zed")
            #expect(whois.first?.contains(" 311 asker\(node) zed ") == true)
            let guest = nickLine?.parameters.first ?? "?"
            #expect(cluster.send(node, asker, "WHOIS \(guest)").first?.contains(" 311 asker\(node) \(guest) ") == true)
            cluster.send(node, asker, "PRIVMSG zed :which one?")
        }
        #expect(cluster.nodes[0].inbox(first).filter { $0.contains("which one?") }.count == 2)
        #expect(!cluster.nodes[1].inbox(second).contains { $0.contains("which one?") })
    }
}

@Suite("A transient channel's recent history")
struct RecentChannelHistoryTests {
    static func message(_ id: String, at time: Int64) -> StoredMessage {
        StoredMessage(id: id, time: Timestamp(millisecondsSince1970: time), senderNick: "gus", senderAccount: nil, senderPrefix: "gus!~g@h",
                      targetKind: .group, target: "#chat", command: "PRIVMSG", text: id)
    }

    /// Another node's message can arrive after a later one of this node's: history stays in time
    /// order, so that LATEST and a msgid's BEFORE/AFTER agree with the messages' times.
    @Test func aMessageThatArrivesLateTakesItsPlaceInTime() throws {
        var history = RecentChannelHistory()
        for (id, time) in [("a", 10), ("c", 30), ("b", 20), ("d", 30), ("early", 5)] as [(String, Int64)] {
            history.append(Self.message(id, at: time), capacity: 10, maxBytes: 10_000)
        }
        #expect(history.messages.map(\.id) == ["early", "a", "b", "c", "d"])
        #expect(try history.messages(.before(.msgid("c")), limit: 10)?.map(\.id) == ["early", "a", "b"])
        #expect(try history.messages(.after(.msgid("b")), limit: 10)?.map(\.id) == ["c", "d"])
        // The oldest by time goes first when full.
        history.append(Self.message("e", at: 40), capacity: 5, maxBytes: 10_000)
        #expect(history.messages.map(\.id) == ["a", "b", "c", "d", "e"])
        // A node that joins the cluster gets the same message from every node with members: kept once.
        history.append(Self.message("c", at: 30), capacity: 5, maxBytes: 10_000)
        history.append(Self.message("e", at: 40), capacity: 5, maxBytes: 10_000)
        #expect(history.messages.map(\.id) == ["a", "b", "c", "d", "e"])
    }
}

extension ClusterTests {
    /// A node that starts while a transient channel exists makes the channel from its members'
    /// snapshots; it must then hold the channel's settings too, or its users would walk into an
    /// invite-only channel and see the wrong operators.
    @Test func aNodeThatStartsLaterKeepsATransientChannelsSettings() {
        var cluster = ClusterHarness()
        let gus = cluster.register(0, "gus")
        let bea = cluster.register(1, "bea")
        cluster.send(0, gus, "JOIN #club")
        cluster.send(1, bea, "JOIN #club")
        cluster.send(0, gus, "TOPIC #club :members only")
        cluster.send(0, gus, "MODE #club +io bea")
        cluster.send(0, gus, "MODE #club +b *!*@banned.example")
        #expect(cluster.send(1, bea, "MODE #club").contains { $0.hasSuffix(" 324 bea #club :+int") })

        // Node 3 starts: it hears the others' hellos' answers (their users, then their channels).
        var late = CoreHarness(configure: { $0.clusterNode = 3; $0.clusterNodeName = "n3" })
        for node in cluster.nodes.indices {
            for event in cluster.nodes[node].server.localSessionAnnouncements() + cluster.nodes[node].server.transientChannelAnnouncements() {
                var outbox = Outbox()
                late.server.applyClusterEvent(event, now: late.now, into: &outbox)
                late.apply(outbox)
            }
        }
        cluster.nodes.append(late)
        let eve = cluster.register(2, "eve")

        #expect(cluster.send(2, eve, "JOIN #club").contains { $0.contains(" 473 eve #club ") }, "invite-only on the new node too")
        cluster.send(0, gus, "INVITE eve #club")
        let joined = cluster.send(2, eve, "JOIN #club")
        #expect(joined.contains { $0.contains(" 353 eve ") && $0.hasSuffix(":@gus @bea eve") }, "the same operators: \(joined)")
        #expect(joined.contains { $0.hasSuffix(" 332 eve #club :members only") }, "the same topic: \(joined)")
        // bea is an operator there as well: the new node follows her MODE from node 2, so eve
        // may speak in the moderated channel.
        cluster.send(0, gus, "MODE #club +m")
        cluster.send(1, bea, "MODE #club +v eve")
        _ = cluster.nodes[2].inbox(eve)
        #expect(cluster.send(2, eve, "PRIVMSG #club :hello").isEmpty, "no error for eve's message")
        #expect(cluster.nodes[0].inbox(gus).contains { $0.hasSuffix("PRIVMSG #club :hello") })
    }
}


extension ClusterTests {
    /// Members who join a channel on one node get a message sent through another node in the
    /// moment before that node heard of their JOIN: their own node writes the channel's lines
    /// to its members from its own member list. Each gets the tags of their own capabilities,
    /// once, and the sender's node sends that node one line for the channel, not one per member.
    @Test func membersWhoHaveJustJoinedOnAnotherNodeGetTheChannelMessage() throws {
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: Self.caps)
        let bob = cluster.register(1, "bob", password: "bob-password", caps: ["server-time"])
        let gus = cluster.register(1, "gus", caps: ["message-tags", "account-tag"])
        cluster.send(0, alice, "JOIN #open")
        cluster.send(0, alice, "MODE #open -i")
        // They join on node 2; node 1 has not heard of it when alice speaks.
        cluster.nodes[1].send(bob, "JOIN #open")
        cluster.nodes[1].send(gus, "JOIN #open")
        _ = cluster.nodes[1].inbox(bob)
        _ = cluster.nodes[1].inbox(gus)
        let echo = try #require(cluster.nodes[0].send(alice, "PRIVMSG #open :just in time").first { $0.contains("just in time") })
        #expect(cluster.nodes[0].forwarded.isEmpty, "no line per member: \(cluster.nodes[0].forwarded)")
        #expect(cluster.nodes[0].channelLines.count == 1)
        cluster.settle()

        let msgid = try IRCMessage(parsing: echo).tagValue("msgid")
        let toBob = cluster.nodes[1].inbox(bob).filter { $0.contains("just in time") }
        #expect(toBob.count == 1, "\(toBob)")
        let bobLine = try IRCMessage(parsing: try #require(toBob.first))
        #expect(bobLine.tags.map(\.key) == ["time"], "server-time only: \(bobLine)")
        #expect(bobLine.source?.description.hasPrefix("alice!") == true && bobLine.parameters == ["#open", "just in time"])
        let toGus = cluster.nodes[1].inbox(gus).filter { $0.contains("just in time") }
        #expect(toGus.count == 1, "\(toGus)")
        let gusLine = try IRCMessage(parsing: try #require(toGus.first))
        #expect(Set(gusLine.tags.map(\.key)) == ["msgid", "account"], "no time without server-time: \(gusLine)")
        #expect(gusLine.tagValue("msgid") == msgid && gusLine.tagValue("account") == "alice")

        // A TAGMSG reaches only those with message-tags; a STATUSMSG only the operators.
        cluster.send(0, alice, "@+draft/react=👍 TAGMSG #open")
        #expect(cluster.nodes[1].inbox(gus).filter { $0.contains("TAGMSG #open") }.count == 1)
        #expect(!cluster.nodes[1].inbox(bob).contains { $0.contains("TAGMSG") })
        cluster.send(0, alice, "MODE #open +o bob")
        _ = cluster.nodes[1].inbox(gus)
        cluster.send(0, alice, "NOTICE @#open :ops only")
        #expect(cluster.nodes[1].inbox(bob).filter { $0.hasSuffix("NOTICE @#open :ops only") }.count == 1)
        #expect(!cluster.nodes[1].inbox(gus).contains { $0.contains("ops only") })
    }

    /// A REDACT of a group message reaches the members on the other nodes through their own
    /// node too, to those with the capability, once.
    @Test func aRedactionReachesMembersOnOtherNodesOnce() throws {
        let caps = Self.caps + ["draft/message-redaction"]
        var cluster = ClusterHarness(accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: caps)
        let bob = cluster.register(1, "bob", password: "bob-password", caps: caps)
        let gus = cluster.register(1, "gus")
        cluster.send(0, alice, "JOIN #team")
        cluster.send(0, alice, "MODE #team -i")
        cluster.send(0, alice, "INVITE bob #team")
        cluster.send(1, gus, "JOIN #team")
        let echo = try #require(cluster.send(0, alice, "PRIVMSG #team :oops").first { $0.contains("oops") })
        let msgid = try #require(try IRCMessage(parsing: echo).tagValue("msgid"))
        _ = cluster.nodes[1].inbox(bob)
        _ = cluster.nodes[1].inbox(gus)
        let answer = cluster.send(0, alice, "REDACT #team \(msgid) :a typo")
        #expect(answer.contains { $0.hasSuffix("REDACT #team \(msgid) :a typo") }, "\(answer)")
        let toBob = cluster.nodes[1].inbox(bob).filter { $0.contains(" REDACT ") }
        #expect(toBob == answer.filter { $0.contains(" REDACT ") }, "the same line, once: \(toBob)")
        #expect(cluster.nodes[1].inbox(gus).isEmpty, "no capability, no line")
    }

    /// alice on the first node and bob on the second, guests who take redactions, in #chan.
    static func aliceAndBobInAGuestsChannel() -> (ClusterHarness, alice: ConnectionID, bob: ConnectionID) {
        let caps = Self.caps + ["draft/message-redaction"]
        var cluster = ClusterHarness()
        let alice = cluster.register(0, "alice", caps: caps)
        let bob = cluster.register(1, "bob", caps: caps)
        cluster.send(0, alice, "JOIN #chan")
        cluster.send(1, bob, "JOIN #chan")
        return (cluster, alice, bob)
    }

    /// A REDACT in a guests' channel of a message this node does not have goes to the node
    /// its id names, which answers; an id that names no node is unknown at once. Before, neither
    /// got an answer: the first went to every node and none had it, the second was dropped by
    /// the named node.
    @Test func aRedactOfAMessageNoNodeHasIsAnswered() {
        let (joined, _, bob) = Self.aliceAndBobInAGuestsChannel()
        var cluster = joined
        for id in ["nonexistent123", "n1.mxdf36x7-99"] {
            let answer = cluster.send(1, bob, "REDACT #chan \(id)")
            #expect(answer.filter { $0.contains("FAIL REDACT UNKNOWN_MSGID #chan \(id) ") }.count == 1, "\(id): \(answer)")
        }
        #expect(ChatServer.isClusterMessageID("n1.mxdf36x7-99") && ChatServer.isClusterMessageID("my.node.a-1"))
        #expect(!ChatServer.isClusterMessageID("nonexistent123") && !ChatServer.isClusterMessageID("n1.abc") && !ChatServer.isClusterMessageID(".a-1"))
    }

    /// An id naming a node that is not up (there is none of that name, or it went away) is
    /// answered at once by the node asked: no node would answer for it.
    @Test func aRedactOfAMessageOfNoLiveNodeIsAnsweredAtOnce() {
        let (joined, _, bob) = Self.aliceAndBobInAGuestsChannel()
        var cluster = joined
        func redactsAsked(_ node: Int) -> Int {
            cluster.nodes[node].published.filter { if case .redactRequest = $0 { true } else { false } }.count
        }

        let unknownNode = cluster.nodes[1].send(bob, "REDACT #chan n3.mxdf36x7-99")
        #expect(unknownNode.filter { $0.contains("FAIL REDACT UNKNOWN_MSGID #chan n3.mxdf36x7-99 ") }.count == 1, "\(unknownNode)")
        #expect(redactsAsked(1) == 0, "no node is asked")

        // n1 is up: it is asked, and answers.
        #expect(cluster.nodes[1].send(bob, "REDACT #chan n1.mxdf36x7-99").isEmpty)
        #expect(redactsAsked(1) == 1)
        cluster.settle()
        #expect(cluster.nodes[1].inbox(bob).filter { $0.contains("FAIL REDACT UNKNOWN_MSGID #chan n1.mxdf36x7-99 ") }.count == 1)

        // Once n1 is gone, its ids name no live node.
        var outbox = Outbox()
        cluster.nodes[1].server.remoteNodeGone(1, now: cluster.nodes[1].now, into: &outbox)
        cluster.nodes[1].apply(outbox)
        _ = cluster.nodes[1].inbox(bob)
        let goneNode = cluster.nodes[1].send(bob, "REDACT #chan n1.mxdf36x7-99")
        #expect(goneNode.filter { $0.contains("FAIL REDACT UNKNOWN_MSGID #chan n1.mxdf36x7-99 ") }.count == 1, "\(goneNode)")
        #expect(redactsAsked(1) == 0)
    }

    /// A node of an earlier version does not say its name: while one is up, an id naming no
    /// node known by name may be its, and that node is asked as before.
    @Test func whileANodeOfAnEarlierVersionIsUpAnIdOfAnUnknownNodeIsAskedAbout() {
        let caps = Self.caps + ["draft/message-redaction"]
        var cluster = ClusterHarness(nodes: 3, earlierVersion: [2])
        let alice = cluster.register(0, "alice", caps: caps)
        cluster.register(2, "carol", caps: caps)
        cluster.send(0, alice, "JOIN #chan")
        #expect(cluster.nodes[0].send(alice, "REDACT #chan old.mxdf36x7-99").isEmpty, "not answered at once")
        #expect(cluster.nodes[0].published.contains { if case .redactRequest = $0 { true } else { false } })
    }

    /// A node of an earlier version skips channel lines and never says it writes them: it is
    /// sent a line per member, as before, while the others get one line for the channel.
    @Test func aNodeOfAnEarlierVersionIsSentALinePerMember() throws {
        var cluster = ClusterHarness(nodes: 3, accounts: [("alice", "alice-password"), ("bob", "bob-password"), ("carol", "carol-password")],
                                     earlierVersion: [2])
        let alice = cluster.register(0, "alice", password: "alice-password", caps: Self.caps)
        let bob = cluster.register(1, "bob", password: "bob-password", caps: Self.caps)
        let carol = cluster.register(2, "carol", password: "carol-password", caps: Self.caps)
        cluster.send(0, alice, "JOIN #team")
        cluster.send(0, alice, "INVITE bob #team")
        cluster.send(0, alice, "INVITE carol #team")
        _ = cluster.nodes[1].inbox(bob)
        _ = cluster.nodes[2].inbox(carol)
        cluster.nodes[0].send(alice, "PRIVMSG #team :to everyone")
        #expect(cluster.nodes[0].forwarded.map(\.connection) == [carol], "a line for carol's node only")
        #expect(cluster.nodes[0].channelLines.count == 1)
        cluster.settle()
        #expect(cluster.nodes[1].inbox(bob).filter { $0.hasSuffix("PRIVMSG #team :to everyone") }.count == 1)
        #expect(cluster.nodes[2].inbox(carol).filter { $0.hasSuffix("PRIVMSG #team :to everyone") }.count == 1)
        // And the other way: the node of the earlier version writes a line per member.
        cluster.send(2, carol, "PRIVMSG #team :from the old node")
        #expect(cluster.nodes[0].inbox(alice).filter { $0.hasSuffix("PRIVMSG #team :from the old node") }.count == 1)
        #expect(cluster.nodes[1].inbox(bob).filter { $0.hasSuffix("PRIVMSG #team :from the old node") }.count == 1)
    }

    /// Two users who join one channel on two nodes at the same moment (each node made the
    /// channel before it heard of the other's JOIN) see each other's JOIN, as on one server:
    /// each node writes the lines of the other's commands to its own users when it runs them.
    @Test func usersWhoJoinOnTwoNodesAtOnceSeeEachOthersJoin() {
        var cluster = ClusterHarness()
        let alice = cluster.register(0, "alice")
        let bob = cluster.register(1, "bob")
        cluster.nodes[0].send(alice, "JOIN #room")
        cluster.nodes[1].send(bob, "JOIN #room")
        _ = cluster.nodes[0].inbox(alice)
        _ = cluster.nodes[1].inbox(bob)
        cluster.settle()
        #expect(cluster.nodes[0].inbox(alice).filter { $0.hasPrefix(":bob!") && $0.hasSuffix("JOIN #room") }.count == 1)
        #expect(cluster.nodes[1].inbox(bob).filter { $0.hasPrefix(":alice!") && $0.hasSuffix("JOIN #room") }.count == 1)
        // Each node made the channel for its own user, its operator: both nodes say both lead it.
        for (node, id) in [(0, alice), (1, bob)] {
            let names = cluster.send(node, id, "NAMES #room").first { $0.contains(" 353 ") } ?? ""
            #expect(names.hasSuffix(":@alice @bob") || names.hasSuffix(":@bob @alice"), "node \(node + 1): \(names)")
        }
    }

    /// Two accounts make one group on two nodes in the same instant: every node ends with the
    /// same group, the first creator's (on a tie of times, the account that sorts first), the
    /// other creator a plain member, told why. The third node hears the losing claim first.
    @Test func accountsWhoMakeOneGroupOnTwoNodesAtOnceEndWithTheSameOwnerEverywhere() {
        var cluster = ClusterHarness(nodes: 3, accounts: [("alice", "alice-password"), ("bob", "bob-password")])
        let bob = cluster.register(0, "bob", password: "bob-password")
        let alice = cluster.register(1, "alice", password: "alice-password")
        cluster.nodes[0].send(bob, "JOIN #both")
        cluster.nodes[1].send(alice, "JOIN #both")
        _ = cluster.nodes[0].inbox(bob)
        _ = cluster.nodes[1].inbox(alice)
        cluster.settle()
        for node in 0..<3 {
            let channel = cluster.nodes[node].server.channels["#both"]
            #expect(channel?.owner == "alice" && channel?.accountRoles == ["alice": .owner, "bob": .member], "node \(node + 1): \(String(describing: channel))")
        }
        let bobSaw = cluster.nodes[0].inbox(bob)
        #expect(bobSaw.contains { $0.hasPrefix(":ChanServ!") && $0.hasSuffix("MODE #both +q-q alice bob") }, "\(bobSaw)")
        #expect(bobSaw.contains { $0.contains("NOTICE bob :") && $0.contains("alice made it first") }, "\(bobSaw)")
        // Both claimants store the settled group (either may die before the other's write).
        for node in 0..<2 {
            let saved = cluster.nodes[node].savedGroups["#both"]
            #expect(saved?.owner == "alice" && saved?.members == ["alice": .owner, "bob": .member], "node \(node + 1): \(String(describing: saved))")
        }
        #expect(cluster.nodes[1].inbox(alice).filter { $0.contains("MODE #both") }.isEmpty)
    }

    /// A guest's channel and an account's group of one name made on two nodes at once: the group
    /// stands on both, the guest a plain member of it.
    @Test func aGroupAndAGuestsChannelMadeAtOnceEndAsTheGroup() {
        var cluster = ClusterHarness(accounts: [("bob", "bob-password")])
        let gus = cluster.register(0, "gus")
        let bob = cluster.register(1, "bob", password: "bob-password")
        cluster.nodes[0].send(gus, "JOIN #mixed")
        cluster.nodes[1].send(bob, "JOIN #mixed")
        _ = cluster.nodes[0].inbox(gus)
        cluster.settle()
        for node in 0..<2 {
            let channel = cluster.nodes[node].server.channels["#mixed"]
            #expect(channel?.owner == "bob" && channel?.inviteOnly == true && channel?.guestRoles.isEmpty == true, "node \(node + 1): \(String(describing: channel))")
        }
        let gusSaw = cluster.nodes[0].inbox(gus)
        #expect(gusSaw.contains { $0.hasSuffix("MODE #mixed +qi-o bob gus") }, "\(gusSaw)")
        for (node, id) in [(0, gus), (1, bob)] {
            let names = cluster.send(node, id, "NAMES #mixed").first { $0.contains(" 353 ") } ?? ""
            #expect(names.hasSuffix(":~bob gus") || names.hasSuffix(":gus ~bob"), "node \(node + 1): \(names)")
        }
    }

    /// The lines a command shows the users of another node come from that node, once: a NICK
    /// change to a channel neighbour and a MONITOR watcher there, a TOPIC with the msgid its
    /// author saw, a QUIT.
    @Test func anotherNodesCommandsShowTheirLinesOnceWithTheSameMsgid() throws {
        var cluster = ClusterHarness()
        let alice = cluster.register(0, "alice", caps: ["message-tags", "server-time", "echo-message"])
        let bob = cluster.register(1, "bob", caps: ["message-tags", "server-time"])
        let carol = cluster.register(1, "carol")
        cluster.send(0, alice, "JOIN #room")
        cluster.send(1, bob, "JOIN #room")
        cluster.send(1, carol, "MONITOR + alicia")
        _ = cluster.nodes[1].inbox(bob)
        _ = cluster.nodes[1].inbox(carol)

        cluster.send(0, alice, "NICK alicia")
        #expect(cluster.nodes[1].inbox(bob).filter { $0.hasSuffix("NICK alicia") }.count == 1)
        #expect(cluster.nodes[1].inbox(carol).filter { $0.contains(" 730 ") && $0.contains("alicia") }.count == 1)

        let echo = try #require(cluster.send(0, alice, "TOPIC #room :plans").first { $0.contains("TOPIC #room") })
        let toBob = cluster.nodes[1].inbox(bob).filter { $0.contains("TOPIC #room") }
        #expect(toBob.count == 1, "\(toBob)")
        let bobLine = try IRCMessage(parsing: try #require(toBob.first))
        #expect(bobLine.tagValue("msgid") == (try IRCMessage(parsing: echo)).tagValue("msgid"), "\(bobLine) against \(echo)")

        cluster.nodes[0].close(alice)
        cluster.settle()
        #expect(cluster.nodes[1].inbox(bob).filter { $0.hasPrefix(":alicia!") && $0.contains("QUIT") }.count == 1)
        #expect(cluster.nodes[1].inbox(carol).filter { $0.contains(" 731 ") && $0.contains("alicia") }.count == 1)
    }

    /// A client cannot choose the msgid other nodes give its TOPIC line: the tag that carries it
    /// between nodes is the node's own.
    @Test func aClientsOwnEventMsgidTagIsNotTaken() throws {
        var cluster = ClusterHarness()
        let alice = cluster.register(0, "alice", caps: ["message-tags", "echo-message"])
        let bob = cluster.register(1, "bob", caps: ["message-tags"])
        cluster.send(0, alice, "JOIN #room")
        cluster.send(1, bob, "JOIN #room")
        _ = cluster.nodes[1].inbox(bob)
        let echo = try #require(cluster.send(0, alice, "@parley/event-msgid=forged TOPIC #room :plans").first { $0.contains("TOPIC #room") })
        let toBob = try IRCMessage(parsing: try #require(cluster.nodes[1].inbox(bob).first { $0.contains("TOPIC #room") }))
        #expect(toBob.tagValue("msgid") != "forged")
        #expect(toBob.tagValue("msgid") == (try IRCMessage(parsing: echo)).tagValue("msgid"))
    }

}
