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
        var state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.undelivered["bob"]?.map(\.id) == ["x1"])
        #expect(state.undelivered["carol"] == nil)
        // Delivered and read, with receipts sent: nothing is pending any more.
        try store.perform([
            .updateRecipients([RecipientUpdate(messageID: "x1", recipient: "bob", deliveredAt: now, readAt: now, deliveredNotified: true, readNotified: true),
                               RecipientUpdate(messageID: "x1", recipient: "carol", readAt: now, deliveredNotified: true, readNotified: true)]),
        ])
        state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
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
        let state = try await store.loadDeliveryState(since: Timestamp(millisecondsSince1970: 1_763_000_000_000), maxTrackedRecipients: 200_000)
        #expect(state.undelivered["bob"]?.map(\.text) == ["kept for bob"])
        // The recipient row is still keyed by message and recipient: an update finds it.
        try store.perform([.updateRecipients([RecipientUpdate(messageID: "m1", recipient: "bob", deliveredAt: Timestamp(millisecondsSince1970: 1_764_000_000_500))])])
        #expect(try await store.loadDeliveryState(since: Timestamp(millisecondsSince1970: 1_763_000_000_000), maxTrackedRecipients: 200_000).undelivered.isEmpty)
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
        let state = try await store.loadDeliveryState(since: base.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
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

    @Test func theV5MigrationBindsOldRowsToIdentitiesNotNames() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        // A v4 file with the histories names used to leak: a guest "bob" who chatted with alice
        // before the account bob existed, and a group #team deleted and made again.
        try await writeOldDatabase(at: path, upTo: "v4-lean-delivery", [
            """
            INSERT INTO accounts (key, name, salt, iterations, stored_key, server_key, created_at)
            VALUES ('alice', 'alice', x'00', 4096, x'01', x'02', 1000), ('bob', 'bob', x'00', 4096, x'01', x'02', 5000)
            """,
            "INSERT INTO groups (key, name, created_at, owner, modes) VALUES ('#team', '#team', 4000, 'alice', 'int')",
            "INSERT INTO group_members (group_key, account_key, role) VALUES ('#team', 'alice', 3), ('#team', 'bob', 0)",
            """
            INSERT INTO messages (id, time, sender_nick, sender_account, sender_prefix, target_kind, target, command, text, sender_key) VALUES
            ('g1', 2000, 'bob', NULL, 'bob!~b@h', 'direct', 'alice', 'PRIVMSG', 'guest bob to alice', 'bob'),
            ('g2', 3000, 'alice', 'alice', 'alice!~a@h', 'direct', 'bob', 'PRIVMSG', 'alice to guest bob', 'alice'),
            ('t1', 3500, 'alice', 'alice', 'alice!~a@h', 'group', '#team', 'PRIVMSG', 'to the deleted #team', 'alice'),
            ('t2', 4500, 'alice', 'alice', 'alice!~a@h', 'group', '#team', 'PRIVMSG', 'to the current #team', 'alice'),
            ('a1', 6000, 'alice', 'alice', 'alice!~a@h', 'direct', 'bob', 'PRIVMSG', 'alice to account bob', 'alice')
            """,
            "INSERT INTO message_recipients (message_id, recipient) VALUES ('t2', 'bob'), ('a1', 'bob')",
            "INSERT INTO read_markers (account, target, time) VALUES ('bob', '#team', 4500), ('bob', 'alice', 6000)",
        ])
        let store = try SQLiteChatStore(path: path)
        func texts(_ conversation: HistoryQuery.Conversation) throws -> [String] {
            guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: conversation, kind: .latest(after: nil), limit: 10)) else { return ["not messages"] }
            return found.map(\.text)
        }
        #expect(try texts(.direct("bob", "alice")) == ["alice to account bob"], "the account bob reads only its own conversation")
        #expect(try texts(.direct("alice", "!legacy.bob")) == ["guest bob to alice", "alice to guest bob"], "alice keeps hers with the guest")
        #expect(try texts(.group("#team")) == ["to the current #team"])
        let state = try await store.loadDeliveryState(since: Timestamp(millisecondsSince1970: 0), maxTrackedRecipients: 200_000)
        #expect(state.readMarkers["bob"] == ["#team": Timestamp(millisecondsSince1970: 4500), "alice": Timestamp(millisecondsSince1970: 6000)])
        #expect(state.undelivered["bob"]?.map(\.id) == ["t2", "a1"])
        #expect(try await store.loadGroups().first?.members == ["alice": .owner, "bob": .member])
        try await store.close()

        // Every reference to an account or a group is an integer id; names are attributes only.
        let queue = try DatabaseQueue(path: path)
        let kinds = try await queue.read { db in
            try String.fetchAll(db, sql: """
                SELECT DISTINCT typeof(recipient_id) FROM message_recipients
                UNION SELECT DISTINCT typeof(account_id) FROM read_markers UNION SELECT DISTINCT typeof(target_id) FROM read_markers
                UNION SELECT DISTINCT typeof(group_id) FROM group_members UNION SELECT DISTINCT typeof(account_id) FROM group_members
                UNION SELECT DISTINCT typeof(owner_id) FROM groups UNION SELECT DISTINCT typeof(sender_id) FROM messages WHERE sender_guest IS NULL
                UNION SELECT DISTINCT typeof(target_id) FROM messages WHERE target_guest IS NULL
                """)
        }
        #expect(kinds == ["integer"])
        try queue.close()
    }

    @Test func aDeletedGroupTakesItsRowsAndARenamedOneKeepsThem() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try await openStore(path)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let team = GroupRecord(name: "#team", key: "#team", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member])
        func message(_ id: String) -> StoredMessage {
            StoredMessage(id: id, time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .group,
                          target: "#team", command: "PRIVMSG", text: id, recipients: [StoredRecipient(account: "bob")])
        }
        func texts(_ key: String) throws -> [String] {
            guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: .group(key), kind: .latest(after: nil), limit: 10)) else { return ["not messages"] }
            return found.map(\.text)
        }
        try store.perform([.saveGroup(team, previousKey: nil), .storeMessages([message("first")], afterCommit: [], sender: Self.nobody),
                           .saveReadMarker(account: "bob", target: "#team", time: now)])
        var renamed = team
        renamed.name = "#crew"
        renamed.key = "#crew"
        try store.perform([.saveGroup(renamed, previousKey: "#team")])
        #expect(try texts("#crew") == ["first"])
        #expect(try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000).readMarkers["bob"] == ["#crew": now])
        // Deleted, then made again under the same name in the same batch: a new group, empty.
        try store.perform([.deleteGroup(key: "#crew"), .saveGroup(renamed, previousKey: nil)])
        #expect(try texts("#crew").isEmpty)
        let state = try await store.loadDeliveryState(since: now.adding(milliseconds: -1), maxTrackedRecipients: 200_000)
        #expect(state.readMarkers["bob"] == nil)
        #expect(state.undelivered.isEmpty)
        try await store.close()
    }

    @Test func startUpLoadsABoundedWindowWhateverTheHistorysSize() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let store = try await openStore(path)
        let base = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        // 5,000 messages bob received and never marked read (most IRC clients send no MARKREAD),
        // and three that carol has not received yet, the first of them the oldest of all.
        func message(_ number: Int, to recipient: String, delivered: Bool) -> StoredMessage {
            StoredMessage(id: "s\(number)", time: base.adding(milliseconds: Int64(number)), senderNick: "alice", senderAccount: "alice",
                          senderPrefix: "alice!~a@h", targetKind: .direct, target: recipient, command: "PRIVMSG", text: "\(number)",
                          recipients: [StoredRecipient(account: recipient, deliveredAt: delivered ? base : nil, deliveredNotified: delivered)])
        }
        var messages = [message(0, to: "carol", delivered: false)]
        messages += (1...5000).map { message($0, to: "bob", delivered: true) }
        messages += [message(5001, to: "carol", delivered: false), message(5002, to: "carol", delivered: false)]
        try store.perform([.storeMessages(messages, afterCommit: [], sender: Self.nobody)])

        let state = try await store.loadDeliveryState(since: base.adding(milliseconds: -1), maxTrackedRecipients: 100)
        #expect(state.undelivered["carol"]?.map(\.id) == ["s0", "s5001", "s5002"], "everything still waiting is loaded, however old")
        #expect(state.tracked.count <= 100 + 1, "the rest is the newest window only: \(state.tracked.count)")
        #expect(state.tracked.contains { $0.id == "s5000" })
        #expect(!state.tracked.contains { $0.id == "s1" })
        try await store.close()
    }
}
