import Foundation
import GRDB
@testable import ParleyCore
@testable import ParleyStore
import Testing

@Suite("SQLite store")
struct MigrationTests {
    static let nobody = StoreRequest(connection: ConnectionID(0), label: nil, verb: "PRIVMSG")

    /// A fresh store that knows these accounts (rows refer to accounts by id, so a message from
    /// or to an account the store has never seen is refused).
    func openStore(_ path: String, accounts: [String] = ["alice", "bob", "carol"]) async throws -> SQLiteChatStore {
        let store = try SQLiteChatStore(path: path)
        for name in accounts {
            try await store.insertAccount(AccountRecord(
                name: name, key: name, credential: PasswordCredential(salt: [0], iterations: 1, storedKey: [1], serverKey: [2]),
                createdAt: Date(timeIntervalSince1970: 0), lastSeen: nil, email: nil))
        }
        return store
    }

    func temporaryPath() -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("parley-store-\(UUID().uuidString).sqlite").path
    }

    /// A database file as an earlier release left it: migrated up to `migration`, then these rows.
    func writeOldDatabase(at path: String, upTo migration: String, _ statements: [String]) async throws {
        let queue = try DatabaseQueue(path: path)
        try SQLiteChatStore.migrator.migrate(queue, upTo: migration)
        try await queue.write { db in
            for statement in statements { try db.execute(sql: statement) }
        }
        try queue.close()
    }

    @Test func aDatabaseFromTheFirstSchemaIsUpgradedWithItsData() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        // A file as the first release wrote it: only the v1 tables, with an account and a message.
        try await writeOldDatabase(at: path, upTo: "v1", [
            """
            INSERT INTO accounts (key, name, salt, iterations, stored_key, server_key, created_at)
            VALUES ('alice', 'Alice', x'00', 4096, x'01', x'02', 1700000000000)
            """,
            """
            INSERT INTO messages (id, time, sender_nick, sender_account, sender_prefix, target_kind, target, command, text)
            VALUES ('m1', 1700000000001, 'Guest', NULL, 'Guest!~g@host', 'direct', 'alice', 'PRIVMSG', 'hello from v1')
            """,
        ])
        let store = try SQLiteChatStore(path: path)
        let accounts = try await store.loadAccounts()
        #expect(accounts.map(\.name) == ["Alice"])
        // The guest who wrote it keeps an identity of its own: alice still sees the message, and
        // an account named after the guest's nick would not.
        let history = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "!legacy.guest"), kind: .latest(after: nil), limit: 10))
        guard case .messages(let messages) = history else { Issue.record("expected messages"); return }
        #expect(messages.map(\.text) == ["hello from v1"])
        #expect(messages.first?.senderGuest == "!legacy.guest")
        #expect(try await store.loadGroups().isEmpty)
        try await store.close()
    }

    @Test func groupsAndDeliveryStateRoundTrip() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try await openStore(path)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let group = GroupRecord(name: "#Team", key: "#team", createdAt: now, owner: "alice", topic: "plans", topicSetBy: "alice",
                                topicSetAt: now, modes: "int", password: "k", userLimit: 5,
                                bans: [BanEntry(mask: "*!*@bad", setBy: "alice", setAt: now)], members: ["alice": .owner, "bob": .op])
        let message = StoredMessage(id: "x1", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                                    targetKind: .group, target: "#team", command: "PRIVMSG", text: "hi",
                                    recipients: [StoredRecipient(account: "bob"), StoredRecipient(account: "carol", deliveredAt: now)])
        try store.perform([.saveGroup(group, previousKey: nil), .storeMessages([message], afterCommit: [], sender: Self.nobody)])
        #expect(try await store.loadGroups() == [group])
        var state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1))
        #expect(state.undelivered["bob"]?.map(\.id) == ["x1"])
        #expect(state.undelivered["carol"] == nil)
        // Delivered and read, with receipts sent: nothing is pending any more.
        try store.perform([
            .updateRecipients([RecipientUpdate(messageID: "x1", recipient: "bob", deliveredAt: now, readAt: now, deliveredNotified: true, readNotified: true),
                               RecipientUpdate(messageID: "x1", recipient: "carol", readAt: now, deliveredNotified: true, readNotified: true)]),
        ])
        state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1))
        #expect(state.undelivered.isEmpty)
        #expect(state.tracked.isEmpty)
        // A rename moves the group and its messages.
        var renamed = group
        renamed.name = "#Crew"
        renamed.key = "#crew"
        try store.perform([.saveGroup(renamed, previousKey: "#team")])
        #expect(try await store.loadGroups().map(\.key) == ["#crew"])
        let history = try store.loadHistory(HistoryQuery(conversation: .group("#crew"), kind: .latest(after: nil), limit: 10))
        #expect(history == .messages([{ var moved = message; moved.target = "#crew"; moved.recipients = []; return moved }()]))
        try await store.close()
    }

    @Test func chathistoryQueriesSelectTheRightMessages() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try await openStore(path)
        let base = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        func message(_ number: Int, from: String, to: String, group: Bool = false) -> StoredMessage {
            StoredMessage(id: "id\(number)", time: base.adding(milliseconds: Int64(number) * 1000), senderNick: from, senderAccount: from,
                          senderPrefix: "\(from)!~\(from)@h", targetKind: group ? .group : .direct, target: to, command: "PRIVMSG", text: "m\(number)")
        }
        // alice and bob talk (1-6); carol writes to alice (7); #team has two messages (8, 9).
        var messages = (1...6).map { message($0, from: $0.isMultiple(of: 2) ? "bob" : "alice", to: $0.isMultiple(of: 2) ? "alice" : "bob") }
        messages.append(message(7, from: "carol", to: "alice"))
        messages.append(message(8, from: "alice", to: "#team", group: true))
        messages.append(message(9, from: "bob", to: "#team", group: true))
        let team = GroupRecord(name: "#team", key: "#team", createdAt: base, owner: "alice", members: ["alice": .owner, "bob": .member])
        try store.perform([.saveGroup(team, previousKey: nil), .storeMessages(messages, afterCommit: [], sender: Self.nobody)])
        func texts(_ kind: HistoryQuery.Kind, limit: Int = 10, _ conversation: HistoryQuery.Conversation = .direct("alice", "bob")) async throws -> [String] {
            guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: conversation, kind: kind, limit: limit)) else { return ["not messages"] }
            return found.map(\.text)
        }
        let at = { (number: Int) in HistoryQuery.Reference.timestamp(base.adding(milliseconds: Int64(number) * 1000)) }
        #expect(try await texts(.latest(after: nil), limit: 3) == ["m4", "m5", "m6"], "the newest, oldest first")
        #expect(try await texts(.latest(after: at(4))) == ["m5", "m6"])
        #expect(try await texts(.before(at(4)), limit: 2) == ["m2", "m3"])
        #expect(try await texts(.before(.msgid("id4")), limit: 2) == ["m2", "m3"], "a msgid reference excludes that message")
        #expect(try await texts(.after(.msgid("id2")), limit: 2) == ["m3", "m4"])
        #expect(try await texts(.around(.msgid("id3")), limit: 3) == ["m2", "m3", "m4"])
        #expect(try await texts(.between(at(1), at(5))) == ["m2", "m3", "m4"])
        #expect(try await texts(.latest(after: nil), .direct("bob", "carol")).isEmpty, "bob and carol never talked")
        #expect(try await texts(.latest(after: nil), .group("#team")) == ["m8", "m9"])
        guard case .targets(let targets) = try store.loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: ["#team"]), kind: .targets(base, base.adding(milliseconds: 60_000)), limit: 10)) else {
            Issue.record("expected targets"); return
        }
        #expect(targets.map(\.key) == ["bob", "carol", "#team"], "conversations by their latest message")
        #expect(targets.map(\.isGroup) == [false, false, true])
        try await store.close()
    }

    @Test func recipientsStoredBeforeTheLeanSchemaAreKept() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await writeOldDatabase(at: path, upTo: "v3-delivery", [
            """
            INSERT INTO accounts (key, name, salt, iterations, stored_key, server_key, created_at)
            VALUES ('alice', 'alice', x'00', 4096, x'01', x'02', 1700000000000), ('bob', 'bob', x'00', 4096, x'01', x'02', 1700000000000)
            """,
            """
            INSERT INTO messages (id, time, sender_nick, sender_account, sender_prefix, target_kind, target, command, text, sender_key)
            VALUES ('m1', 1764000000000, 'alice', 'alice', 'alice!~a@h', 'direct', 'bob', 'PRIVMSG', 'kept for bob', 'alice')
            """,
            "INSERT INTO message_recipients (message_id, recipient) VALUES ('m1', 'bob')",
        ])
        let store = try SQLiteChatStore(path: path)
        let state = try await store.loadDeliveryState(since: Timestamp(millisecondsSince1970: 1_763_000_000_000))
        #expect(state.undelivered["bob"]?.map(\.text) == ["kept for bob"])
        // The recipient row is still keyed by message and recipient: an update finds it.
        try store.perform([.updateRecipients([RecipientUpdate(messageID: "m1", recipient: "bob", deliveredAt: Timestamp(millisecondsSince1970: 1_764_000_000_500))])])
        #expect(try await store.loadDeliveryState(since: Timestamp(millisecondsSince1970: 1_763_000_000_000)).undelivered.isEmpty)
        try await store.close()
    }

    @Test func pruningDropsOldMessagesAndTheirRecipientsOnly() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try await openStore(path)
        let base = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let messages = (0..<5).map { number in
            StoredMessage(id: "p\(number)", time: base.adding(milliseconds: Int64(number) * 1000), senderNick: "alice", senderAccount: "alice",
                          senderPrefix: "alice!~a@h", targetKind: .direct, target: "bob", command: "PRIVMSG", text: "m\(number)",
                          recipients: [StoredRecipient(account: "bob")])
        }
        try store.perform([.storeMessages(messages, afterCommit: [], sender: Self.nobody)])
        try store.perform([.pruneHistory(before: base.adding(milliseconds: 2000))])
        guard case .messages(let kept) = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(kept.map(\.text) == ["m2", "m3", "m4"])
        let state = try await store.loadDeliveryState(since: base.adding(milliseconds: -1))
        #expect(state.undelivered["bob"]?.map(\.id) == ["p2", "p3", "p4"])
        try await store.close()
        let queue = try DatabaseQueue(path: path)
        #expect(try await queue.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM message_recipients") } == 3)
        try queue.close()
    }

    @Test func aBatchThatCannotBeStoredLeavesNothingBehind() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try await openStore(path)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        func message(_ id: String, _ text: String) -> StoredMessage {
            StoredMessage(id: id, time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h",
                          targetKind: .direct, target: "bob", command: "PRIVMSG", text: text, recipients: [StoredRecipient(account: "bob")])
        }
        // The second message reuses an id: the insert fails, and so does the whole batch.
        #expect(throws: DatabaseError.self) {
            try store.perform([.storeMessages([message("d1", "first"), message("d1", "clash")], afterCommit: [], sender: Self.nobody)])
        }
        guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(found.isEmpty)
        // The statement is usable again afterwards.
        try store.perform([.storeMessages([message("d2", "later")], afterCommit: [], sender: Self.nobody)])
        guard case .messages(let later) = try store.loadHistory(HistoryQuery(conversation: .direct("alice", "bob"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(later.map(\.text) == ["later"])
        try await store.close()
    }
}
