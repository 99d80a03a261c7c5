import CSQLiteTuning
import Foundation
import GRDB
import ParleyCore
import ParleyStorage
import Synchronization

/// The embedded default store: one SQLite file in WAL mode, through GRDB.
///
/// Durability: with `synchronous=NORMAL` (the default here) a committed transaction survives a
/// crash of the process, SIGKILL included, but the last transactions may be lost if the machine
/// loses power. `synchronousFull: true` also survives power loss, at a cost per commit.
public final class SQLiteChatStore: ChatStore {
    private let pool: DatabasePool
    /// Ids behind account and group keys. Writes that change them (group saves and deletes)
    /// run on the storage thread; account inserts on their own; both go through this lock.
    private let identities = Mutex(StoredIdentities())

    /// Conversation ids by their parties (`ConversationParties`) for the writer, so that a message's
    /// conversation costs no lookup in the database. Conversations are never deleted, so an id
    /// stays true; the cache is emptied when it would exceed `cachedConversations`.
    private let conversationIDs = Mutex([ConversationParties: Int64]())
    static let cachedConversations = 100_000

    /// Copies the WAL into the database beside the writer (see `WALCheckpointer`).
    private let checkpointer: WALCheckpointer

    /// - Parameter walCheckpointPages: WAL pages not yet copied into the database at which a
    ///   checkpoint starts beside the writer (about 40 MB with 4 KiB pages by default).
    public init(path: String, synchronousFull: Bool = false, walCheckpointPages: Int = SQLiteChatStore.walCheckpointPages) throws {
        Self.configureSQLiteOnce
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronousFull ? "FULL" : "NORMAL")")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(pool)
        try pool.writeWithoutTransaction { db in
            // The writer alone: every stored message touches the same few b-trees, whose pages
            // then stay in memory instead of being read back from the WAL (SQLite's default
            // cache is 2 MB). Negative sizes are in KiB. Readers keep the default.
            try db.execute(sql: "PRAGMA cache_size = -\(Self.writerCacheKiB)")
        }
        let checkpointer = try WALCheckpointer(path: path, pages: walCheckpointPages)
        self.checkpointer = checkpointer
        pool.writeWithoutTransaction { db in
            if let writer = db.sqliteConnection { checkpointer.install(onWriter: writer) }
        }
        let loaded = try pool.read { db in
            var map = StoredIdentities()
            for row in try Row.fetchAll(db, sql: "SELECT id, key FROM accounts") { map.addAccount(key: row["key"], id: row["id"]) }
            for row in try Row.fetchAll(db, sql: "SELECT id, key FROM groups") { map.setGroup(key: row["key"], id: row["id"]) }
            return map
        }
        identities.withLock { $0 = loaded }
    }

    /// The writer connection's page cache: 64 MiB.
    static let writerCacheKiB = 64 * 1024
    /// WAL pages between checkpoints. Fewer, larger checkpoints than SQLite's default (1,000
    /// pages, every few hundred stored messages), which copied the same hot pages into the
    /// database each time.
    public static let walCheckpointPages = 10_000

    /// Before the first connection opens: GRDB never uses one connection from two threads at
    /// once, so SQLite's per-call mutexes were pure cost (a tenth of the storage thread's time
    /// in the offline profile). A store opened later in the same process changes nothing.
    private static let configureSQLiteOnce: Void = {
        _ = parley_sqlite_configure_single_user_connections()
    }()

    /// Ordered migrations; later issues append, never edit.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "accounts") { table in
                table.primaryKey("key", .text)
                table.column("name", .text).notNull()
                table.column("salt", .blob).notNull()
                table.column("iterations", .integer).notNull()
                table.column("stored_key", .blob).notNull()
                table.column("server_key", .blob).notNull()
                table.column("created_at", .integer).notNull()
                table.column("last_seen", .integer)
                table.column("email", .text)
                table.column("settings", .text).notNull().defaults(to: "{}")
            }
            try db.create(table: "messages") { table in
                table.primaryKey("id", .text)
                table.column("time", .integer).notNull()
                table.column("sender_nick", .text).notNull()
                table.column("sender_account", .text)
                table.column("sender_prefix", .text).notNull()
                table.column("target_kind", .text).notNull()
                table.column("target", .text).notNull()
                table.column("command", .text).notNull()
                table.column("text", .text).notNull()
                table.column("client_tags", .text).notNull().defaults(to: "")
            }
            try db.create(index: "messages_by_target", on: "messages", columns: ["target_kind", "target", "time"])
        }
        migrator.registerMigration("v2-groups") { db in
            try db.create(table: "groups") { table in
                table.primaryKey("key", .text)
                table.column("name", .text).notNull()
                table.column("created_at", .integer).notNull()
                table.column("owner", .text).notNull()
                table.column("topic", .text).notNull().defaults(to: "")
                table.column("topic_set_by", .text).notNull().defaults(to: "")
                table.column("topic_set_at", .integer)
                table.column("modes", .text).notNull()
                table.column("password", .text)
                table.column("user_limit", .integer)
            }
            try db.create(table: "group_members") { table in
                table.column("group_key", .text).notNull().references("groups", onDelete: .cascade, onUpdate: .cascade)
                table.column("account_key", .text).notNull()
                table.column("role", .integer).notNull()
                table.primaryKey(["group_key", "account_key"])
            }
            try db.create(index: "group_members_by_account", on: "group_members", columns: ["account_key"])
            try db.create(table: "group_bans") { table in
                table.column("group_key", .text).notNull().references("groups", onDelete: .cascade, onUpdate: .cascade)
                table.column("mask", .text).notNull()
                table.column("set_by", .text).notNull()
                table.column("set_at", .integer).notNull()
            }
        }
        migrator.registerMigration("v3-delivery") { db in
            try db.alter(table: "messages") { table in
                // Who sent it, as one key: the account, or the lower-cased nick of a guest.
                table.add(column: "sender_key", .text)
            }
            try db.execute(sql: "UPDATE messages SET sender_key = COALESCE(sender_account, lower(sender_nick))")
            try db.create(index: "messages_by_sender", on: "messages", columns: ["target_kind", "sender_key", "time"])
            try db.create(index: "messages_by_time", on: "messages", columns: ["time"])
            try db.create(table: "message_recipients") { table in
                table.column("message_id", .text).notNull().references("messages", onDelete: .cascade)
                table.column("recipient", .text).notNull()
                table.column("delivered_at", .integer)
                table.column("read_at", .integer)
                table.column("delivered_notified", .boolean).notNull().defaults(to: false)
                table.column("read_notified", .boolean).notNull().defaults(to: false)
                table.primaryKey(["message_id", "recipient"])
            }
            try db.execute(sql: "CREATE INDEX message_recipients_waiting ON message_recipients(recipient) WHERE delivered_at IS NULL")
            try db.create(table: "read_markers") { table in
                table.column("account", .text).notNull()
                table.column("target", .text).notNull()
                table.column("time", .integer).notNull()
                table.primaryKey(["account", "target"])
            }
        }
        migrator.registerMigration("v4-lean-delivery") { db in
            // Every stored message touches each index of its tables; the two dropped here were
            // never read by a query (pruning goes by rowid, in time order), and the recipients'
            // rows are found by their key, so the key is the table (no separate rowid tree).
            try db.execute(sql: "DROP INDEX message_recipients_waiting")
            try db.execute(sql: "DROP INDEX messages_by_time")
            try db.execute(sql: """
                CREATE TABLE message_recipients_v4 (
                    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
                    recipient TEXT NOT NULL,
                    delivered_at INTEGER,
                    read_at INTEGER,
                    delivered_notified BOOLEAN NOT NULL DEFAULT 0,
                    read_notified BOOLEAN NOT NULL DEFAULT 0,
                    PRIMARY KEY (message_id, recipient)
                ) WITHOUT ROWID
                """)
            try db.execute(sql: "INSERT INTO message_recipients_v4 SELECT message_id, recipient, delivered_at, read_at, delivered_notified, read_notified FROM message_recipients")
            try db.execute(sql: "DROP TABLE message_recipients")
            try db.execute(sql: "ALTER TABLE message_recipients_v4 RENAME TO message_recipients")
        }
        migrator.registerMigration("v5-identities") { db in
            try Self.migrateToStableIdentities(db)
        }
        migrator.registerMigration("v6-voice-apart") { db in
            // Voice became a mark beside the role (an operator can be voiced): role 1 was voice.
            try db.execute(sql: """
                ALTER TABLE group_members ADD COLUMN voiced INTEGER NOT NULL DEFAULT 0;
                UPDATE group_members SET voiced = 1, role = 0 WHERE role = 1;
                """)
        }
        migrator.registerMigration("v7-group-positions") { db in
            // A group message became one row: members who get it as it is sent have no recipient
            // row, their state follows from when they joined and how far they have read. Messages
            // stored before this migration have a row for each of their recipients, so today's
            // members count as joined after all of them (`since`, a rowid of messages). Their
            // receipts to an author who has no receipts client wait from `receipts_pending_since`.
            try db.execute(sql: """
                ALTER TABLE accounts ADD COLUMN receipts_pending_since INTEGER;
                ALTER TABLE group_members ADD COLUMN since INTEGER NOT NULL DEFAULT 0;
                UPDATE group_members SET since = (SELECT IFNULL(MAX(rowid), 0) FROM messages);
                CREATE TABLE group_read_positions (
                    group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
                    account_id INTEGER NOT NULL REFERENCES accounts(id),
                    read_until INTEGER NOT NULL,
                    PRIMARY KEY (group_id, account_id)
                ) WITHOUT ROWID;
                """)
        }
        migrator.registerMigration("v8-conversations") { db in
            // Each stored message went into two indexes with scattered keys (by target and by
            // sender), so each commit wrote two scattered index pages per message. One index by
            // conversation serves both sides of a direct conversation and a group; an account's
            // direct conversations are listed in `conversation_parties` (for CHATHISTORY TARGETS).
            try db.execute(sql: """
                CREATE TABLE conversations (
                    id INTEGER PRIMARY KEY,
                    key TEXT NOT NULL UNIQUE
                );
                CREATE TABLE conversation_parties (
                    account_id INTEGER NOT NULL REFERENCES accounts(id),
                    conversation_id INTEGER NOT NULL REFERENCES conversations(id),
                    PRIMARY KEY (account_id, conversation_id)
                ) WITHOUT ROWID;
                ALTER TABLE messages ADD COLUMN conversation_id INTEGER;
                INSERT OR IGNORE INTO conversations (key) SELECT \(ConversationKey.sql) FROM messages ORDER BY rowid;
                UPDATE messages SET conversation_id = (SELECT c.id FROM conversations c WHERE c.key = \(ConversationKey.sql));
                INSERT OR IGNORE INTO conversation_parties (account_id, conversation_id)
                    SELECT sender_id, conversation_id FROM messages WHERE target_kind = 'direct' AND sender_id IS NOT NULL;
                INSERT OR IGNORE INTO conversation_parties (account_id, conversation_id)
                    SELECT target_id, conversation_id FROM messages WHERE target_kind = 'direct' AND target_id IS NOT NULL;
                DROP INDEX messages_by_target;
                DROP INDEX messages_by_sender;
                CREATE INDEX messages_by_conversation ON messages(conversation_id, time);
                """)
        }
        migrator.registerMigration("v9-direct-recipients") { db in
            // A direct message has one recipient, the account it was sent to: its row needs
            // neither the message's text id nor the two foreign keys checked at every insert
            // (the biggest single cost of storing a message to a logged-out account). Keyed by the
            // message's rowid it is appended to a small integer b-tree; a trigger takes it away
            // with its message, as the foreign key's cascade did.
            try db.execute(sql: """
                CREATE TABLE direct_recipients (
                    message_rowid INTEGER PRIMARY KEY,
                    delivered_at INTEGER,
                    read_at INTEGER,
                    delivered_notified BOOLEAN NOT NULL DEFAULT 0,
                    read_notified BOOLEAN NOT NULL DEFAULT 0
                );
                INSERT INTO direct_recipients (message_rowid, delivered_at, read_at, delivered_notified, read_notified)
                    SELECT m.rowid, r.delivered_at, r.read_at, r.delivered_notified, r.read_notified
                    FROM message_recipients r JOIN messages m ON m.id = r.message_id
                    WHERE m.target_kind = 'direct' AND r.recipient_id = m.target_id;
                DELETE FROM message_recipients WHERE message_id IN (SELECT id FROM messages WHERE target_kind = 'direct');
                CREATE TRIGGER direct_recipients_go_with_their_message AFTER DELETE ON messages WHEN OLD.target_kind = 'direct'
                BEGIN
                    DELETE FROM direct_recipients WHERE message_rowid = OLD.rowid;
                END;
                """)
        }
        return migrator
    }

    /// v5: rows refer to accounts and groups by stable integer ids, never by a name.
    ///
    /// Earlier schemas keyed messages by names (an account's or a guest's nick, a group's name),
    /// so whoever held the name later inherited the history. Old rows are carried over with what
    /// they can be proven to mean: a direct message was to an account exactly when that account
    /// existed when it was sent (an account's name is reserved from its creation on, so before it
    /// the name was a guest's); a guest's messages get an identity
    /// of their own (`!legacy.<nick>`) that no connection can hold; a group message belongs to the
    /// group of that name only if it was sent after the group was created (older ones belonged to
    /// a deleted group of the same name, and are dropped with the orphans of deleted groups).
    static func migrateToStableIdentities(_ db: Database) throws {
        for table in ["accounts", "groups", "group_members", "group_bans", "messages", "message_recipients", "read_markers"] {
            try db.execute(sql: "ALTER TABLE \(table) RENAME TO \(table)_v4")
        }
        // Indexes keep their names when their table is renamed; the new tables reuse the names.
        for index in ["group_members_by_account", "messages_by_target", "messages_by_sender"] {
            try db.execute(sql: "DROP INDEX \(index)")
        }
        try db.execute(sql: """
            CREATE TABLE accounts (
                id INTEGER PRIMARY KEY,
                key TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                salt BLOB NOT NULL,
                iterations INTEGER NOT NULL,
                stored_key BLOB NOT NULL,
                server_key BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                last_seen INTEGER,
                email TEXT,
                settings TEXT NOT NULL DEFAULT '{}'
            );
            INSERT INTO accounts (key, name, salt, iterations, stored_key, server_key, created_at, last_seen, email, settings)
                SELECT key, name, salt, iterations, stored_key, server_key, created_at, last_seen, email, settings
                FROM accounts_v4 ORDER BY created_at, key;

            CREATE TABLE groups (
                id INTEGER PRIMARY KEY,
                key TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                owner_id INTEGER NOT NULL REFERENCES accounts(id),
                topic TEXT NOT NULL DEFAULT '',
                topic_set_by TEXT NOT NULL DEFAULT '',
                topic_set_at INTEGER,
                modes TEXT NOT NULL,
                password TEXT,
                user_limit INTEGER
            );
            INSERT INTO groups (key, name, created_at, owner_id, topic, topic_set_by, topic_set_at, modes, password, user_limit)
                SELECT g.key, g.name, g.created_at, a.id, g.topic, g.topic_set_by, g.topic_set_at, g.modes, g.password, g.user_limit
                FROM groups_v4 g JOIN accounts a ON a.key = g.owner ORDER BY g.created_at;

            CREATE TABLE group_members (
                group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
                account_id INTEGER NOT NULL REFERENCES accounts(id),
                role INTEGER NOT NULL,
                PRIMARY KEY (group_id, account_id)
            ) WITHOUT ROWID;
            CREATE INDEX group_members_by_account ON group_members(account_id);
            INSERT INTO group_members (group_id, account_id, role)
                SELECT g.id, a.id, m.role FROM group_members_v4 m
                JOIN groups g ON g.key = m.group_key JOIN accounts a ON a.key = m.account_key;

            CREATE TABLE group_bans (
                group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
                mask TEXT NOT NULL,
                set_by TEXT NOT NULL,
                set_at INTEGER NOT NULL
            );
            CREATE INDEX group_bans_by_group ON group_bans(group_id);
            INSERT INTO group_bans (group_id, mask, set_by, set_at)
                SELECT g.id, b.mask, b.set_by, b.set_at FROM group_bans_v4 b JOIN groups g ON g.key = b.group_key ORDER BY b.rowid;

            CREATE TABLE messages (
                id TEXT PRIMARY KEY,
                time INTEGER NOT NULL,
                sender_id INTEGER,
                sender_guest TEXT,
                sender_nick TEXT NOT NULL,
                sender_prefix TEXT NOT NULL,
                target_kind TEXT NOT NULL,
                target_id INTEGER,
                target_guest TEXT,
                target_name TEXT,
                command TEXT NOT NULL,
                text TEXT NOT NULL,
                client_tags TEXT NOT NULL DEFAULT ''
            );
            INSERT INTO messages (rowid, id, time, sender_id, sender_guest, sender_nick, sender_prefix, target_kind,
                                  target_id, target_guest, target_name, command, text, client_tags)
                SELECT m.rowid, m.id, m.time, sender.id,
                       CASE WHEN m.sender_account IS NULL THEN '!legacy.' || COALESCE(m.sender_key, lower(m.sender_nick)) END,
                       m.sender_nick, m.sender_prefix, m.target_kind,
                       CASE WHEN m.target_kind = 'group' THEN g.id ELSE target.id END,
                       CASE WHEN m.target_kind = 'direct' AND target.id IS NULL THEN '!legacy.' || m.target END,
                       CASE WHEN m.target_kind = 'direct' AND target.id IS NULL THEN m.target END,
                       m.command, m.text, m.client_tags
                FROM messages_v4 m
                LEFT JOIN accounts sender ON sender.key = m.sender_account
                LEFT JOIN accounts target ON m.target_kind = 'direct' AND target.key = m.target AND target.created_at <= m.time
                LEFT JOIN groups g ON m.target_kind = 'group' AND g.key = m.target AND m.time >= g.created_at
                WHERE m.target_kind = 'direct' OR g.id IS NOT NULL
                ORDER BY m.rowid;
            DELETE FROM messages WHERE target_kind = 'direct' AND target_id IS NULL AND target_guest IS NULL;
            CREATE INDEX messages_by_target ON messages(target_kind, target_id, time);
            CREATE INDEX messages_by_sender ON messages(target_kind, sender_id, time);

            CREATE TABLE message_recipients (
                message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
                recipient_id INTEGER NOT NULL REFERENCES accounts(id),
                delivered_at INTEGER,
                read_at INTEGER,
                delivered_notified BOOLEAN NOT NULL DEFAULT 0,
                read_notified BOOLEAN NOT NULL DEFAULT 0,
                PRIMARY KEY (message_id, recipient_id)
            ) WITHOUT ROWID;
            INSERT INTO message_recipients (message_id, recipient_id, delivered_at, read_at, delivered_notified, read_notified)
                SELECT r.message_id, a.id, r.delivered_at, r.read_at, r.delivered_notified, r.read_notified
                FROM message_recipients_v4 r JOIN messages m ON m.id = r.message_id JOIN accounts a ON a.key = r.recipient;

            CREATE TABLE read_markers (
                account_id INTEGER NOT NULL REFERENCES accounts(id),
                target_kind TEXT NOT NULL,
                target_id INTEGER NOT NULL,
                time INTEGER NOT NULL,
                PRIMARY KEY (account_id, target_kind, target_id)
            ) WITHOUT ROWID;
            INSERT INTO read_markers (account_id, target_kind, target_id, time)
                SELECT a.id, 'group', g.id, r.time FROM read_markers_v4 r
                JOIN accounts a ON a.key = r.account JOIN groups g ON g.key = r.target;
            INSERT INTO read_markers (account_id, target_kind, target_id, time)
                SELECT a.id, 'direct', other.id, r.time FROM read_markers_v4 r
                JOIN accounts a ON a.key = r.account JOIN accounts other ON other.key = r.target
                WHERE substr(r.target, 1, 1) NOT IN ('#', '&');

            DROP TABLE read_markers_v4;
            DROP TABLE message_recipients_v4;
            DROP TABLE messages_v4;
            DROP TABLE group_bans_v4;
            DROP TABLE group_members_v4;
            DROP TABLE groups_v4;
            DROP TABLE accounts_v4;
            """)
    }

    public func loadAccounts() async throws -> [AccountRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM accounts").map(Self.account(from:))
        }
    }

    public func insertAccount(_ account: AccountRecord) async throws {
        let settings = try Self.encodeSettings(account.settings)
        do {
            let id = try await pool.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO accounts (key, name, salt, iterations, stored_key, server_key, created_at, last_seen, email, settings)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        account.key, account.name, Data(account.credential.salt), account.credential.iterations,
                        Data(account.credential.storedKey), Data(account.credential.serverKey),
                        Self.milliseconds(account.createdAt), account.lastSeen.map(Self.milliseconds), account.email, settings,
                    ])
                return db.lastInsertedRowID
            }
            identities.withLock { $0.addAccount(key: account.key, id: id) }
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE || error.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY {
            throw StoreError.accountExists
        }
    }

    public func updateCredential(accountKey: String, _ credential: PasswordCredential) async throws -> Bool {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE accounts SET salt = ?, iterations = ?, stored_key = ?, server_key = ? WHERE key = ?",
                arguments: [Data(credential.salt), credential.iterations, Data(credential.storedKey), Data(credential.serverKey), accountKey])
            return db.changesCount > 0
        }
    }

    /// The busiest statements of the server, bound directly (not through StatementArguments)
    /// and looked up once per transaction (each lookup hashed the whole SQL text).
    struct MessageInserter {
        private let row: SQLiteBinding
        private let recipientRow: SQLiteBinding
        private let directRecipientRow: SQLiteBinding

        init(_ db: Database) throws {
            row = SQLiteBinding(try db.cachedStatement(sql: """
                INSERT INTO messages (id, time, sender_id, sender_guest, sender_nick, sender_prefix, target_kind, target_id, target_guest, target_name, command, text, client_tags, conversation_id)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """), in: db)
            recipientRow = SQLiteBinding(try db.cachedStatement(sql: """
                INSERT INTO message_recipients (message_id, recipient_id, delivered_at, read_at, delivered_notified, read_notified)
                VALUES (?, ?, ?, ?, ?, ?)
                """), in: db)
            directRecipientRow = SQLiteBinding(try db.cachedStatement(sql: """
                INSERT INTO direct_recipients (message_rowid, delivered_at, read_at, delivered_notified, read_notified) VALUES (?, ?, ?, ?, ?)
                """), in: db)
        }

        func insert(_ messages: [StoredMessage], ids: StoredIdentities, conversations: inout ConversationIDs, in db: Database) throws {
            for stored in messages {
                let targetID: Int64?
                var targetGuest: String?
                switch stored.targetKind {
                case .group:
                    guard let group = ids.groupIDs[stored.target] else { throw StoreError.unknownIdentity(stored.target) }
                    targetID = group
                case .direct:
                    targetID = ids.accountIDs[stored.target]
                    if targetID == nil { targetGuest = stored.target }
                }
                let senderID = stored.senderAccount.flatMap { ids.accountIDs[$0] }
                if stored.senderAccount != nil && senderID == nil { throw StoreError.unknownIdentity(stored.senderAccount ?? "") }
                let senderGuest = stored.senderAccount == nil ? stored.senderGuest : nil
                let conversation: Int64
                switch stored.targetKind {
                case .group:
                    conversation = try conversations.id(for: .group(targetID ?? 0), accounts: (nil, nil), in: db)
                case .direct:
                    let parties: ConversationParties
                    if let senderID, let targetID {
                        parties = .direct(senderID, targetID)
                    } else {
                        // A guest is named by its connection's identity (a message without one,
                        // which the server does not make, is kept under its nick rather than refused).
                        let senderParty = senderID.map(ConversationKey.account) ?? senderGuest ?? "!" + stored.senderNick
                        let targetParty = targetID.map(ConversationKey.account) ?? targetGuest ?? stored.target
                        parties = .other(ConversationKey.direct(senderParty, targetParty))
                    }
                    conversation = try conversations.id(for: parties, accounts: (senderID, targetID), in: db)
                }
                row.bind(1, stored.id)
                row.bind(2, stored.time.millisecondsSince1970)
                row.bind(3, senderID)
                row.bind(4, senderGuest)
                row.bind(5, stored.senderNick)
                row.bind(6, stored.senderPrefix)
                row.bind(7, stored.targetKind.rawValue)
                row.bind(8, targetID)
                row.bind(9, targetGuest)
                row.bind(10, targetGuest == nil ? nil : stored.targetName)
                row.bind(11, stored.command)
                row.bind(12, stored.text)
                row.bind(13, stored.clientTags)
                row.bind(14, conversation)
                try row.run()
                for entry in stored.recipients {
                    // Nothing is written for them, so nothing needs their id.
                    if DerivedRecipients.needsNoRow(entry, of: stored) { continue }
                    if stored.targetKind == .direct, targetID != nil, entry.account == stored.target {
                        directRecipientRow.bind(1, db.lastInsertedRowID)
                        directRecipientRow.bind(2, entry.deliveredAt?.millisecondsSince1970)
                        directRecipientRow.bind(3, entry.readAt?.millisecondsSince1970)
                        directRecipientRow.bind(4, entry.deliveredNotified)
                        directRecipientRow.bind(5, entry.readNotified)
                        try directRecipientRow.run()
                        continue
                    }
                    guard let recipient = ids.accountIDs[entry.account] else { throw StoreError.unknownIdentity(entry.account) }
                    recipientRow.bind(1, stored.id)
                    recipientRow.bind(2, recipient)
                    recipientRow.bind(3, entry.deliveredAt?.millisecondsSince1970)
                    recipientRow.bind(4, entry.readAt?.millisecondsSince1970)
                    recipientRow.bind(5, entry.deliveredNotified)
                    recipientRow.bind(6, entry.readNotified)
                    try recipientRow.run()
                }
            }
        }
    }

    /// Deletes messages older than `cutoff` (their recipients' rows go with them). Messages are
    /// inserted in time order, so the old ones are the lowest rowids: the scan stops at the first
    /// message to keep, and costs what is deleted, without an index on time. (A message stamped
    /// earlier than one before it, after the clock was set back, waits for a later pass.)
    static func prune(before cutoff: Timestamp, in db: Database) throws {
        let time = cutoff.millisecondsSince1970
        let firstKept = try Int64.fetchOne(db, sql: "SELECT rowid FROM messages WHERE time >= ? ORDER BY rowid LIMIT 1", arguments: [time])
        try db.execute(sql: "DELETE FROM messages WHERE rowid < ? AND time < ?", arguments: [firstKept ?? Int64.max, time])
        try keepMembersBeforeTheNextMessage(in: db)
    }

    /// After messages are deleted: SQLite gives the next message the highest rowid left plus one,
    /// so when the newest message is gone its rowid comes back. A member who joined after it
    /// (`since` = that rowid) would not count as a recipient of the message that takes it; such
    /// members joined after every message left, which is what the highest rowid left says.
    /// Deletions are rare (REDACT, retention, a deleted group): the scan of memberships is fine.
    static func keepMembersBeforeTheNextMessage(in db: Database) throws {
        try db.execute(sql: "UPDATE group_members SET since = \(newestPositionSQL) WHERE since > \(newestPositionSQL)")
    }

    /// One message and its recipients' rows, deleted explicitly (as the PostgreSQL store does,
    /// whose recipients have no foreign key to cascade).
    static func deleteMessage(id: String, in db: Database) throws {
        try db.execute(sql: "DELETE FROM message_recipients WHERE message_id = ?", arguments: [id])
        try db.execute(sql: "DELETE FROM messages WHERE id = ?", arguments: [id])
        try keepMembersBeforeTheNextMessage(in: db)
    }

    static func updateRecipients(_ updates: [RecipientUpdate], ids: StoredIdentities, in db: Database) throws {
        // A read of a direct message had at once finds no row: it is written first (a row already
        // there, or a message deleted meanwhile, is left alone).
        let writeRow = try db.cachedStatement(sql: """
            INSERT INTO direct_recipients (message_rowid, delivered_at, read_at, delivered_notified, read_notified)
            SELECT m.rowid, m.time, NULL,
                   NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = m.sender_id AND a.receipts_pending_since <= m.time), FALSE
            FROM messages m WHERE m.id = ? AND m.target_id = ? AND \(DerivedRecipients.directWithRecipientSQL)
            ON CONFLICT (message_rowid) DO NOTHING
            """)
        // Bound directly (`SQLiteBinding`): every delivery at login and every read runs one of
        // them, and GRDB's arguments cost about 6,000 instructions per execution (callgrind).
        // A direct message's row is tried first; a group message's member rows if it was none.
        // The direct row is found from the id alone (the id's index holds the rowid): its one
        // recipient is the message's target, the account every update of it names.
        let changes = "delivered_at = COALESCE(delivered_at, ?1), read_at = COALESCE(?2, read_at), "
            + "delivered_notified = COALESCE(?3, delivered_notified), read_notified = COALESCE(?4, read_notified)"
        let direct = SQLiteBinding(try db.cachedStatement(sql: """
            UPDATE direct_recipients SET \(changes)
            WHERE message_rowid = (SELECT rowid FROM messages WHERE id = ?5)
            """), in: db)
        let member = SQLiteBinding(try db.cachedStatement(sql: """
            UPDATE message_recipients SET \(changes) WHERE message_id = ?5 AND recipient_id = ?6
            """), in: db)
        for update in updates {
            guard let recipient = ids.accountIDs[update.recipient] else { continue }
            if update.readAt != nil { try writeRow.execute(arguments: [update.messageID, recipient]) }
            try apply(update, with: direct)
            if db.changesCount == 0 { try apply(update, recipient: recipient, with: member) }
        }
    }

    /// Binds an update's changes and message id (and the recipient, for a member's row).
    private static func apply(_ update: RecipientUpdate, recipient: Int64? = nil, with statement: SQLiteBinding) throws {
        statement.bind(1, update.deliveredAt?.millisecondsSince1970)
        statement.bind(2, update.readAt?.millisecondsSince1970)
        statement.bind(3, update.deliveredNotified)
        statement.bind(4, update.readNotified)
        statement.bind(5, update.messageID)
        if let recipient { statement.bind(6, recipient) }
        try statement.run()
    }

    public func loadDeliveryState(since cutoff: Timestamp, maxTrackedRecipients: Int) async throws -> DeliveryState {
        let ids = identities.withLock { $0 }
        return try await pool.read { db in
            // What the server follows in memory, loaded in bounded windows so that start-up time
            // and memory do not grow with the history: every message someone still waits for
            // (inbox limits bound those), and the newest messages up to `maxTrackedRecipients`
            // recipient states (for live read receipts). Older state stays on disk.
            let derived = try Self.derivedRecipients(ids: ids, in: db)
            var recentFrom = Int64.max
            var recipientsSeen = 0
            // A group message counts its members too (at most: some may have joined later), a
            // direct message its one recipient, row or not.
            let newest = try Row.fetchCursor(db, sql: """
                SELECT m.rowid AS position, m.target_kind, m.target_id,
                       MAX((SELECT COUNT(*) FROM message_recipients r WHERE r.message_id = m.id), \(DerivedRecipients.directWithRecipientSQL)) AS recipients
                FROM messages m WHERE m.time >= ? ORDER BY m.rowid DESC
                """, arguments: [cutoff.millisecondsSince1970])
            while recipientsSeen < maxTrackedRecipients, let row = try newest.next() {
                recipientsSeen += row["recipients"] as Int
                if (row["target_kind"] as String) == "group", let group = row["target_id"] as Int64? { recipientsSeen += derived.memberCount(group: group) }
                recentFrom = row["position"]
            }
            // Only messages still to be delivered are replayed, so only they need their text;
            // the others are followed for receipts by id, time and parties alone.
            // A cursor, not an array of rows: the rows of the whole window at once were the peak of
            // the server's memory at start-up.
            let rows = try Row.fetchCursor(db, sql: """
                WITH waiting(id) AS MATERIALIZED (
                    SELECT message_id FROM message_recipients WHERE delivered_at IS NULL
                    UNION ALL SELECT m.id FROM direct_recipients d JOIN messages m ON m.rowid = d.message_rowid WHERE d.delivered_at IS NULL)
                SELECT m.rowid AS position, m.id, m.time, m.sender_id, m.sender_guest, m.target_kind, m.target_id, m.target_guest, m.target_name, m.command,
                       CASE WHEN m.id IN waiting THEN m.sender_nick ELSE '' END AS sender_nick,
                       CASE WHEN m.id IN waiting THEN m.sender_prefix ELSE '' END AS sender_prefix,
                       CASE WHEN m.id IN waiting THEN m.text ELSE '' END AS text,
                       CASE WHEN m.id IN waiting THEN m.client_tags ELSE '' END AS client_tags,
                       -- A message has member rows (a group's) or a direct row, never both.
                       COALESCE(r.recipient_id, CASE WHEN d.message_rowid IS NOT NULL THEN m.target_id END) AS recipient_id,
                       COALESCE(r.delivered_at, d.delivered_at) AS delivered_at, COALESCE(r.read_at, d.read_at) AS read_at,
                       COALESCE(r.delivered_notified, d.delivered_notified) AS delivered_notified,
                       COALESCE(r.read_notified, d.read_notified) AS read_notified
                FROM messages m LEFT JOIN message_recipients r ON r.message_id = m.id
                    LEFT JOIN direct_recipients d ON d.message_rowid = m.rowid
                WHERE m.time >= ? AND (m.rowid >= ? OR m.id IN waiting)
                    AND (r.recipient_id IS NOT NULL OR d.message_rowid IS NOT NULL OR m.target_kind = 'group' OR \(DerivedRecipients.directWithRecipientSQL))
                ORDER BY m.rowid
                """, arguments: [cutoff.millisecondsSince1970, recentFrom])
            var state = DeliveryStateBuilder()
            while let row = try rows.next() {
                let hasRow = (row["recipient_id"] as Int64?) != nil
                let group: (group: Int64, position: Int64)? = (row["target_kind"] as String) == "group"
                    ? (row["target_id"] as Int64? ?? 0, row["position"] as Int64) : nil
                state.add(messageID: row["id"], recipient: hasRow ? Self.recipient(from: row, ids: ids) : nil, hasRecipientRow: hasRow,
                          groupPosition: group) { Self.message(from: row, ids: ids) }
            }
            state.complete(with: derived, ids: ids)
            for row in try Row.fetchAll(db, sql: "SELECT account_id, target_kind, target_id, time FROM read_markers") {
                state.addReadMarker(account: ids.accountKeys[row["account_id"]], conversation: ids.conversationKey(kind: row["target_kind"], id: row["target_id"]),
                                    time: Timestamp(millisecondsSince1970: row["time"]))
            }
            return state.build()
        }
    }

    public func loadHistory(_ query: HistoryQuery) throws -> HistoryResult {
        let ids = identities.withLock { $0 }
        return try pool.read { db in try Self.history(query, ids: ids, in: db) }
    }

    static func history(_ query: HistoryQuery, ids: StoredIdentities, in db: Database) throws -> HistoryResult {
        // The conversation as a WHERE clause over messages (through messages_by_conversation).
        var scope: String
        var scopeArguments: [any DatabaseValueConvertible] = []
        let byKey = "conversation_id = (SELECT id FROM conversations WHERE key = ?)"
        switch query.conversation {
        case .group(let key):
            guard let group = ids.groupIDs[key] else { return .messages([]) }
            scope = byKey
            scopeArguments = [ConversationKey.group(group)]
        case .direct(let me, let other):
            guard let myID = ids.accountIDs[me] else { return .messages([]) }
            // A guest by the identity of that guest's connection, never by its nick.
            let otherParty = ids.accountIDs[other].map(ConversationKey.account) ?? other
            scope = byKey
            scopeArguments = [ConversationKey.direct(ConversationKey.account(myID), otherParty)]
        case .everything(let account, let groups):
            guard let myID = ids.accountIDs[account] else { return query.kind.isTargets ? .targets([]) : .messages([]) }
            let groupKeys = groups.compactMap { ids.groupIDs[$0] }.map(ConversationKey.group)
            let placeholders = groupKeys.map { _ in "?" }.joined(separator: ",")
            scope = "conversation_id IN (SELECT conversation_id FROM conversation_parties WHERE account_id = ?"
                + (groupKeys.isEmpty ? ")" : " UNION ALL SELECT id FROM conversations WHERE key IN (\(placeholders)))")
            scopeArguments = [myID] + groupKeys
        }
        if !query.includesEvents { scope = "(\(scope)) AND command <> 'TAGMSG'" }
        let conversation = Conversation(db: db, scope: scope, scopeArguments: scopeArguments, ids: ids)
        if let messages = try conversation.messages(query.kind, limit: query.limit) { return .messages(messages) }
        switch query.kind {
        case .latest, .before, .after, .around, .between:
            return .messages([])  // read above
        case .receipts(let messageIDs):
            guard case .everything(let account, _) = query.conversation, let myID = ids.accountIDs[account], !messageIDs.isEmpty else { return .messages([]) }
            let placeholders = messageIDs.map { _ in "?" }.joined(separator: ",")
            let rows = try Row.fetchAll(
                db, sql: "SELECT rowid AS position, * FROM messages WHERE sender_id = ? AND id IN (\(placeholders)) LIMIT ?",
                arguments: StatementArguments([myID] + messageIDs + [query.limit]))
            var derived = DerivedRecipients()
            if rows.contains(where: { ($0["target_kind"] as String) == "group" }) {
                derived = try derivedRecipients(ids: ids, in: db)
            } else if let since = try Int64.fetchOne(db, sql: "SELECT receipts_pending_since FROM accounts WHERE id = ?", arguments: [myID]) {
                derived.addReceiptsPendingSince(account: account, time: Timestamp(millisecondsSince1970: since))
            }
            var messages: [StoredMessage] = []
            for row in rows {
                guard var message = Self.message(from: row, ids: ids) else { continue }
                let recipientRows = message.targetKind == .direct
                    ? try Row.fetchAll(db, sql: "SELECT ? AS recipient_id, * FROM direct_recipients WHERE message_rowid = ?",
                                       arguments: [row["target_id"] as Int64?, row["position"] as Int64])
                    : try Row.fetchAll(db, sql: "SELECT * FROM message_recipients WHERE message_id = ? ORDER BY recipient_id",
                                       arguments: [message.id])
                message.recipients = recipientRows.compactMap { Self.recipient(from: $0, ids: ids) }
                if message.targetKind == .group, let group = row["target_id"] as Int64? {
                    derived.complete(&message, group: group, position: row["position"], ids: ids)
                }
                derived.completeDirect(&message)
                messages.append(message)
            }
            return .messages(messages)
        case .targets(let from, let to):
            guard case .everything(let account, _) = query.conversation, let myID = ids.accountIDs[account] else { return .targets([]) }
            // The other party as one text value: 'g<id>' a group, 'a<id>' an account, or a guest's identity.
            let rows = try Row.fetchAll(db, sql: """
                SELECT target_kind,
                       CASE WHEN target_kind = 'group' THEN 'g' || target_id
                            WHEN sender_id = ? THEN COALESCE('a' || target_id, target_guest)
                            ELSE COALESCE('a' || sender_id, sender_guest) END AS other,
                       MAX(time) AS latest
                FROM messages WHERE \(scope) AND time >= ? AND time <= ?
                GROUP BY target_kind, other ORDER BY latest ASC LIMIT ?
                """, arguments: StatementArguments([myID] + scopeArguments + [from.millisecondsSince1970, to.millisecondsSince1970, query.limit]))
            return .targets(rows.compactMap { row in
                let key = ids.party(row["other"])
                return key.map { HistoryTarget(isGroup: (row["target_kind"] as String) == "group", key: $0, latest: Timestamp(millisecondsSince1970: row["latest"])) }
            })
        }
    }

    /// One conversation (a WHERE clause over messages) for `ConversationReader`'s CHATHISTORY
    /// forms; the rowid orders messages of the same millisecond.
    struct Conversation: ConversationReader {
        let db: Database
        let scope: String
        let scopeArguments: [any DatabaseValueConvertible]
        let ids: StoredIdentities

        func point(of reference: HistoryQuery.Reference) throws -> HistoryPoint? {
            switch reference {
            case .timestamp(let time):
                return HistoryPoint(time: time.millisecondsSince1970, order: nil)
            case .msgid(let id):
                guard let row = try Row.fetchOne(db, sql: "SELECT time, rowid FROM messages WHERE id = ? AND " + scope,
                                                 arguments: StatementArguments([id] + scopeArguments)) else { return nil }
                return HistoryPoint(time: row["time"], order: row["rowid"])
            }
        }

        func read(_ bounds: [HistoryBound], newestFirst: Bool, limit: Int) throws -> [StoredMessage] {
            guard limit > 0 else { return [] }
            var sql = "SELECT * FROM messages WHERE \(scope)"
            var arguments = scopeArguments
            for bound in bounds {
                let condition = bound.sqlCondition(orderColumn: "rowid")
                sql += " AND " + condition.sql
                arguments += condition.values as [any DatabaseValueConvertible]
            }
            let order = newestFirst ? "DESC" : "ASC"
            sql += " ORDER BY time \(order), rowid \(order) LIMIT ?"
            let messages = try Row.fetchAll(db, sql: sql, arguments: StatementArguments(arguments + [limit]))
                .compactMap { SQLiteChatStore.message(from: $0, ids: ids) }
            return newestFirst ? messages.reversed() : messages
        }

        func message(at point: HistoryPoint) throws -> StoredMessage? {
            guard let order = point.order, let row = try Row.fetchOne(db, sql: "SELECT * FROM messages WHERE rowid = ?", arguments: [order]) else { return nil }
            return SQLiteChatStore.message(from: row, ids: ids)
        }
    }

    /// How many rows a table holds (for tests that check what a write costs).
    func rowCount(of table: String) async throws -> Int {
        try await pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? 0 }
    }

    /// Messages of one conversation, oldest first (for tests).
    public func loadMessages(targetKind: StoredMessage.TargetKind, target: String, limit: Int = 1000) async throws -> [StoredMessage] {
        let ids = identities.withLock { $0 }
        guard let targetID = targetKind == .group ? ids.groupIDs[target] : ids.accountIDs[target] else { return [] }
        return try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM messages WHERE target_kind = ? AND target_id = ? ORDER BY time, rowid LIMIT ?",
                arguments: [targetKind.rawValue, targetID, limit]
            ).compactMap { Self.message(from: $0, ids: ids) }
        }
    }

    public func loadGroups() async throws -> [GroupRecord] {
        try await pool.read { db in
            var members: [Int64: [String: ChannelRole]] = [:]
            var voiced: [Int64: Set<String>] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT m.group_id, a.key, m.role, m.voiced FROM group_members m JOIN accounts a ON a.id = m.account_id") {
                let role = ChannelRole(rawValue: row["role"]) ?? .member
                members[row["group_id"], default: [:]][row["key"]] = role
                if row["voiced"] as Bool { voiced[row["group_id"], default: []].insert(row["key"]) }
            }
            var bans: [Int64: [BanEntry]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT group_id, mask, set_by, set_at FROM group_bans ORDER BY rowid") {
                bans[row["group_id"], default: []].append(BanEntry(mask: row["mask"], setBy: row["set_by"], setAt: Timestamp(millisecondsSince1970: row["set_at"])))
            }
            return try Row.fetchAll(db, sql: "SELECT g.*, a.key AS owner_key FROM groups g JOIN accounts a ON a.id = g.owner_id").map { row in
                let id: Int64 = row["id"]
                let topicSetAt: Int64? = row["topic_set_at"]
                return GroupRecord(
                    name: row["name"], key: row["key"], createdAt: Timestamp(millisecondsSince1970: row["created_at"]),
                    owner: row["owner_key"], topic: row["topic"], topicSetBy: row["topic_set_by"],
                    topicSetAt: topicSetAt.map { Timestamp(millisecondsSince1970: $0) }, modes: row["modes"],
                    password: row["password"], userLimit: row["user_limit"], bans: bans[id] ?? [], members: members[id] ?? [:],
                    voiced: voiced[id] ?? [])
            }
        }
    }

    /// Every group's members (with the position they joined after) and read positions, and the
    /// authors whose receipts wait.
    static func derivedRecipients(ids: StoredIdentities, in db: Database) throws -> DerivedRecipients {
        var groups = DerivedRecipients()
        for row in try Row.fetchAll(db, sql: "SELECT group_id, account_id, since FROM group_members") {
            groups.addMember(group: row["group_id"], account: ids.accountKeys[row["account_id"]], since: row["since"])
        }
        for row in try Row.fetchAll(db, sql: "SELECT group_id, account_id, read_until FROM group_read_positions") {
            groups.addReadPosition(group: row["group_id"], account: ids.accountKeys[row["account_id"]],
                                   time: Timestamp(millisecondsSince1970: row["read_until"]))
        }
        for row in try Row.fetchAll(db, sql: "SELECT key, receipts_pending_since FROM accounts WHERE receipts_pending_since IS NOT NULL") {
            groups.addReceiptsPendingSince(account: row["key"], time: Timestamp(millisecondsSince1970: row["receipts_pending_since"]))
        }
        return groups
    }

    /// The position a member who joins now starts after: the newest message stored so far.
    static let newestPositionSQL = "(SELECT IFNULL(MAX(rowid), 0) FROM messages)"

    /// Saves a group's state under its stable id: a rename changes its key and name, nothing else.
    static func saveGroup(_ group: GroupRecord, previousKey: String?, includingMembers: Bool = true, ids: inout StoredIdentities,
                          changes: inout [StoredIdentities.Change], in db: Database) throws {
        guard let owner = ids.accountIDs[group.owner] else { throw StoreError.unknownIdentity(group.owner) }
        let arguments: [any DatabaseValueConvertible] = [
            group.key, group.name, owner, group.topic, group.topicSetBy,
            group.topicSetAt?.millisecondsSince1970, group.modes, group.password, group.userLimit,
        ]
        let id: Int64
        if let existing = previousKey.flatMap({ ids.groupIDs[$0] }) ?? ids.groupIDs[group.key] {
            id = existing
            try db.execute(
                sql: """
                    UPDATE groups SET key = ?, name = ?, owner_id = ?, topic = ?, topic_set_by = ?, topic_set_at = ?, modes = ?,
                        password = ?, user_limit = ? WHERE id = ?
                    """,
                arguments: StatementArguments(arguments + [id]))
        } else {
            try db.execute(
                sql: """
                    INSERT INTO groups (key, name, owner_id, topic, topic_set_by, topic_set_at, modes, password, user_limit, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: StatementArguments(arguments + [group.createdAt.millisecondsSince1970]))
            id = db.lastInsertedRowID
        }
        ids.setGroup(key: group.key, id: id)
        changes.append(.group(key: group.key, id: id))
        if includingMembers {
            // Members who stay keep the position they joined after.
            var since: [Int64: Int64] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT account_id, since FROM group_members WHERE group_id = ?", arguments: [id]) {
                since[row["account_id"]] = row["since"]
            }
            let newest = try Int64.fetchOne(db, sql: "SELECT " + newestPositionSQL) ?? 0
            try db.execute(sql: "DELETE FROM group_members WHERE group_id = ?", arguments: [id])
            let member = try db.cachedStatement(sql: "INSERT INTO group_members (group_id, account_id, role, voiced, since) VALUES (?, ?, ?, ?, ?)")
            for (account, role) in group.members.sorted(by: { $0.key < $1.key }) {
                guard let accountID = ids.accountIDs[account] else { continue }
                try member.execute(arguments: [id, accountID, role.rawValue, group.voiced.contains(account), since[accountID] ?? newest])
            }
        }
        try db.execute(sql: "DELETE FROM group_bans WHERE group_id = ?", arguments: [id])
        let ban = try db.cachedStatement(sql: "INSERT INTO group_bans (group_id, mask, set_by, set_at) VALUES (?, ?, ?, ?)")
        for entry in group.bans {
            try ban.execute(arguments: [id, entry.mask, entry.setBy, entry.setAt.millisecondsSince1970])
        }
    }

    /// Deletes a group with everything that belongs to it: members, bans, messages (their
    /// recipients' rows cascade), read markers.
    static func deleteGroup(key: String, ids: inout StoredIdentities, changes: inout [StoredIdentities.Change], in db: Database) throws {
        guard let id = ids.groupIDs[key] else { return }
        try db.execute(sql: "DELETE FROM messages WHERE conversation_id = (SELECT id FROM conversations WHERE key = ?)",
                       arguments: [ConversationKey.group(id)])
        try db.execute(sql: "DELETE FROM read_markers WHERE target_kind = 'group' AND target_id = ?", arguments: [id])
        try db.execute(sql: "DELETE FROM group_read_positions WHERE group_id = ?", arguments: [id])
        try db.execute(sql: "DELETE FROM groups WHERE id = ?", arguments: [id])
        try keepMembersBeforeTheNextMessage(in: db)
        ids.removeGroup(id: id)
        changes.append(.groupRemoved(id: id))
    }

    /// Busy or locked by another process, out of memory or disk, an I/O error, the file not
    /// openable or read-only: what an operator can mend while the server runs.
    public func isUnavailable(_ error: any Error) -> Bool {
        guard let error = error as? DatabaseError else { return false }
        switch error.resultCode {
        case .SQLITE_BUSY, .SQLITE_LOCKED, .SQLITE_NOMEM, .SQLITE_IOERR, .SQLITE_FULL, .SQLITE_CANTOPEN, .SQLITE_READONLY: return true
        default: return false
        }
    }

    public func transaction(_ body: (any StorageTransaction) throws -> Void) throws {
        // Group changes are made on a copy and shared once the transaction commits; a rolled
        // back transaction leaves the map as the database is.
        let start = identities.withLock { $0 }
        let knownConversations = conversationIDs.withLock { $0 }
        let (changes, newConversations) = try pool.write { db in
            let transaction = Transaction(db: db, ids: start, conversations: ConversationIDs(known: knownConversations))
            try body(transaction)
            return (transaction.changes, transaction.conversations.found)
        }
        if !changes.isEmpty {
            identities.withLock { shared in for change in changes { shared.apply(change) } }
        }
        if !newConversations.isEmpty {
            conversationIDs.withLock { cache in
                if cache.count + newConversations.count > Self.cachedConversations { cache.removeAll() }
                cache.merge(newConversations) { _, new in new }
            }
        }
    }

    /// One write transaction on the pool's writer connection.
    final class Transaction: StorageTransaction {
        let db: Database
        var ids: StoredIdentities
        var changes: [StoredIdentities.Change] = []
        var conversations: ConversationIDs
        private var inserter: MessageInserter?

        init(db: Database, ids: StoredIdentities, conversations: ConversationIDs) {
            self.db = db
            self.ids = ids
            self.conversations = conversations
        }

        func storeMessages(_ messages: [StoredMessage]) throws {
            if inserter == nil { inserter = try MessageInserter(db) }
            try inserter?.insert(messages, ids: ids, conversations: &conversations, in: db)
        }

        func updateRecipients(_ updates: [RecipientUpdate]) throws {
            try SQLiteChatStore.updateRecipients(updates, ids: ids, in: db)
        }

        func setReadMarker(account: String, conversation: String, time: Timestamp) throws {
            guard let accountID = ids.accountIDs[account], let target = ids.conversation(conversation) else { return }
            try db.execute(
                sql: """
                    INSERT INTO read_markers (account_id, target_kind, target_id, time) VALUES (?, ?, ?, ?)
                    ON CONFLICT(account_id, target_kind, target_id) DO UPDATE SET time = MAX(time, excluded.time)
                    """,
                arguments: [accountID, target.kind, target.id, time.millisecondsSince1970])
        }

        func setGroupReadPosition(account: String, group: String, time: Timestamp) throws {
            guard let accountID = ids.accountIDs[account], let groupID = ids.groupIDs[group] else { return }
            try db.cachedStatement(sql: """
                INSERT INTO group_read_positions (group_id, account_id, read_until) VALUES (?, ?, ?)
                ON CONFLICT(group_id, account_id) DO UPDATE SET read_until = MAX(read_until, excluded.read_until)
                """).execute(arguments: [groupID, accountID, time.millisecondsSince1970])
        }

        func setReceiptsPendingSince(account: String, time: Timestamp?) throws {
            try db.cachedStatement(sql: "UPDATE accounts SET receipts_pending_since = ? WHERE key = ?")
                .execute(arguments: [time?.millisecondsSince1970, account])
        }

        func recordLastSeen(account: String, at time: Timestamp) throws {
            try db.execute(sql: "UPDATE accounts SET last_seen = ? WHERE key = ?", arguments: [time.millisecondsSince1970, account])
        }

        func setAccountSettings(account: String, _ settings: [String: String]) throws {
            try db.execute(sql: "UPDATE accounts SET settings = ? WHERE key = ?", arguments: [try SQLiteChatStore.encodeSettings(settings), account])
        }

        func createGroup(_ group: GroupRecord) throws {
            // One writer: a group is made only where it is unknown, so this is a whole save.
            try SQLiteChatStore.saveGroup(group, previousKey: nil, ids: &ids, changes: &changes, in: db)
        }

        func saveGroup(_ group: GroupRecord, previousKey: String?) throws {
            try SQLiteChatStore.saveGroup(group, previousKey: previousKey, ids: &ids, changes: &changes, in: db)
        }

        func saveGroupSettings(_ group: GroupRecord, previousKey: String?) throws {
            try SQLiteChatStore.saveGroup(group, previousKey: previousKey, includingMembers: false, ids: &ids, changes: &changes, in: db)
        }

        func setGroupMember(group: String, account: String, role: ChannelRole?, voiced: Bool) throws {
            guard let groupID = ids.groupIDs[group], let accountID = ids.accountIDs[account] else { return }
            if let role {
                // A new member starts after the newest message; one already there keeps its position.
                try db.cachedStatement(sql: """
                    INSERT INTO group_members (group_id, account_id, role, voiced, since) VALUES (?, ?, ?, ?, \(SQLiteChatStore.newestPositionSQL))
                    ON CONFLICT(group_id, account_id) DO UPDATE SET role = excluded.role, voiced = excluded.voiced
                    """).execute(arguments: [groupID, accountID, role.rawValue, voiced])
            } else {
                try db.cachedStatement(sql: "DELETE FROM group_members WHERE group_id = ? AND account_id = ?")
                    .execute(arguments: [groupID, accountID])
            }
        }

        func deleteGroup(key: String) throws {
            try SQLiteChatStore.deleteGroup(key: key, ids: &ids, changes: &changes, in: db)
        }

        func deleteMessages(before cutoff: Timestamp) throws {
            try SQLiteChatStore.prune(before: cutoff, in: db)
        }

        func deleteMessage(id: String) throws {
            try SQLiteChatStore.deleteMessage(id: id, in: db)
        }
    }

    /// Checkpoints finished beside the writer so far.
    var backgroundCheckpoints: Int { checkpointer.completedCheckpoints }

    public func close() async throws {
        checkpointer.close()
        try pool.close()
    }

    // MARK: Row mapping

    static func milliseconds(_ date: Date) -> Int64 { Timestamp(date).millisecondsSince1970 }

    static func date(_ milliseconds: Int64) -> Date { Timestamp(millisecondsSince1970: milliseconds).date }

    static func encodeSettings(_ settings: [String: String]) throws -> String {
        String(decoding: try JSONEncoder().encode(settings), as: UTF8.self)
    }

    static func account(from row: Row) throws -> AccountRecord {
        let settingsText: String = row["settings"]
        let settings = (try? JSONDecoder().decode([String: String].self, from: Data(settingsText.utf8))) ?? [:]
        let salt: Data = row["salt"]
        let storedKey: Data = row["stored_key"]
        let serverKey: Data = row["server_key"]
        let lastSeen: Int64? = row["last_seen"]
        return AccountRecord(
            name: row["name"], key: row["key"],
            credential: PasswordCredential(salt: [UInt8](salt), iterations: row["iterations"], storedKey: [UInt8](storedKey), serverKey: [UInt8](serverKey)),
            createdAt: date(row["created_at"]), lastSeen: lastSeen.map(date), email: row["email"], settings: settings)
    }

    static func recipient(from row: Row, ids: StoredIdentities) -> StoredRecipient? {
        guard let account = ids.accountKeys[row["recipient_id"]] else { return nil }
        let delivered: Int64? = row["delivered_at"]
        let read: Int64? = row["read_at"]
        return StoredRecipient(
            account: account, deliveredAt: delivered.map { Timestamp(millisecondsSince1970: $0) },
            readAt: read.map { Timestamp(millisecondsSince1970: $0) },
            deliveredNotified: row["delivered_notified"], readNotified: row["read_notified"])
    }

    /// A message row in the domain's terms (keys, not ids); nil if it names a group or account
    /// this store no longer knows.
    static func message(from row: Row, ids: StoredIdentities) -> StoredMessage? {
        let kind = StoredMessage.TargetKind(rawValue: row["target_kind"]) ?? .direct
        let senderID: Int64? = row["sender_id"]
        let targetID: Int64? = row["target_id"]
        let target: String?
        switch kind {
        case .group: target = targetID.flatMap { ids.groupKeys[$0] }
        case .direct: target = targetID.map { ids.accountKeys[$0] } ?? row["target_guest"]
        }
        guard let target else { return nil }
        let senderAccount = senderID.flatMap { ids.accountKeys[$0] }
        if senderID != nil && senderAccount == nil { return nil }
        return StoredMessage(
            id: row["id"], time: Timestamp(millisecondsSince1970: row["time"]), senderNick: row["sender_nick"],
            senderAccount: senderAccount, senderGuest: row["sender_guest"], senderPrefix: row["sender_prefix"],
            targetKind: kind, target: target, targetName: row["target_name"],
            command: row["command"], text: row["text"], clientTags: row["client_tags"])
    }
}

private extension HistoryQuery.Kind {
    var isTargets: Bool {
        if case .targets = self { return true }
        return false
    }
}
