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
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronousFull ? "FULL" : "NORMAL")")
        }
        pool = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(pool)
    }

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

    public func updateSettings(accountKey: String, _ settings: [String: String]) async throws {
        let encoded = try Self.encodeSettings(settings)
        try await pool.write { db in
            try db.execute(sql: "UPDATE accounts SET settings = ? WHERE key = ?", arguments: [encoded, accountKey])
        }
    }

    public func deleteAccount(accountKey: String) async throws -> Bool {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM accounts WHERE key = ?", arguments: [accountKey])
            return db.changesCount > 0
        }
    }

    public func recordLastSeen(accountKey: String, at date: Date) async throws {
        try await pool.write { db in
            try db.execute(sql: "UPDATE accounts SET last_seen = ? WHERE key = ?", arguments: [Self.milliseconds(date), accountKey])
        }
    }

    public func appendMessages(_ messages: [StoredMessage]) async throws {
        guard !messages.isEmpty else { return }
        try await pool.write { db in try Self.insertMessages(messages, in: db) }
    }

    static func insertMessages(_ messages: [StoredMessage], in db: Database) throws {
        let statement = try db.cachedStatement(sql: """
            INSERT INTO messages (id, time, sender_nick, sender_account, sender_prefix, target_kind, target, command, text, client_tags)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """)
        for message in messages {
            try statement.execute(arguments: [
                message.id, message.time.millisecondsSince1970, message.senderNick, message.senderAccount,
                message.senderPrefix, message.targetKind.rawValue, message.target, message.command,
                message.text, message.clientTags,
            ])
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

    public func saveGroup(_ group: GroupRecord, previousKey: String?) async throws {
        try await pool.write { db in
            try Self.saveGroup(group, previousKey: previousKey, in: db)
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

    public func deleteGroup(key: String) async throws {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM groups WHERE key = ?", arguments: [key])
        }
    }

    /// Carries out ordered storage work in one transaction: all of it lands, or none.
    public func perform(_ writes: [CoreAction]) async throws {
        guard !writes.isEmpty else { return }
        try await pool.write { db in
            for write in writes {
                switch write {
                case .storeMessages(let messages):
                    try Self.insertMessages(messages, in: db)
                case .saveGroup(let group, let previousKey):
                    try Self.saveGroup(group, previousKey: previousKey, in: db)
                case .deleteGroup(let key):
                    try db.execute(sql: "DELETE FROM groups WHERE key = ?", arguments: [key])
                case .recordLastSeen(let accountKey, let time):
                    try db.execute(sql: "UPDATE accounts SET last_seen = ? WHERE key = ?", arguments: [time.millisecondsSince1970, accountKey])
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

    static func message(from row: Row) throws -> StoredMessage {
        StoredMessage(
            id: row["id"], time: Timestamp(millisecondsSince1970: row["time"]), senderNick: row["sender_nick"],
            senderAccount: row["sender_account"], senderPrefix: row["sender_prefix"],
            targetKind: StoredMessage.TargetKind(rawValue: row["target_kind"]) ?? .direct, target: row["target"],
            command: row["command"], text: row["text"], clientTags: row["client_tags"])
    }
}
