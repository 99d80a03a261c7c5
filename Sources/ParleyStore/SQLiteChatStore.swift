import CSQLiteTuning
import Foundation
import GRDB
import ParleyCore

/// The embedded default store: one SQLite file in WAL mode, through GRDB.
///
/// Durability: with `synchronous=NORMAL` (the default here) a committed transaction survives a
/// crash of the process, SIGKILL included, but the last transactions may be lost if the machine
/// loses power. `synchronousFull: true` also survives power loss, at a cost per commit.
public final class SQLiteChatStore: ChatStore {
    private let pool: DatabasePool

    public init(path: String, synchronousFull: Bool = false) throws {
        Self.configureSQLiteOnce
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronousFull ? "FULL" : "NORMAL")")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(pool)
    }

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
        return migrator
    }

    public func loadAccounts() async throws -> [AccountRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM accounts").map(Self.account(from:))
        }
    }

    public func insertAccount(_ account: AccountRecord) async throws {
        let settings = try Self.encodeSettings(account.settings)
        do {
            try await pool.write { db in
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
            }
        } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY {
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

        init(_ db: Database) throws {
            row = SQLiteBinding(try db.cachedStatement(sql: """
                INSERT INTO messages (id, time, sender_nick, sender_account, sender_prefix, target_kind, target, command, text, client_tags, sender_key)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """), in: db)
            recipientRow = SQLiteBinding(try db.cachedStatement(sql: """
                INSERT INTO message_recipients (message_id, recipient, delivered_at, read_at, delivered_notified, read_notified)
                VALUES (?, ?, ?, ?, ?, ?)
                """), in: db)
        }

        func insert(_ messages: [StoredMessage]) throws {
            for stored in messages {
                row.bind(1, stored.id)
                row.bind(2, stored.time.millisecondsSince1970)
                row.bind(3, stored.senderNick)
                row.bind(4, stored.senderAccount)
                row.bind(5, stored.senderPrefix)
                row.bind(6, stored.targetKind.rawValue)
                row.bind(7, stored.target)
                row.bind(8, stored.command)
                row.bind(9, stored.text)
                row.bind(10, stored.clientTags)
                row.bind(11, stored.senderAccount ?? stored.senderNick.lowercased())
                try row.run()
                for entry in stored.recipients {
                    recipientRow.bind(1, stored.id)
                    recipientRow.bind(2, entry.account)
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
    }

    static func updateRecipients(_ updates: [RecipientUpdate], in db: Database) throws {
        let statement = try db.cachedStatement(sql: """
            UPDATE message_recipients SET
                delivered_at = COALESCE(delivered_at, ?), read_at = COALESCE(?, read_at),
                delivered_notified = COALESCE(?, delivered_notified), read_notified = COALESCE(?, read_notified)
            WHERE message_id = ? AND recipient = ?
            """)
        for update in updates {
            try statement.execute(arguments: [
                update.deliveredAt?.millisecondsSince1970, update.readAt?.millisecondsSince1970,
                update.deliveredNotified, update.readNotified, update.messageID, update.recipient,
            ])
        }
    }

    public func loadDeliveryState(since cutoff: Timestamp) async throws -> DeliveryState {
        try await pool.read { db in
            // Messages someone still waits for, or whose receipts are still due, with all their
            // recipients.
            let rows = try Row.fetchAll(db, sql: """
                SELECT m.*, r.recipient, r.delivered_at, r.read_at, r.delivered_notified, r.read_notified
                FROM messages m JOIN message_recipients r ON r.message_id = m.id
                WHERE m.time >= ? AND m.id IN (
                    SELECT message_id FROM message_recipients
                    WHERE delivered_at IS NULL OR read_at IS NULL OR delivered_notified = 0 OR (read_at IS NOT NULL AND read_notified = 0))
                ORDER BY m.rowid
                """, arguments: [cutoff.millisecondsSince1970])
            var messages: [StoredMessage] = []
            var index: [String: Int] = [:]
            for row in rows {
                let id: String = row["id"]
                let recipient = Self.recipient(from: row)
                if let position = index[id] {
                    messages[position].recipients.append(recipient)
                } else {
                    var message = try Self.message(from: row)
                    message.recipients = [recipient]
                    index[id] = messages.count
                    messages.append(message)
                }
            }
            var undelivered: [String: [StoredMessage]] = [:]
            for message in messages {
                for recipient in message.recipients where recipient.deliveredAt == nil {
                    undelivered[recipient.account, default: []].append(message)
                }
            }
            var markers: [String: [String: Timestamp]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT account, target, time FROM read_markers") {
                markers[row["account"], default: [:]][row["target"]] = Timestamp(millisecondsSince1970: row["time"])
            }
            return DeliveryState(undelivered: undelivered, tracked: messages, readMarkers: markers)
        }
    }

    public func loadHistory(_ query: HistoryQuery) throws -> HistoryResult {
        try pool.read { db in try Self.history(query, in: db) }
    }

    static func history(_ query: HistoryQuery, in db: Database) throws -> HistoryResult {
        // The conversation as a WHERE clause over messages.
        let scope: String
        var scopeArguments: [any DatabaseValueConvertible] = []
        switch query.conversation {
        case .group(let key):
            scope = "target_kind = 'group' AND target = ?"
            scopeArguments = [key]
        case .direct(let me, let other):
            scope = "target_kind = 'direct' AND ((sender_key = ? AND target = ?) OR (sender_key = ? AND target = ?))"
            scopeArguments = [me, other, other, me]
        case .everything(let account, let groups):
            let placeholders = groups.map { _ in "?" }.joined(separator: ",")
            scope = "((target_kind = 'direct' AND (sender_key = ? OR target = ?))" + (groups.isEmpty ? ")" : " OR (target_kind = 'group' AND target IN (\(placeholders))))")
            scopeArguments = [account, account] + groups
        }
        func time(of reference: HistoryQuery.Reference) throws -> (Int64, Int64?)? {
            switch reference {
            case .timestamp(let time):
                return (time.millisecondsSince1970, nil)
            case .msgid(let id):
                guard let row = try Row.fetchOne(db, sql: "SELECT time, rowid FROM messages WHERE id = ? AND " + scope, arguments: StatementArguments([id] + scopeArguments)) else { return nil }
                return (row["time"], row["rowid"])
            }
        }
        func fetch(_ condition: String, _ arguments: [any DatabaseValueConvertible], newestFirst: Bool, limit: Int) throws -> [StoredMessage] {
            let order = newestFirst ? "DESC" : "ASC"
            let rows = try Row.fetchAll(
                db, sql: "SELECT * FROM messages WHERE \(scope) AND \(condition) ORDER BY time \(order), rowid \(order) LIMIT ?",
                arguments: StatementArguments(scopeArguments + arguments + [limit]))
            let messages = try rows.map(Self.message(from:))
            return newestFirst ? messages.reversed() : messages
        }
        // A msgid reference excludes that message itself; a timestamp excludes that instant.
        func before(_ point: (Int64, Int64?)) -> (String, [any DatabaseValueConvertible]) {
            if let rowid = point.1 { return ("(time < ? OR (time = ? AND rowid < ?))", [point.0, point.0, rowid]) }
            return ("time < ?", [point.0])
        }
        func after(_ point: (Int64, Int64?)) -> (String, [any DatabaseValueConvertible]) {
            if let rowid = point.1 { return ("(time > ? OR (time = ? AND rowid > ?))", [point.0, point.0, rowid]) }
            return ("time > ?", [point.0])
        }
        switch query.kind {
        case .latest(let reference):
            if let reference {
                guard let point = try time(of: reference) else { return .messages([]) }
                let (condition, arguments) = after(point)
                return .messages(try fetch(condition, arguments, newestFirst: true, limit: query.limit))
            }
            return .messages(try fetch("1", [], newestFirst: true, limit: query.limit))
        case .before(let reference):
            guard let point = try time(of: reference) else { return .messages([]) }
            let (condition, arguments) = before(point)
            return .messages(try fetch(condition, arguments, newestFirst: true, limit: query.limit))
        case .after(let reference):
            guard let point = try time(of: reference) else { return .messages([]) }
            let (condition, arguments) = after(point)
            return .messages(try fetch(condition, arguments, newestFirst: false, limit: query.limit))
        case .around(let reference):
            guard let point = try time(of: reference) else { return .messages([]) }
            let earlier = before(point), later = after(point)
            let half = max(1, query.limit / 2)
            var messages = try fetch(earlier.0, earlier.1, newestFirst: true, limit: half)
            if point.1 != nil, let row = try Row.fetchOne(db, sql: "SELECT * FROM messages WHERE rowid = ?", arguments: [point.1]) {
                messages.append(try Self.message(from: row))
            }
            messages += try fetch(later.0, later.1, newestFirst: false, limit: query.limit - messages.count)
            return .messages(messages)
        case .between(let first, let second):
            guard let start = try time(of: first), let end = try time(of: second) else { return .messages([]) }
            let ascending = start.0 <= end.0
            let low = ascending ? start : end, high = ascending ? end : start
            let lower = after(low), upper = before(high)
            return .messages(try fetch("\(lower.0) AND \(upper.0)", lower.1 + upper.1, newestFirst: !ascending, limit: query.limit))
        case .receipts(let ids):
            guard case .everything(let account, _) = query.conversation, !ids.isEmpty else { return .messages([]) }
            let placeholders = ids.map { _ in "?" }.joined(separator: ",")
            var messages = try Row.fetchAll(
                db, sql: "SELECT * FROM messages WHERE sender_account = ? AND id IN (\(placeholders))",
                arguments: StatementArguments([account] + ids)
            ).map(Self.message(from:))
            for index in messages.indices {
                messages[index].recipients = try Row.fetchAll(
                    db, sql: "SELECT * FROM message_recipients WHERE message_id = ? ORDER BY recipient",
                    arguments: [messages[index].id]
                ).map(Self.recipient(from:))
            }
            return .messages(messages)
        case .targets(let from, let to):
            guard case .everything(let account, _) = query.conversation else { return .targets([]) }
            let rows = try Row.fetchAll(db, sql: """
                SELECT target_kind, CASE WHEN target_kind = 'group' THEN target WHEN sender_key = ? THEN target ELSE sender_key END AS other,
                       MAX(time) AS latest
                FROM messages WHERE \(scope) AND time >= ? AND time <= ?
                GROUP BY target_kind, other ORDER BY latest ASC LIMIT ?
                """, arguments: StatementArguments([account] + scopeArguments + [from.millisecondsSince1970, to.millisecondsSince1970, query.limit]))
            return .targets(rows.map { row in
                HistoryTarget(isGroup: (row["target_kind"] as String) == "group", key: row["other"], latest: Timestamp(millisecondsSince1970: row["latest"]))
            })
        }
    }

    /// Messages of one conversation, oldest first (for tests now, chat history later).
    public func loadMessages(targetKind: StoredMessage.TargetKind, target: String, limit: Int = 1000) async throws -> [StoredMessage] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM messages WHERE target_kind = ? AND target = ? ORDER BY time, rowid LIMIT ?",
                arguments: [targetKind.rawValue, target, limit]
            ).map(Self.message(from:))
        }
    }

    public func loadGroups() async throws -> [GroupRecord] {
        try await pool.read { db in
            var members: [String: [String: ChannelRole]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT group_key, account_key, role FROM group_members") {
                let role = ChannelRole(rawValue: row["role"]) ?? .member
                members[row["group_key"], default: [:]][row["account_key"]] = role
            }
            var bans: [String: [BanEntry]] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT group_key, mask, set_by, set_at FROM group_bans ORDER BY rowid") {
                bans[row["group_key"], default: []].append(BanEntry(mask: row["mask"], setBy: row["set_by"], setAt: Timestamp(millisecondsSince1970: row["set_at"])))
            }
            return try Row.fetchAll(db, sql: "SELECT * FROM groups").map { row in
                let key: String = row["key"]
                let topicSetAt: Int64? = row["topic_set_at"]
                return GroupRecord(
                    name: row["name"], key: key, createdAt: Timestamp(millisecondsSince1970: row["created_at"]),
                    owner: row["owner"], topic: row["topic"], topicSetBy: row["topic_set_by"],
                    topicSetAt: topicSetAt.map { Timestamp(millisecondsSince1970: $0) }, modes: row["modes"],
                    password: row["password"], userLimit: row["user_limit"], bans: bans[key] ?? [], members: members[key] ?? [:])
            }
        }
    }

    static func saveGroup(_ group: GroupRecord, previousKey: String?, in db: Database) throws {
        if let previousKey, previousKey != group.key {
            try db.execute(sql: "DELETE FROM groups WHERE key = ?", arguments: [previousKey])
            try db.execute(
                sql: "UPDATE messages SET target = ? WHERE target_kind = 'group' AND target = ?",
                arguments: [group.key, previousKey])
        }
        try db.execute(
            sql: """
                INSERT INTO groups (key, name, created_at, owner, topic, topic_set_by, topic_set_at, modes, password, user_limit)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(key) DO UPDATE SET name = excluded.name, owner = excluded.owner, topic = excluded.topic,
                    topic_set_by = excluded.topic_set_by, topic_set_at = excluded.topic_set_at, modes = excluded.modes,
                    password = excluded.password, user_limit = excluded.user_limit
                """,
            arguments: [
                group.key, group.name, group.createdAt.millisecondsSince1970, group.owner, group.topic, group.topicSetBy,
                group.topicSetAt?.millisecondsSince1970, group.modes, group.password, group.userLimit,
            ])
        try db.execute(sql: "DELETE FROM group_members WHERE group_key = ?", arguments: [group.key])
        let member = try db.cachedStatement(sql: "INSERT INTO group_members (group_key, account_key, role) VALUES (?, ?, ?)")
        for (account, role) in group.members.sorted(by: { $0.key < $1.key }) {
            try member.execute(arguments: [group.key, account, role.rawValue])
        }
        try db.execute(sql: "DELETE FROM group_bans WHERE group_key = ?", arguments: [group.key])
        let ban = try db.cachedStatement(sql: "INSERT INTO group_bans (group_key, mask, set_by, set_at) VALUES (?, ?, ?, ?)")
        for entry in group.bans {
            try ban.execute(arguments: [group.key, entry.mask, entry.setBy, entry.setAt.millisecondsSince1970])
        }
    }

    /// Carries out ordered storage work in one transaction: all of it lands, or none.
    public func perform(_ writes: [CoreAction]) throws {
        guard !writes.isEmpty else { return }
        try pool.write { db in
            var inserter: MessageInserter?
            for write in writes {
                switch write {
                case .storeMessages(let messages, _, _):
                    if inserter == nil { inserter = try MessageInserter(db) }
                    try inserter?.insert(messages)
                case .saveGroup(let group, let previousKey):
                    try Self.saveGroup(group, previousKey: previousKey, in: db)
                case .deleteGroup(let key):
                    try db.execute(sql: "DELETE FROM groups WHERE key = ?", arguments: [key])
                case .recordLastSeen(let accountKey, let time):
                    try db.execute(sql: "UPDATE accounts SET last_seen = ? WHERE key = ?", arguments: [time.millisecondsSince1970, accountKey])
                case .updateRecipients(let updates):
                    try Self.updateRecipients(updates, in: db)
                case .saveReadMarker(let account, let target, let time):
                    try db.execute(
                        sql: "INSERT INTO read_markers (account, target, time) VALUES (?, ?, ?) ON CONFLICT(account, target) DO UPDATE SET time = MAX(time, excluded.time)",
                        arguments: [account, target, time.millisecondsSince1970])
                case .saveAccountSettings(let accountKey, let settings):
                    try db.execute(sql: "UPDATE accounts SET settings = ? WHERE key = ?", arguments: [try Self.encodeSettings(settings), accountKey])
                case .pruneHistory(let cutoff):
                    try Self.prune(before: cutoff, in: db)
                default:
                    break
                }
            }
        }
    }

    public func close() async throws {
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

    static func recipient(from row: Row) -> StoredRecipient {
        let delivered: Int64? = row["delivered_at"]
        let read: Int64? = row["read_at"]
        return StoredRecipient(
            account: row["recipient"], deliveredAt: delivered.map { Timestamp(millisecondsSince1970: $0) },
            readAt: read.map { Timestamp(millisecondsSince1970: $0) },
            deliveredNotified: row["delivered_notified"], readNotified: row["read_notified"])
    }

    static func message(from row: Row) throws -> StoredMessage {
        StoredMessage(
            id: row["id"], time: Timestamp(millisecondsSince1970: row["time"]), senderNick: row["sender_nick"],
            senderAccount: row["sender_account"], senderPrefix: row["sender_prefix"],
            targetKind: StoredMessage.TargetKind(rawValue: row["target_kind"]) ?? .direct, target: row["target"],
            command: row["command"], text: row["text"], clientTags: row["client_tags"])
    }
}
