import Dispatch
import Foundation
import ParleyCore
import ParleyStorage
@testable import ParleyStorePostgres
import Logging
import NIOPosix
import PostgresNIO
import PostgresTestSupport
import Synchronization
import Testing

/// Two stores on one PostgreSQL database, as two nodes of a cluster have.
@Suite("PostgreSQL store shared by two nodes")
struct PostgresNodesTests {
    /// A connection of the test's own to the store's database, beside the store's.
    static func ownConnection(to url: PostgresDatabaseURL) async throws -> PostgresConnection {
        try await PostgresConnection.connect(on: MultiThreadedEventLoopGroup.singleton.next(),
                                             configuration: PostgresChatStore.configuration(for: url), id: 9, logger: Logger(label: "test"))
    }

    /// A node learns of a group another node made before that node has committed it: a message
    /// to it waits for the commit instead of failing (ClusterProcessTests' group message used
    /// to fail now and then with STORAGE_FAILED under load).
    @Test func aMessageToAGroupAnotherNodeIsStillCommittingWaitsForIt() async throws {
        let (first, done) = try await StorageBackend.postgres.open()
        let url = try #require((first as? PostgresChatStore)?.url)
        let second = try await PostgresChatStore.open(url: url)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let group = GroupRecord(name: "#new", key: "#new", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member])
        let message = StoredMessage(id: "n2.g1", time: now, senderNick: "bob", senderAccount: "bob", senderPrefix: "bob!~b@h",
                                    targetKind: .group, target: "#new", command: "PRIVMSG", text: "hello",
                                    recipients: [StoredRecipient(account: "alice")])
        let outcome = Mutex<Result<Void, any Error>?>(nil)
        let finished = DispatchSemaphore(value: 0)
        try first.transaction { transaction in
            try transaction.saveGroup(group, previousKey: nil)
            // The other node stores a message to the group while its row is not committed yet
            // (this transaction stays open a moment longer to make sure of that).
            DispatchQueue.global().async {
                let result = Result { try second.transaction { try $0.storeMessages([message]) } }
                outcome.withLock { $0 = result }
                finished.signal()
            }
            Thread.sleep(forTimeInterval: 0.3)
        }
        #expect(finished.wait(timeout: .now() + 10) == .success)
        let result = outcome.withLock { $0 }
        #expect(throws: Never.self) { try result?.get() }
        guard case .messages(let found) = try first.loadHistory(HistoryQuery(conversation: .group("#new"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(found.map(\.text) == ["hello"])
        try await second.close()
        try await done()
    }

    /// Positions follow commits: a group message one node has stored but not yet committed, and
    /// a member another node adds meanwhile. The member's join commits after the message (it
    /// waits for it), so the member is not one of its recipients; before, the member's `since`
    /// was read before the message's position was visible, and the member counted as having had it.
    @Test func aMemberAddedWhileAnotherNodeCommitsAGroupMessageIsNotItsRecipient() async throws {
        let (first, done) = try await StorageBackend.postgres.open()
        let url = try #require((first as? PostgresChatStore)?.url)
        let second = try await PostgresChatStore.open(url: url)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let team = GroupRecord(name: "#team", key: "#team", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member])
        try first.transaction { try $0.saveGroup(team, previousKey: nil) }
        let message = StoredMessage(id: "n1.g1", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                                    targetKind: .group, target: "#team", command: "PRIVMSG", text: "before carol",
                                    recipients: [StoredRecipient(account: "bob", deliveredAt: now)])
        // A third connection, to see whether the join waits for a lock.
        let watcher = try await Self.ownConnection(to: url)
        let joined = DispatchSemaphore(value: 0)
        let joinOutcome = Mutex<Result<Void, any Error>?>(nil)
        try first.transaction { transaction in
            try transaction.storeMessages([message])
            // Written now (it takes its position), committed when this closure returns.
            try transaction.setReceiptsPendingSince(account: "alice", time: nil)
            DispatchQueue.global().async {
                let result = Result { try second.transaction { try $0.setGroupMember(group: "#team", account: "carol", role: .member, voiced: false) } }
                joinOutcome.withLock { $0 = result }
                joined.signal()
            }
            // The join either commits at once (positions taken at insert) or waits for this
            // commit: whichever happens first ends the wait.
            let waitingForALock = """
                DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)
                THEN RAISE EXCEPTION 'not waiting'; END IF; END $$
                """
            while joinOutcome.withLock({ $0 == nil ? true : false }) {
                if (try? watcher.run(waitingForALock, logger: Logger(label: "test"))) != nil { break }
            }
        }
        #expect(joined.wait(timeout: .now() + 20) == .success)
        #expect(throws: Never.self) { try joinOutcome.withLock { $0 }?.get() }
        guard case .messages(let found) = try first.loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: ["#team"]), kind: .receipts(["n1.g1"]), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(found.first?.recipients.map(\.account) == ["bob"], "carol joined after n1.g1 was stored")
        // Her next message is hers.
        let next = StoredMessage(id: "n1.g2", time: now.adding(milliseconds: 1), senderNick: "alice", senderAccount: "alice",
                                 senderPrefix: "alice!~a@h", targetKind: .group, target: "#team", command: "PRIVMSG", text: "after carol",
                                 recipients: ["bob", "carol"].map { StoredRecipient(account: $0, deliveredAt: now.adding(milliseconds: 1)) })
        try first.transaction { try $0.storeMessages([next]) }
        guard case .messages(let foundNext) = try first.loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: ["#team"]), kind: .receipts(["n1.g2"]), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(foundNext.first?.recipients.map(\.account) == ["bob", "carol"])
        try await watcher.close()
        try await second.close()
        try await done()
    }

    /// Two nodes store a group of one name that each made for its own user in the same instant,
    /// neither knowing the other's row: the second creation neither fails (before, a unique
    /// violation failed its whole batch, messages included) nor changes the first one's row,
    /// made first; it adds its creator as a plain member (before, as a second owner, until a
    /// node rewrote the group). The nodes that settle the claims then rewrite the group as the
    /// winner's, and a creation that commits after that leaves it so.
    @Test func twoNodesStoringOneNewGroupAtOnceKeepOneGroupWithBothCreators() async throws {
        let (first, done) = try await StorageBackend.postgres.open()
        let url = try #require((first as? PostgresChatStore)?.url)
        let second = try await PostgresChatStore.open(url: url)
        let watcher = try await Self.ownConnection(to: url)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let alices = GroupRecord(name: "#both", key: "#both", createdAt: now, owner: "alice", members: ["alice": .owner])
        let bobs = GroupRecord(name: "#both", key: "#both", createdAt: now.adding(milliseconds: 5), owner: "bob", members: ["bob": .owner])
        let outcome = Mutex<Result<Void, any Error>?>(nil)
        let finished = DispatchSemaphore(value: 0)
        try first.transaction { transaction in
            try transaction.createGroup(alices)
            DispatchQueue.global().async {
                let result = Result { try second.transaction { try $0.createGroup(bobs) } }
                outcome.withLock { $0 = result }
                finished.signal()
            }
            // Committed once the second node's insert waits for this row (or has failed).
            let waitingForARow = """
                DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted)
                THEN RAISE EXCEPTION 'not waiting'; END IF; END $$
                """
            while outcome.withLock({ $0 == nil }) {
                if (try? watcher.run(waitingForARow, logger: Logger(label: "test"))) != nil { break }
            }
        }
        #expect(finished.wait(timeout: .now() + 20) == .success)
        #expect(throws: Never.self) { try outcome.withLock { $0 }?.get() }
        var groups = try await first.loadGroups().filter { $0.key == "#both" }
        #expect(groups.count == 1 && groups.first?.members == ["alice": .owner, "bob": .member], "\(groups)")
        #expect(groups.first?.owner == "alice" && groups.first?.createdAt == now, "the first row stays as it was: \(groups)")

        // bob's node heard of alice's claim (made first) and rewrites the group as hers.
        let settled = GroupRecord(name: "#both", key: "#both", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member])
        try second.transaction { try $0.saveGroup(settled, previousKey: nil) }
        groups = try await first.loadGroups().filter { $0.key == "#both" }
        #expect(groups.count == 1 && groups.first?.owner == "alice" && groups.first?.members == ["alice": .owner, "bob": .member], "\(groups)")

        // bob's creation committing only now (after the rewrite, its node knowing the group's
        // id by then) changes nothing that is already there.
        let third = try await PostgresChatStore.open(url: url)
        try third.transaction { try $0.createGroup(bobs) }
        groups = try await first.loadGroups().filter { $0.key == "#both" }
        #expect(groups.count == 1 && groups.first?.owner == "alice" && groups.first?.members == ["alice": .owner, "bob": .member], "\(groups)")
        try await third.close()
        try await watcher.close()
        try await second.close()
        try await done()
    }

    /// The group made later is stored first, and the one made earlier (by another node, which
    /// does not know that row) second: the stored group becomes the earlier one's, with one
    /// owner, as every node settles it, though neither node rewrites it afterwards (both may
    /// die first). Before, it kept the later one's owner and made the earlier one's creator a
    /// second owner.
    @Test func aGroupMadeEarlierButStoredSecondTakesTheStoredOneOver() async throws {
        let (first, done) = try await StorageBackend.postgres.open()
        let url = try #require((first as? PostgresChatStore)?.url)
        let second = try await PostgresChatStore.open(url: url)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let bobs = GroupRecord(name: "#both", key: "#both", createdAt: now.adding(milliseconds: 5), owner: "bob", members: ["bob": .owner])
        let alices = GroupRecord(name: "#both", key: "#both", createdAt: now, owner: "alice", members: ["alice": .owner])
        try first.transaction { try $0.createGroup(bobs) }
        try second.transaction { try $0.createGroup(alices) }
        let groups = try await first.loadGroups().filter { $0.key == "#both" }
        #expect(groups.count == 1, "\(groups)")
        #expect(groups.first?.owner == "alice" && groups.first?.createdAt == now, "\(groups)")
        #expect(groups.first?.members == ["alice": .owner, "bob": .member], "\(groups)")
        try await second.close()
        try await done()
    }

    /// A dead node's direct messages that their recipients had at once have no recipient row: the
    /// node that follows them gets them with their recipient all the same, delivered, unread.
    @Test func aDeadNodesDirectMessagesHadAtOnceAreFollowedWithTheirRecipient() async throws {
        let (opened, done) = try await StorageBackend.postgres.open()
        let store = try #require(opened as? PostgresChatStore)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let connection = try await Self.ownConnection(to: store.url)
        let number = try #require(try await connection.query("INSERT INTO cluster_nodes (name, started_at) VALUES ('n9', 0) RETURNING number",
                                                             logger: Logger(label: "test")).collect().first?.decode(Int.self))
        let message = StoredMessage(id: "n9.d1", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                                    targetKind: .direct, target: "bob", command: "PRIVMSG", text: "hi",
                                    recipients: [StoredRecipient(account: "bob", deliveredAt: now, deliveredNotified: true)])
        try store.transaction { try $0.storeMessages([message]) }
        let followed = try await store.followedMessages(ofNode: UInt16(number), follower: "n1", since: now.adding(milliseconds: -1),
                                                        maxTrackedRecipients: 1000)
        #expect(followed.map(\.sentThrough) == [UInt16(number)])
        #expect(followed.first?.messages.map(\.id) == ["n9.d1"])
        #expect(followed.first?.messages.first?.recipients == message.recipients)
        try await connection.close()
        try await done()
    }

    /// n1 died and n2 followed its messages; then n2 died. The node that declares n2 dead
    /// first follows n2's messages and those n2 followed, each under the node they were sent
    /// through: the next node to ask gets none, and a node that declares that follower dead in
    /// turn takes them all over again. n0's are still followed by n1 (a chain two deep, which
    /// a node taken for dead while cut off can leave): they go along.
    @Test func theNodeThatFollowsADeadNodeTakesOverWhatThatNodeFollowed() async throws {
        let (opened, done) = try await StorageBackend.postgres.open()
        let store = try #require(opened as? PostgresChatStore)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let logger = Logger(label: "test")
        let connection = try await Self.ownConnection(to: store.url)
        var numbers: [String: UInt16] = [:]
        // n0 was followed by n1 (before n1 died), n1 by n2; n2 is the node declared dead now.
        for (name, follower) in [("n0", "n1"), ("n1", "n2"), ("n2", nil), ("n3", nil), ("n4", nil), ("n5", nil)] {
            let inserted = try await connection.query(
                "INSERT INTO cluster_nodes (name, started_at, followed_by) VALUES (\(name), 0, \(follower)) RETURNING number",
                logger: logger).collect()
            numbers[name] = UInt16(try #require(try inserted.first?.decode(Int.self)))
        }
        let messages = ["n0", "n1", "n2", "n3"].map { node in
            StoredMessage(id: "\(node).d1", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                          targetKind: .direct, target: "bob", command: "PRIVMSG", text: "through \(node)",
                          recipients: [StoredRecipient(account: "bob", deliveredAt: now, deliveredNotified: true)])
        }
        try store.transaction { try $0.storeMessages(messages) }
        func follow(_ dead: String, by follower: String) async throws -> [UInt16: [String]] {
            let followed = try await store.followedMessages(ofNode: try #require(numbers[dead]), follower: follower,
                                                            since: now.adding(milliseconds: -1), maxTrackedRecipients: 1000)
            return Dictionary(followed.map { ($0.sentThrough, $0.messages.map(\.id)) }, uniquingKeysWith: +)
        }
        func followers() async throws -> [String: String] {
            var found: [String: String] = [:]
            for try await (name, follower) in try await connection.query(
                "SELECT name, followed_by FROM cluster_nodes WHERE followed_by IS NOT NULL", logger: logger).decode((String, String).self) {
                found[name] = follower
            }
            return found
        }

        let byN3 = try await follow("n2", by: "n3")
        #expect(byN3 == [numbers["n2"]!: ["n2.d1"], numbers["n1"]!: ["n1.d1"], numbers["n0"]!: ["n0.d1"]])
        #expect(try await followers() == ["n0": "n3", "n1": "n3", "n2": "n3"])
        // Another node declaring n2 dead a moment later gets nothing: n3 has them.
        #expect(try await follow("n2", by: "n4").isEmpty)

        // n1 starts a new run (it clears its own row: it follows its messages itself), then
        // n3 dies: n4 takes over n3's and what n3 still follows for n2 and n0.
        _ = try await connection.query("UPDATE cluster_nodes SET followed_by = NULL WHERE name = 'n1'", logger: logger).collect()
        let byN4 = try await follow("n3", by: "n4")
        #expect(byN4 == [numbers["n3"]!: ["n3.d1"], numbers["n2"]!: ["n2.d1"], numbers["n0"]!: ["n0.d1"]])
        #expect(try await followers() == ["n0": "n4", "n2": "n4", "n3": "n4"])
        #expect(try await store.stillFollowed([numbers["n0"]!, numbers["n1"]!, numbers["n2"]!], by: "n4") == [numbers["n0"]!, numbers["n2"]!])
        #expect(try await follow("n3", by: "n5").isEmpty)
        // What a node follows, as it finds it when it starts again.
        let byN4Again = try await store.messagesFollowed(by: "n4", since: now.adding(milliseconds: -1), maxTrackedRecipients: 1000)
        #expect(byN4Again.map(\.sentThrough) == [numbers["n0"]!, numbers["n2"]!, numbers["n3"]!])
        #expect(byN4Again.map { $0.messages.map(\.id) } == [["n0.d1"], ["n2.d1"], ["n3.d1"]])
        #expect(try await store.messagesFollowed(by: "n3", since: now.adding(milliseconds: -1), maxTrackedRecipients: 1000).isEmpty)
        try await connection.close()
        try await done()
    }
}
