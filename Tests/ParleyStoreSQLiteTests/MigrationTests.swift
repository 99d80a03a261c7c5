import Foundation
import GRDB
@testable import ParleyCore
import ParleyStorage
@testable import ParleyStoreSQLite
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
        try store.transaction { try $0.updateRecipients([RecipientUpdate(messageID: "m1", recipient: "bob", deliveredAt: Timestamp(millisecondsSince1970: 1_764_000_000_500))]) }
        #expect(try await store.loadDeliveryState(since: Timestamp(millisecondsSince1970: 1_763_000_000_000), maxTrackedRecipients: 200_000).undelivered.isEmpty)
        try await store.close()
    }

    @Test func theV6MigrationTurnsTheOldVoiceRankIntoVoiceBesideMembership() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        // Before v6, voice was a rank (role 1) between member and operator.
        try await writeOldDatabase(at: path, upTo: "v5-identities", [
            """
            INSERT INTO accounts (key, name, salt, iterations, stored_key, server_key, created_at)
            VALUES ('alice', 'alice', x'00', 4096, x'01', x'02', 1000), ('bob', 'bob', x'00', 4096, x'01', x'02', 1000),
                   ('carol', 'carol', x'00', 4096, x'01', x'02', 1000)
            """,
            "INSERT INTO groups (key, name, created_at, owner_id, modes) VALUES ('#team', '#team', 4000, 1, 'int')",
            "INSERT INTO group_members (group_id, account_id, role) VALUES (1, 1, 3), (1, 2, 1), (1, 3, 2)",
        ])
        let store = try SQLiteChatStore(path: path)
        let group = try #require(try await store.loadGroups().first)
        #expect(group.members == ["alice": .owner, "bob": .member, "carol": .op])
        #expect(group.voiced == ["bob"])
        try await store.close()
    }

    @Test func theV7MigrationKeepsEveryRecipientOfOlderGroupMessagesAsItWas() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        // Before v7 a group message had a row per recipient: bob had it, carol was added to the
        // group only after it was sent (so it was never hers).
        try await writeOldDatabase(at: path, upTo: "v6-voice-apart", [
            """
            INSERT INTO accounts (key, name, salt, iterations, stored_key, server_key, created_at)
            VALUES ('alice', 'alice', x'00', 4096, x'01', x'02', 1000), ('bob', 'bob', x'00', 4096, x'01', x'02', 1000),
                   ('carol', 'carol', x'00', 4096, x'01', x'02', 1000)
            """,
            "INSERT INTO groups (key, name, created_at, owner_id, modes) VALUES ('#team', '#team', 4000, 1, 'int')",
            "INSERT INTO group_members (group_id, account_id, role) VALUES (1, 1, 3), (1, 2, 0), (1, 3, 0)",
            """
            INSERT INTO messages (id, time, sender_id, sender_nick, sender_prefix, target_kind, target_id, command, text)
            VALUES ('old', 5000, 1, 'alice', 'alice!~a@h', 'group', 1, 'PRIVMSG', 'before v7')
            """,
            "INSERT INTO message_recipients (message_id, recipient_id, delivered_at) VALUES ('old', 2, 5000)",
        ])
        let store = try SQLiteChatStore(path: path)
        // A message after the upgrade has no row for the members online; both are its recipients.
        let now = Timestamp(millisecondsSince1970: 6000)
        try store.transaction {
            try $0.storeMessages([StoredMessage(
                id: "new", time: now, senderNick: "alice", senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .group,
                target: "#team", command: "PRIVMSG", text: "after v7",
                recipients: [StoredRecipient(account: "bob", deliveredAt: now), StoredRecipient(account: "carol", deliveredAt: now)])])
        }
        guard case .messages(let found) = try store.loadHistory(HistoryQuery(
            conversation: .everything(account: "alice", groups: ["#team"]), kind: .receipts(["old", "new"]), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        let recipients = Dictionary(uniqueKeysWithValues: found.map { ($0.id, $0.recipients.map(\.account)) })
        #expect(recipients == ["old": ["bob"], "new": ["bob", "carol"]])
        let rows = try await store.rowCount(of: "message_recipients")
        #expect(rows == 1, "the message after the upgrade is one row")
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

    @Test func theV8MigrationFindsEveryConversationThroughOneIndex() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        // Account ids 9 and 10 sort differently as text ("a10" < "a9") than as numbers, and a
        // guest's identity ("!...") before any account: the key written by the migration's SQL
        // must be the one the store computes for a new message of the same conversation.
        try await writeOldDatabase(at: path, upTo: "v7-group-positions", [
            """
            INSERT INTO accounts (id, key, name, salt, iterations, stored_key, server_key, created_at)
            VALUES (9, 'alice', 'alice', x'00', 4096, x'01', x'02', 1000), (10, 'bob', 'bob', x'00', 4096, x'01', x'02', 1000),
                   (11, 'carol', 'carol', x'00', 4096, x'01', x'02', 1000)
            """,
            "INSERT INTO groups (key, name, created_at, owner_id, modes) VALUES ('#team', '#team', 1000, 9, 'int')",
            "INSERT INTO group_members (group_id, account_id, role) VALUES (1, 9, 3), (1, 10, 0)",
            """
            INSERT INTO messages (id, time, sender_id, sender_guest, sender_nick, sender_prefix, target_kind, target_id, target_guest, target_name, command, text)
            VALUES ('d1', 2000, 9, NULL, 'alice', 'alice!~a@h', 'direct', 10, NULL, NULL, 'PRIVMSG', 'alice to bob'),
                   ('d2', 2001, 10, NULL, 'bob', 'bob!~b@h', 'direct', 9, NULL, NULL, 'PRIVMSG', 'bob to alice'),
                   ('d3', 2002, 9, NULL, 'alice', 'alice!~a@h', 'direct', 11, NULL, NULL, 'PRIVMSG', 'alice to carol'),
                   ('g1', 2003, NULL, '!abc.7', 'visitor', 'visitor!~v@h', 'direct', 10, NULL, NULL, 'PRIVMSG', 'guest to bob'),
                   ('g2', 2004, 10, NULL, 'bob', 'bob!~b@h', 'direct', NULL, '!abc.7', 'visitor', 'PRIVMSG', 'bob to guest'),
                   ('t1', 2005, 9, NULL, 'alice', 'alice!~a@h', 'group', 1, NULL, NULL, 'PRIVMSG', 'to the team')
            """,
        ])
        let store = try SQLiteChatStore(path: path)
        let now = Timestamp(millisecondsSince1970: 3000)
        try store.transaction {
            try $0.storeMessages([
                StoredMessage(id: "d4", time: now, senderNick: "bob", senderAccount: "bob", senderPrefix: "bob!~b@h", targetKind: .direct,
                              target: "alice", command: "PRIVMSG", text: "bob to alice after"),
                StoredMessage(id: "g3", time: now.adding(milliseconds: 1), senderNick: "visitor", senderAccount: nil, senderGuest: "!abc.7", senderPrefix: "visitor!~v@h",
                              targetKind: .direct, target: "bob", command: "PRIVMSG", text: "guest to bob after"),
                StoredMessage(id: "t2", time: now.adding(milliseconds: 2), senderNick: "bob", senderAccount: "bob", senderPrefix: "bob!~b@h", targetKind: .group,
                              target: "#team", command: "PRIVMSG", text: "to the team after"),
            ])
        }
        func texts(_ conversation: HistoryQuery.Conversation) throws -> [String] {
            guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: conversation, kind: .latest(after: nil), limit: 10)) else { return ["not messages"] }
            return found.map(\.text)
        }
        #expect(try texts(.direct("alice", "bob")) == ["alice to bob", "bob to alice", "bob to alice after"])
        #expect(try texts(.direct("bob", "alice")) == ["alice to bob", "bob to alice", "bob to alice after"])
        #expect(try texts(.direct("carol", "alice")) == ["alice to carol"])
        #expect(try texts(.direct("bob", "!abc.7")) == ["guest to bob", "bob to guest", "guest to bob after"])
        #expect(try texts(.direct("alice", "!abc.7")).isEmpty)
        #expect(try texts(.group("#team")) == ["to the team", "to the team after"])
        guard case .targets(let targets) = try store.loadHistory(HistoryQuery(
            conversation: .everything(account: "bob", groups: ["#team"]),
            kind: .targets(Timestamp(millisecondsSince1970: 0), Timestamp(millisecondsSince1970: 10_000)), limit: 10)) else {
            Issue.record("expected targets"); return
        }
        #expect(targets.map(\.key) == ["alice", "!abc.7", "#team"])
        try await store.close()

        // Messages are found through one index of their conversation, not by target and sender.
        let queue = try DatabaseQueue(path: path)
        let indexes = try await queue.read { db in
            try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages' AND sql IS NOT NULL")
        }
        #expect(indexes == ["messages_by_conversation"])
        try queue.close()
    }


    /// v9 moves direct messages' recipient rows into `direct_recipients` with what they said (a
    /// message still waiting keeps waiting, a read stays read); group members' rows stay.
    @Test func theV9MigrationMovesDirectRecipientsAndKeepsTheirState() async throws {
        let path = temporaryPath()
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await writeOldDatabase(at: path, upTo: "v8-conversations", [
            """
            INSERT INTO accounts (id, key, name, salt, iterations, stored_key, server_key, created_at)
            VALUES (1, 'alice', 'alice', x'00', 4096, x'01', x'02', 1000), (2, 'bob', 'bob', x'00', 4096, x'01', x'02', 1000)
            """,
            "INSERT INTO groups (id, key, name, created_at, owner_id, modes) VALUES (1, '#team', '#team', 1000, 1, 'int')",
            "INSERT INTO group_members (group_id, account_id, role, since) VALUES (1, 1, 3, 0), (1, 2, 0, 0)",
            "INSERT INTO conversations (id, key) VALUES (1, 'a1 a2'), (2, 'g1')",
            """
            INSERT INTO messages (id, time, sender_id, sender_nick, sender_prefix, target_kind, target_id, command, text, conversation_id)
            VALUES ('waits', 2000, 1, 'alice', 'alice!~a@h', 'direct', 2, 'PRIVMSG', 'while bob was away', 1),
                   ('read', 2001, 1, 'alice', 'alice!~a@h', 'direct', 2, 'PRIVMSG', 'read by bob', 1),
                   ('team', 2002, 1, 'alice', 'alice!~a@h', 'group', 1, 'PRIVMSG', 'to the team', 2)
            """,
            """
            INSERT INTO message_recipients (message_id, recipient_id, delivered_at, read_at, delivered_notified, read_notified)
            VALUES ('waits', 2, NULL, NULL, 0, 0), ('read', 2, 2001, 3000, 1, 0), ('team', 2, NULL, NULL, 0, 0)
            """,
        ])
        let store = try SQLiteChatStore(path: path)
        #expect(try await store.rowCount(of: "direct_recipients") == 2)
        #expect(try await store.rowCount(of: "message_recipients") == 1, "the group member's row stays")
        let state = try await store.loadDeliveryState(since: Timestamp(millisecondsSince1970: 0), maxTrackedRecipients: 1000)
        #expect(state.undelivered["bob"]?.map(\.id) == ["waits", "team"])
        let recipients = Dictionary(uniqueKeysWithValues: state.tracked.map { ($0.id, $0.recipients) })
        #expect(recipients["read"] == [StoredRecipient(account: "bob", deliveredAt: Timestamp(millisecondsSince1970: 2001),
                                                       readAt: Timestamp(millisecondsSince1970: 3000), deliveredNotified: true)])
        // Delivered now: both rows say so.
        let now = Timestamp(millisecondsSince1970: 5000)
        try store.transaction {
            try $0.updateRecipients([RecipientUpdate(messageID: "waits", recipient: "bob", deliveredAt: now),
                                     RecipientUpdate(messageID: "team", recipient: "bob", deliveredAt: now)])
        }
        let after = try await store.loadDeliveryState(since: Timestamp(millisecondsSince1970: 0), maxTrackedRecipients: 1000)
        #expect(after.undelivered.isEmpty)
        try await store.close()
    }
}
