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
        try await pool.write { db in
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
