import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ParleyCore
import ParleyStorage
import PostgresNIO
import Synchronization

/// The shared store: PostgreSQL through PostgresNIO, with the same behaviour as the embedded
/// `SQLiteChatStore` (the behavioural suite in ParleyStorageTests runs on both).
///
/// Two connections: one owned by transactions (BEGIN ... COMMIT must not interleave with other
/// statements), and one for everything else, which are single statements in autocommit and may
/// be issued from several threads at once (PostgresNIO queues them on the connection). A
/// connection the server closed is opened again before its next use.
///
/// Durability: a transaction returns once PostgreSQL has committed it (with the server's
/// default `synchronous_commit = on`, that is on disk).
public final class PostgresChatStore: ChatStore {
    public let url: PostgresDatabaseURL
    /// What `pg_stat_activity` shows for this store's connections.
    private let applicationName: String
    private let logger: Logger
    private let eventLoopGroup: any EventLoopGroup
    private let transactionConnection: Mutex<PostgresConnection>
    private let sharedConnection: Mutex<PostgresConnection>
    /// Ids behind account and group keys, as in the SQLite store: group changes are applied
    /// once their transaction commits.
    private let identities = Mutex(StoredIdentities())
    /// The node whose undelivered rows `loadDeliveryState` loads (all of them when nil).
    private let holdingNode = Mutex<String?>(nil)
    /// Direct conversations whose accounts' `conversation_parties` rows this node has seen
    /// committed, so that a message of one costs no write there. Rows are never deleted; the
    /// set is emptied when it would exceed `cachedConversations`.
    private let conversationsWithParties = Mutex(Set<String>())
    static let cachedConversations = 100_000

    private init(url: PostgresDatabaseURL, applicationName: String, logger: Logger, eventLoopGroup: any EventLoopGroup,
                 transactionConnection: PostgresConnection, sharedConnection: PostgresConnection, identities: StoredIdentities) {
        self.url = url
        self.applicationName = applicationName
        self.logger = logger
        self.eventLoopGroup = eventLoopGroup
        self.transactionConnection = Mutex(transactionConnection)
        self.sharedConnection = Mutex(sharedConnection)
        self.identities.withLock { $0 = identities }
    }

    /// Connects, brings the schema up to date (under an advisory lock, so nodes that start at
    /// the same moment migrate once) and loads the ids. Throws `PostgresStoreError`, whose
    /// description is one line an operator can act on.
    /// `applicationName`: what `pg_stat_activity` shows for the store's connections.
    public static func open(
        url: PostgresDatabaseURL, applicationName: String = "parley-server", logger: Logger = Logger(label: "parley.postgres"),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> PostgresChatStore {
        var opened: [PostgresConnection] = []
        do {
            let writer = try await connect(url: url, applicationName: applicationName, logger: logger, on: eventLoopGroup.next())
            opened.append(writer)
            try await migrate(writer, logger: logger)
            let shared = try await connect(url: url, applicationName: applicationName, logger: logger, on: eventLoopGroup.next())
            opened.append(shared)
            var map = StoredIdentities()
            for row in try await writer.runAsync("SELECT id, key FROM accounts", logger: logger) {
                let (id, key) = try row.decode((Int64, String).self)
                map.addAccount(key: key, id: id)
            }
            for row in try await writer.runAsync("SELECT id, key FROM groups", logger: logger) {
                let (id, key) = try row.decode((Int64, String).self)
                map.setGroup(key: key, id: id)
            }
            return PostgresChatStore(url: url, applicationName: applicationName, logger: logger, eventLoopGroup: eventLoopGroup,
                                     transactionConnection: writer, sharedConnection: shared, identities: map)
        } catch {
            for connection in opened { try? await connection.close() }
            throw PostgresStoreError(error, url: url)
        }
    }

    /// - Parameter applicationName: what `pg_stat_activity` shows for the connection, so that an
    ///   operator can tell which node, and which of its connections, a backend serves.
    static func configuration(for url: PostgresDatabaseURL, applicationName: String = "parley-server") throws(PostgresStoreError)
        -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: try tls(for: url))
        configuration.options.connectTimeout = .seconds(10)
        configuration.options.additionalStartupParameters = [("application_name", applicationName)]
        return configuration
    }

    /// The TLS settings `sslmode` and `sslrootcert` ask for, as libpq reads them.
    static func tls(for url: PostgresDatabaseURL) throws(PostgresStoreError) -> PostgresConnection.Configuration.TLS {
        var settings = TLSConfiguration.makeClientConfiguration()
        switch url.tlsMode {
        case .disable: return .disable
        case .prefer, .require: settings.certificateVerification = .none
        case .verifyCA: settings.certificateVerification = .noHostnameVerification
        case .verifyFull: settings.certificateVerification = .fullVerification
        }
        if let file = url.rootCertificateFile {
            do {
                settings.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(file))
            } catch {
                throw .malformedURL("cannot read the database URL's sslrootcert \(file): \(error)")
            }
        }
        let context: NIOSSLContext
        do { context = try NIOSSLContext(configuration: settings) } catch {
            throw .server("cannot set up TLS for PostgreSQL: \(error)")
        }
        return url.tlsMode == .prefer ? .prefer(context) : .require(context)
    }

    private static func connect(url: PostgresDatabaseURL, applicationName: String, logger: Logger, on eventLoop: any EventLoop) async throws -> PostgresConnection {
        try await PostgresConnection.connect(on: eventLoop, configuration: configuration(for: url, applicationName: applicationName), id: 1, logger: logger).get()
    }

    /// Applies the migrations this database lacks, in order, each in its own transaction;
    /// refuses a database that has versions this binary does not know.
    static func migrate(_ connection: PostgresConnection, logger: Logger) async throws {
        try await connection.runAsync("SELECT pg_advisory_lock(?)", [.int(PostgresMigrations.advisoryLockKey)], logger: logger)
        do {
            try await connection.runAsync("""
                CREATE TABLE IF NOT EXISTS parley_schema_migrations (
                    version BIGINT PRIMARY KEY,
                    name TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                )
                """, logger: logger)
            var applied = Set<Int64>()
            for row in try await connection.runAsync("SELECT version FROM parley_schema_migrations", logger: logger) {
                applied.insert(try row.decode(Int64.self))
            }
            let known = Set(PostgresMigrations.all.map { Int64($0.version) })
            if let newest = applied.subtracting(known).max() {
                throw PostgresStoreError.schemaTooNew(found: Int(newest), supported: PostgresMigrations.latestVersion)
            }
            for migration in PostgresMigrations.all where !applied.contains(Int64(migration.version)) {
                try await connection.runAsync("BEGIN", logger: logger)
                do {
                    for statement in migration.statements { try await connection.runAsync(statement, logger: logger) }
                    try await connection.runAsync("INSERT INTO parley_schema_migrations (version, name) VALUES (?, ?)",
                                                  [.int(migration.version), .text(migration.name)], logger: logger)
                    try await connection.runAsync("COMMIT", logger: logger)
                } catch {
                    _ = try? await connection.runAsync("ROLLBACK", logger: logger)
                    throw error
                }
                logger.info("database migrated", metadata: ["version": "\(migration.version)", "name": "\(migration.name)"])
            }
            try await recordConversationParties(on: connection, logger: logger)
        } catch {
            _ = try? await connection.runAsync("SELECT pg_advisory_unlock(?)", [.int(PostgresMigrations.advisoryLockKey)], logger: logger)
            throw error
        }
        try await connection.runAsync("SELECT pg_advisory_unlock(?)", [.int(PostgresMigrations.advisoryLockKey)], logger: logger)
    }

    /// Records the parties of the direct conversations stored since the last time this ran,
    /// where missing: a node of a version before migration 9 writes messages but no
    /// `conversation_parties` rows, so during a rolling upgrade a conversation begun through it
    /// would be missing from `CHATHISTORY TARGETS`. Run as a node starts (after migrating) and
    /// when another node leaves or dies, so that the last node of the earlier version to go is
    /// caught up after. The last `recheckedPositions` are read again each time: a row whose
    /// position was given before the last run may have committed after it.
    static func recordConversationParties(on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.runAsync("BEGIN", logger: logger)
        do {
            var through: Int64 = 0
            // Locked: nodes doing this at the same moment take turns.
            for row in try await connection.runAsync("SELECT position FROM conversation_parties_through FOR UPDATE", logger: logger) {
                through = try row.decode(Int64.self)
            }
            let from = SQLValue.int(through - recheckedPositions)
            try await connection.runAsync("""
                INSERT INTO conversation_parties (account_id, conversation)
                    SELECT sender_id, conversation FROM messages WHERE position > ? AND target_kind = 'direct' AND sender_id IS NOT NULL
                    UNION SELECT target_id, conversation FROM messages WHERE position > ? AND target_kind = 'direct' AND target_id IS NOT NULL
                ON CONFLICT DO NOTHING
                """, [from, from], logger: logger)
            try await connection.runAsync("UPDATE conversation_parties_through SET position = (SELECT COALESCE(MAX(position), 0) FROM messages)",
                                          logger: logger)
            try await connection.runAsync("COMMIT", logger: logger)
        } catch {
            _ = try? await connection.runAsync("ROLLBACK", logger: logger)
            throw error
        }
    }

    static let recheckedPositions: Int64 = 10_000

    /// The connection in `slot`, opened again if the server closed it.
    private func live(_ slot: inout PostgresConnection) throws -> PostgresConnection {
        if slot.isClosed {
            slot = try PostgresConnection.connect(on: eventLoopGroup.next(), configuration: Self.configuration(for: url, applicationName: applicationName),
                                                  id: 2, logger: logger).wait()
        }
        return slot
    }

    /// The connection for single statements. Reopening it blocks the caller, which is rare
    /// enough (the database restarted) not to deserve an async path.
    private func shared() throws -> PostgresConnection {
        try sharedConnection.withLock { try live(&$0) }
    }

    /// PostgresNIO's errors in an operator's words; the storage protocol's own errors as they are.
    private func explained(_ error: any Error) -> any Error {
        if error is StoreError || error is PostgresStoreError { return error }
        return PostgresStoreError(error, url: url)
    }

    // MARK: Accounts and groups

    public func loadAccounts() async throws -> [AccountRecord] {
        do {
            return try await shared().runAsync("SELECT * FROM accounts ORDER BY id", logger: logger).map { try Self.account(from: $0.makeRandomAccess()) }
        } catch { throw explained(error) }
    }

    public func insertAccount(_ account: AccountRecord) async throws {
        let settings = try Self.encodeSettings(account.settings)
        do {
            let rows = try await shared().runAsync("""
                INSERT INTO accounts (key, name, salt, iterations, stored_key, server_key, created_at, last_seen, email, settings)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
                """, [
                    .text(account.key), .text(account.name), .bytes(Data(account.credential.salt)), .int(account.credential.iterations),
                    .bytes(Data(account.credential.storedKey)), .bytes(Data(account.credential.serverKey)),
                    .int(Timestamp(account.createdAt).millisecondsSince1970), .int(account.lastSeen.map { Timestamp($0).millisecondsSince1970 }),
                    .text(account.email), .text(settings),
                ], logger: logger)
            guard let row = rows.first else { throw PostgresStoreError.server("the new account's id was not returned") }
            let id = try row.decode(Int64.self)
            identities.withLock { $0.addAccount(key: account.key, id: id) }
        } catch let error as PSQLError where error.serverInfo?[.sqlState] == "23505" {
            throw StoreError.accountExists
        } catch {
            throw explained(error)
        }
    }

    public func updateCredential(accountKey: String, _ credential: PasswordCredential) async throws -> Bool {
        do {
            let result = try await shared().runAsync(
                "UPDATE accounts SET salt = ?, iterations = ?, stored_key = ?, server_key = ? WHERE key = ?",
                [.bytes(Data(credential.salt)), .int(credential.iterations), .bytes(Data(credential.storedKey)),
                 .bytes(Data(credential.serverKey)), .text(accountKey)], logger: logger)
            return (result.metadata.rows ?? 0) > 0
        } catch { throw explained(error) }
    }

    public func loadGroups() async throws -> [GroupRecord] {
        do {
            let connection = try shared()
            let memberRows = try await connection.runAsync(
                "SELECT m.group_id, a.key, m.role, m.voiced FROM group_members m JOIN accounts a ON a.id = m.account_id", logger: logger)
            var members: [Int64: [String: ChannelRole]] = [:]
            var voiced: [Int64: Set<String>] = [:]
            for row in memberRows {
                let (group, account, role, isVoiced) = try row.decode((Int64, String, Int64, Bool).self)
                members[group, default: [:]][account] = ChannelRole(rawValue: Int(role)) ?? .member
                if isVoiced { voiced[group, default: []].insert(account) }
            }
            var bans: [Int64: [BanEntry]] = [:]
            for row in try await connection.runAsync("SELECT group_id, mask, set_by, set_at FROM group_bans ORDER BY position", logger: logger) {
                let (group, mask, setBy, setAt) = try row.decode((Int64, String, String, Int64).self)
                bans[group, default: []].append(BanEntry(mask: mask, setBy: setBy, setAt: Timestamp(millisecondsSince1970: setAt)))
            }
            return try await connection.runAsync("SELECT g.*, a.key AS owner_key FROM groups g JOIN accounts a ON a.id = g.owner_id ORDER BY g.id", logger: logger).map { plain in
                let row = plain.makeRandomAccess()
                let id: Int64 = try row["id"]
                let topicSetAt: Int64? = try row["topic_set_at"]
                let userLimit: Int64? = try row["user_limit"]
                return GroupRecord(
                    name: try row["name"], key: try row["key"], createdAt: Timestamp(millisecondsSince1970: try row["created_at"]),
                    owner: try row["owner_key"], topic: try row["topic"], topicSetBy: try row["topic_set_by"],
                    topicSetAt: topicSetAt.map { Timestamp(millisecondsSince1970: $0) }, modes: try row["modes"],
                    password: try row["password"], userLimit: userLimit.map { Int($0) }, bans: bans[id] ?? [], members: members[id] ?? [:],
                    voiced: voiced[id] ?? [])
            }
        } catch { throw explained(error) }
    }

    // MARK: Transactions

    /// What the id map knew of the tables when it was last brought up to date: other nodes
    /// create accounts and create, rename and delete groups in the same tables.
    private struct IdentitiesVersion: Equatable {
        var newestAccount: Int64
        var groups: String
    }
    private let identitiesVersion = Mutex<IdentitiesVersion?>(nil)

    /// Brings the id map up to date with what other nodes wrote: one small query when nothing
    /// changed (the newest account id, and a digest of the groups' ids and keys), and the new
    /// accounts or all groups when something did.
    private func refreshIdentities(on connection: PostgresConnection) throws {
        var current = IdentitiesVersion(newestAccount: 0, groups: "")
        for row in try connection.run("""
            SELECT (SELECT coalesce(max(id), 0) FROM accounts),
                   (SELECT coalesce(md5(string_agg(id::text || ':' || key, ',' ORDER BY id)), '') FROM groups)
            """, logger: logger) {
            (current.newestAccount, current.groups) = try row.decode((Int64, String).self)
        }
        let known = identitiesVersion.withLock { $0 }
        guard known != current else { return }
        // Read through the newest id seen by the last read, not the newest id in the map: this
        // node's own inserts interleave with other nodes', and would hide the gaps.
        let knownAccounts = known?.newestAccount ?? 0
        var accounts: [(Int64, String)] = []
        if current.newestAccount > knownAccounts {
            for row in try connection.run("SELECT id, key FROM accounts WHERE id > ?", [.int(knownAccounts)], logger: logger) {
                accounts.append(try row.decode((Int64, String).self))
            }
        }
        var groups: [(Int64, String)]?
        if known?.groups != current.groups {
            groups = try connection.run("SELECT id, key FROM groups", logger: logger).map { try $0.decode((Int64, String).self) }
        }
        identities.withLock { map in
            for (id, key) in accounts { map.addAccount(key: key, id: id) }
            if let groups {
                for id in Array(map.groupKeys.keys) { map.removeGroup(id: id) }
                for (id, key) in groups { map.setGroup(key: key, id: id) }
            }
        }
        identitiesVersion.withLock { $0 = current }
    }

    /// How long a transaction naming a group or account this store cannot find waits for it.
    static let unknownIdentityWait: Duration = .seconds(5)

    /// Orders group messages and new group members by commit, across nodes (any 64-bit constant
    /// no other application on the database uses). A message's position is taken when it is
    /// inserted, a new member's `since` reads the newest committed position: without this, a
    /// message inserted on one node before a member joined on another but committed after
    /// would count that member as a recipient, though it was stored first (and one inserted
    /// later with a lower position, committed earlier, could miss a member). Transactions that
    /// store group messages hold the lock shared (they do not wait for each other); one that
    /// adds a member holds it exclusively, so it reads `since` once every group message with a
    /// position taken before has committed, and every later one takes a higher position.
    static let groupOrderLockKey: Int64 = 0x7061_726C_6579_0002 // "parley" 2
    /// Retries of a transaction PostgreSQL broke off as a deadlock: two nodes each storing group
    /// messages (the lock shared) and adding a member (exclusively) in one transaction.
    static let deadlockRetries = 5

    public func isUnavailable(_ error: any Error) -> Bool {
        (error as? PostgresStoreError)?.isUnavailable ?? false
    }

    public func transaction(_ body: (any StorageTransaction) throws -> Void) throws {
        // Another node tells this one of a group it made (the JOIN, the INVITE) as soon as it
        // decides it, and commits the group's row a moment later: under load a member's message
        // here could name the group before its row exists, and failed with its whole batch. A
        // name not found is looked up again until it appears, for a few seconds, not refused.
        let deadline = ContinuousClock.now + Self.unknownIdentityWait
        var deadlocks = 0
        while true {
            do {
                return try transactionOnce(body)
            } catch StoreError.unknownIdentity(let key) where ContinuousClock.now < deadline {
                logger.debug("waiting for another node's commit", metadata: ["identity": "\(key)"])
                Thread.sleep(forTimeInterval: 0.02)
            } catch let error as PostgresStoreError where error.isDeadlock && deadlocks < Self.deadlockRetries {
                // Rolled back whole: running the writes again is safe.
                deadlocks += 1
                logger.debug("transaction retried after a deadlock with another node", metadata: ["attempt": "\(deadlocks)"])
            }
        }
    }

    private func transactionOnce(_ body: (any StorageTransaction) throws -> Void) throws {
        // Group changes are made on a copy and shared once the transaction commits; a rolled
        // back transaction leaves the map as the database is.
        let changes: [StoredIdentities.Change] = try transactionConnection.withLock { slot in
            let connection: PostgresConnection
            do { connection = try live(&slot) } catch { throw explained(error) }
            do { try refreshIdentities(on: connection) } catch { throw explained(error) }
            let start = identities.withLock { $0 }
            let transaction = Transaction(connection: connection, ids: start, conversationsWithParties: conversationsWithParties.withLock { $0 },
                                          logger: logger)
            do {
                try connection.run("BEGIN", logger: logger)
                try body(transaction)
                try transaction.flush()
                try connection.run("COMMIT", logger: logger)
            } catch {
                // A broken connection cannot roll back; it is closed, and the next transaction opens a new one.
                _ = try? connection.run("ROLLBACK", logger: logger)
                throw explained(error)
            }
            if !transaction.newConversations.isEmpty {
                conversationsWithParties.withLock { known in
                    if known.count + transaction.newConversations.count > Self.cachedConversations { known.removeAll() }
                    known.formUnion(transaction.newConversations)
                }
            }
            return transaction.changes
        }
        if !changes.isEmpty {
            identities.withLock { shared in for change in changes { shared.apply(change) } }
            // This node's own group changes are in the map already: the next check sees the
            // same digest as the map and reads nothing.
            _ = try? transactionConnection.withLock { slot in try refreshIdentities(on: live(&slot)) }
        }
    }

    /// The writes of one transaction. Messages, recipients' updates, read markers and last-seen
    /// times are gathered and written as a few multi-row statements when the transaction ends
    /// (or before a write that must see them): the storage thread hands a whole group commit to
    /// one transaction, and a round trip per action was what bounded the store's rate.
    final class Transaction: StorageTransaction {
        let connection: PostgresConnection
        let logger: Logger
        var ids: StoredIdentities
        var changes: [StoredIdentities.Change] = []
        /// Direct conversations known to have their `conversation_parties` rows, and those this
        /// transaction writes them for.
        private let conversationsWithParties: Set<String>
        private(set) var newConversations: Set<String> = []
        private var partyRows: [SQLValue] = []

        /// Rows for `COPY ... FROM STDIN`: PostgreSQL's bulk path, with no statement to parse or
        /// parameters to bind (with multi-row INSERTs those cost a third of a batch).
        private var messageRows = CopyRows()
        private var recipientRows = CopyRows()
        /// Recipients' updates merged per row, in the order each row was first updated.
        private var updates: [RecipientUpdate] = []
        private var updatePositions: [RecipientRowKey: Int] = [:]
        private var readMarkers: [ReadMarkerKey: Int64] = [:]
        private var groupReadPositions: [GroupPositionKey: Int64] = [:]
        private var lastSeen: [String: Int64] = [:]
        /// Whether `messageRows` holds a group message, and how this transaction holds the
        /// group order lock (`groupOrderLockKey`).
        private var storesGroupMessages = false
        private var groupOrderLock: GroupOrderLock = .none

        private enum GroupOrderLock {
            case none, shared, exclusive
        }

        private struct RecipientRowKey: Hashable {
            var recipient: Int64
            var message: String
        }
        private struct GroupPositionKey: Hashable {
            var group: Int64
            var account: Int64
        }
        private struct ReadMarkerKey: Hashable {
            var account: Int64
            var kind: String
            var target: Int64
        }

        init(connection: PostgresConnection, ids: StoredIdentities, conversationsWithParties: Set<String>, logger: Logger) {
            self.connection = connection
            self.ids = ids
            self.conversationsWithParties = conversationsWithParties
            self.logger = logger
        }

        func run(_ sql: String, _ values: [SQLValue] = []) throws -> PostgresQueryResult {
            try connection.run(sql, values, logger: logger)
        }

        /// Checks the messages' accounts and groups now (a refusal names the first unknown one)
        /// and keeps their rows for `flush()`.
        func storeMessages(_ messages: [StoredMessage]) throws {
            for stored in messages {
                let targetID: Int64?
                var targetGuest: String?
                switch stored.targetKind {
                case .group:
                    guard let group = ids.groupIDs[stored.target] else { throw StoreError.unknownIdentity(stored.target) }
                    targetID = group
                    storesGroupMessages = true
                case .direct:
                    targetID = ids.accountIDs[stored.target]
                    if targetID == nil { targetGuest = stored.target }
                }
                let senderID = stored.senderAccount.flatMap { ids.accountIDs[$0] }
                if stored.senderAccount != nil && senderID == nil { throw StoreError.unknownIdentity(stored.senderAccount ?? "") }
                if stored.targetKind == .direct {
                    // The database computes the message's `conversation` itself; its accounts
                    // are listed under it for CHATHISTORY TARGETS.
                    let senderGuest = stored.senderAccount == nil ? stored.senderGuest : nil
                    if let senderParty = senderID.map(ConversationKey.account) ?? senderGuest,
                       let targetParty = targetID.map(ConversationKey.account) ?? targetGuest {
                        let key = ConversationKey.direct(senderParty, targetParty)
                        if !conversationsWithParties.contains(key), newConversations.insert(key).inserted {
                            for account in [senderID, targetID].compactMap({ $0 }) { partyRows += [.int(account), .text(key)] }
                        }
                    }
                }
                // Members without a row of their own are written nowhere, so nothing needs their id.
                var recipients: [(entry: StoredRecipient, id: Int64)] = []
                for entry in stored.recipients where !DerivedRecipients.needsNoRow(entry, of: stored) {
                    guard let recipient = ids.accountIDs[entry.account] else { throw StoreError.unknownIdentity(entry.account) }
                    recipients.append((entry, recipient))
                }
                messageRows.row { row in
                    row.text(stored.id); row.int(stored.time.millisecondsSince1970); row.int(senderID)
                    row.text(stored.senderAccount == nil ? stored.senderGuest : nil); row.text(stored.senderNick); row.text(stored.senderPrefix)
                    row.text(stored.targetKind.rawValue); row.int(targetID); row.text(targetGuest); row.text(targetGuest == nil ? nil : stored.targetName)
                    row.text(stored.command); row.text(stored.text); row.text(stored.clientTags)
                }
                for (entry, recipient) in recipients {
                    recipientRows.row { row in
                        row.text(stored.id); row.int(recipient); row.int(entry.deliveredAt?.millisecondsSince1970)
                        row.int(entry.readAt?.millisecondsSince1970); row.bool(entry.deliveredNotified); row.bool(entry.readNotified)
                    }
                }
            }
        }

        /// Updates of the same row are merged with the meaning they have one after another (the
        /// first delivery time stays, the latest read time and flags win): one statement applies
        /// them all, and UPDATE ... FROM applies only one source row to each target row.
        func updateRecipients(_ newUpdates: [RecipientUpdate]) throws {
            for update in newUpdates {
                guard let recipient = ids.accountIDs[update.recipient] else { continue }
                let key = RecipientRowKey(recipient: recipient, message: update.messageID)
                guard let position = updatePositions[key] else {
                    updatePositions[key] = updates.count
                    updates.append(update)
                    continue
                }
                updates[position].deliveredAt = updates[position].deliveredAt ?? update.deliveredAt
                updates[position].readAt = update.readAt ?? updates[position].readAt
                updates[position].deliveredNotified = update.deliveredNotified ?? updates[position].deliveredNotified
                updates[position].readNotified = update.readNotified ?? updates[position].readNotified
            }
        }

        func setReadMarker(account: String, conversation: String, time: Timestamp) throws {
            guard let accountID = ids.accountIDs[account], let target = ids.conversation(conversation) else { return }
            let key = ReadMarkerKey(account: accountID, kind: target.kind, target: target.id)
            // A marker never moves back: the latest of the transaction's is the one to keep.
            readMarkers[key] = max(readMarkers[key] ?? .min, time.millisecondsSince1970)
        }

        func setGroupReadPosition(account: String, group: String, time: Timestamp) throws {
            guard let accountID = ids.accountIDs[account], let groupID = ids.groupIDs[group] else { return }
            let key = GroupPositionKey(group: groupID, account: accountID)
            groupReadPositions[key] = max(groupReadPositions[key] ?? .min, time.millisecondsSince1970)
        }

        func setReceiptsPendingSince(account: String, time: Timestamp?) throws {
            // Rare (when an author's first receipt starts to wait, and when they are sent).
            try flush()
            _ = try run("UPDATE accounts SET receipts_pending_since = ? WHERE key = ?", [.int(time?.millisecondsSince1970), .text(account)])
        }

        func recordLastSeen(account: String, at time: Timestamp) throws {
            lastSeen[account] = time.millisecondsSince1970
        }

        /// Writes what was gathered. Messages come before the recipients' rows that refer to them,
        /// and those before updates of them, as the domain decided them.
        func flush() throws {
            if messageRows.count > 0 {
                if storesGroupMessages && groupOrderLock == .none {
                    _ = try run("SELECT pg_advisory_xact_lock_shared(?)", [.int(PostgresChatStore.groupOrderLockKey)])
                    groupOrderLock = .shared
                }
                storesGroupMessages = false
                try copy(&messageRows, into: "messages", columns: [
                    "id", "time", "sender_id", "sender_guest", "sender_nick", "sender_prefix", "target_kind", "target_id",
                    "target_guest", "target_name", "command", "text", "client_tags",
                ])
            }
            if !partyRows.isEmpty {
                try insert(into: "conversation_parties (account_id, conversation)", width: 2, partyRows, suffix: " ON CONFLICT DO NOTHING")
                partyRows.removeAll(keepingCapacity: true)
            }
            if recipientRows.count > 0 {
                try copy(&recipientRows, into: "message_recipients",
                         columns: ["message_id", "recipient_id", "delivered_at", "read_at", "delivered_notified", "read_notified"])
            }
            if !updates.isEmpty {
                try writeUpdates()
                updates.removeAll(keepingCapacity: true)
                updatePositions.removeAll(keepingCapacity: true)
            }
            if !readMarkers.isEmpty {
                var values: [SQLValue] = []
                for (key, time) in readMarkers { values += [.int(key.account), .text(key.kind), .int(key.target), .int(time)] }
                try insert(into: "read_markers (account_id, target_kind, target_id, time)", width: 4, values,
                           suffix: " ON CONFLICT (account_id, target_kind, target_id) DO UPDATE SET time = GREATEST(read_markers.time, excluded.time)")
                readMarkers.removeAll(keepingCapacity: true)
            }
            if !groupReadPositions.isEmpty {
                var values: [SQLValue] = []
                for (key, time) in groupReadPositions { values += [.int(key.group), .int(key.account), .int(time)] }
                try insert(into: "group_read_positions (group_id, account_id, read_until)", width: 3, values,
                           suffix: " ON CONFLICT (group_id, account_id) DO UPDATE SET read_until = GREATEST(group_read_positions.read_until, excluded.read_until)")
                groupReadPositions.removeAll(keepingCapacity: true)
            }
            if !lastSeen.isEmpty {
                var values: [SQLValue] = []
                for (account, time) in lastSeen { values += [.text(account), .int(time)] }
                try forEachChunk(of: values, width: 2) { chunk, rows in
                    _ = try run("""
                        UPDATE accounts a SET last_seen = v.last_seen
                        FROM (VALUES \(Self.placeholders(rows: rows, types: ["text", "bigint"]))) AS v(key, last_seen)
                        WHERE a.key = v.key
                        """, chunk)
                }
                lastSeen.removeAll(keepingCapacity: true)
            }
        }

        /// Before reading the position a new member starts after: see `groupOrderLockKey`.
        private func lockGroupOrderExclusively() throws {
            guard groupOrderLock != .exclusive else { return }
            _ = try run("SELECT pg_advisory_xact_lock(?)", [.int(PostgresChatStore.groupOrderLockKey)])
            groupOrderLock = .exclusive
        }

        /// Sends `rows` with `COPY table (columns) FROM STDIN` and empties it. PostgresNIO's COPY is
        /// async; the transaction's thread waits for it, as for every other statement, while the
        /// task runs on the connection's event loop (see `EventLoopTaskExecutor`).
        private func copy(_ rows: inout CopyRows, into table: String, columns: [String]) throws {
            let data = rows.buffer
            rows.removeAll()
            let promise = connection.eventLoop.makePromise(of: Void.self)
            Task(executorPreference: EventLoopTaskExecutor(connection.eventLoop)) { [connection, logger] in
                do {
                    try await connection.copyFrom(table: table, columns: columns, logger: logger) { writer in
                        try await writer.write(data)
                    }
                    promise.succeed()
                } catch {
                    promise.fail(error)
                }
            }
            try promise.futureResult.wait()
        }

        private func writeUpdates() throws {
            try writeDirectRecipientRows(for: updates.filter { $0.readAt != nil })
            var values: [SQLValue] = []
            values.reserveCapacity(updates.count * 6)
            for update in updates {
                values += [.text(update.messageID), .int(ids.accountIDs[update.recipient]), .int(update.deliveredAt?.millisecondsSince1970),
                           .int(update.readAt?.millisecondsSince1970), .bool(update.deliveredNotified), .bool(update.readNotified)]
            }
            try forEachChunk(of: values, width: 6) { chunk, rows in
                _ = try run("""
                    UPDATE message_recipients r SET
                        delivered_at = COALESCE(r.delivered_at, v.delivered_at), read_at = COALESCE(v.read_at, r.read_at),
                        delivered_notified = COALESCE(v.delivered_notified, r.delivered_notified),
                        read_notified = COALESCE(v.read_notified, r.read_notified)
                    FROM (VALUES \(Self.placeholders(rows: rows, types: ["text", "bigint", "bigint", "bigint", "boolean", "boolean"])))
                        AS v(message_id, recipient_id, delivered_at, read_at, delivered_notified, read_notified)
                    WHERE r.message_id = v.message_id AND r.recipient_id = v.recipient_id
                    """, chunk)
            }
        }

        /// A read of a direct message had at once finds no row: it is written first, as
        /// `DerivedRecipients.completeDirect` gives its state (a row already there, or a message
        /// deleted meanwhile, is left alone).
        private func writeDirectRecipientRows(for reads: [RecipientUpdate]) throws {
            var values: [SQLValue] = []
            for read in reads { values += [.text(read.messageID), .int(ids.accountIDs[read.recipient])] }
            try forEachChunk(of: values, width: 2) { chunk, rows in
                _ = try run("""
                    INSERT INTO message_recipients (message_id, recipient_id, delivered_at, read_at, delivered_notified, read_notified)
                    SELECT m.id, m.target_id, m.time, NULL,
                           NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = m.sender_id AND a.receipts_pending_since <= m.time), FALSE
                    FROM (VALUES \(Self.placeholders(rows: rows, types: ["text", "bigint"]))) AS v(message_id, recipient_id)
                    JOIN messages m ON m.id = v.message_id AND m.target_id = v.recipient_id
                    WHERE \(DerivedRecipients.directWithRecipientSQL)
                    ON CONFLICT (message_id, recipient_id) DO NOTHING
                    """, chunk)
            }
        }

        /// `(?::type, ...), (...)` for `rows` rows: the casts give a VALUES list its column types.
        static func placeholders(rows: Int, types: [String]) -> String {
            let row = "(" + types.map { "?::\($0)" }.joined(separator: ", ") + ")"
            return Array(repeating: row, count: rows).joined(separator: ", ")
        }

        /// Calls `body` with runs of whole rows under PostgreSQL's 65,535 parameters per statement.
        private func forEachChunk(of values: [SQLValue], width: Int, _ body: (Array<SQLValue>, Int) throws -> Void) throws {
            let valuesPerStatement = (65_535 / width) * width
            var start = 0
            while start < values.count {
                let end = min(values.count, start + valuesPerStatement)
                try body(Array(values[start..<end]), (end - start) / width)
                start = end
            }
        }

        /// INSERT ... VALUES (...), (...): as few statements as the parameter limit allows.
        private func insert(into table: String, width: Int, _ values: [SQLValue], suffix: String = "") throws {
            let placeholders = "(" + Array(repeating: "?", count: width).joined(separator: ", ") + ")"
            try forEachChunk(of: values, width: width) { chunk, rows in
                _ = try run("INSERT INTO \(table) VALUES " + Array(repeating: placeholders, count: rows).joined(separator: ", ") + suffix, chunk)
            }
        }

        func setAccountSettings(account: String, _ settings: [String: String]) throws {
            try flush()
            _ = try run("UPDATE accounts SET settings = ? WHERE key = ?", [.text(try PostgresChatStore.encodeSettings(settings)), .text(account)])
        }

        func createGroup(_ group: GroupRecord) throws {
            try saveGroup(group, previousKey: nil, includingMembers: true, creating: true)
        }

        /// Saves a group's state under its stable id: a rename changes its key and name, nothing else.
        func saveGroup(_ group: GroupRecord, previousKey: String?) throws {
            try saveGroup(group, previousKey: previousKey, includingMembers: true)
        }

        func saveGroupSettings(_ group: GroupRecord, previousKey: String?) throws {
            try saveGroup(group, previousKey: previousKey, includingMembers: false)
        }

        private func saveGroup(_ group: GroupRecord, previousKey: String?, includingMembers: Bool, creating: Bool = false) throws {
            guard let owner = ids.accountIDs[group.owner] else { throw StoreError.unknownIdentity(group.owner) }
            try flush()
            let values: [SQLValue] = [
                .text(group.key), .text(group.name), .int(owner), .text(group.topic), .text(group.topicSetBy),
                .int(group.topicSetAt?.millisecondsSince1970), .text(group.modes), .text(group.password), .int(group.userLimit.map { Int64($0) }),
            ]
            // A group of this key may already be stored though this node does not know its id
            // yet: another node made it in the same instant (`ChatServer.settleChannelsMadeTwice`),
            // or is renaming to it. A creation then joins that row as the nodes settle two claims
            // (`settleSecondCreation`); any other save updates it.
            var id = creating ? nil : previousKey.flatMap({ ids.groupIDs[$0] }) ?? ids.groupIDs[group.key]
            var inserted = false
            if id == nil {
                let rows = try run("""
                    INSERT INTO groups (key, name, owner_id, topic, topic_set_by, topic_set_at, modes, password, user_limit, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING RETURNING id
                    """, values + [.int(group.createdAt.millisecondsSince1970)])
                if let row = rows.first {
                    id = try row.decode(Int64.self)
                    inserted = true
                } else {
                    id = try run("SELECT id FROM groups WHERE key = ?", [.text(group.key)]).first.map { try $0.decode(Int64.self) }
                }
            }
            guard let id else { throw PostgresStoreError.server("the group's id was not found") }
            let joiningAnother = creating && !inserted
            let claimWins = joiningAnother ? try settleSecondCreation(of: group, ownerID: owner, storedAs: id) : false
            if !inserted && !joiningAnother {
                _ = try run("""
                    UPDATE groups SET key = ?, name = ?, owner_id = ?, topic = ?, topic_set_by = ?, topic_set_at = ?, modes = ?,
                        password = ?, user_limit = ?, created_at = LEAST(created_at, ?) WHERE id = ?
                    """, values + [.int(group.createdAt.millisecondsSince1970), .int(id)])
            }
            ids.setGroup(key: group.key, id: id)
            changes.append(.group(key: group.key, id: id))
            if includingMembers {
                // Members who stay keep the position they joined after.
                var since: [Int64: Int64] = [:]
                for row in try run("SELECT account_id, since FROM group_members WHERE group_id = ?", [.int(id)]) {
                    let (account, position) = try row.decode((Int64, Int64).self)
                    since[account] = position
                }
                if group.members.keys.contains(where: { ids.accountIDs[$0].map { since[$0] == nil } ?? false }) {
                    try lockGroupOrderExclusively()
                }
                let newest = try run("SELECT " + PostgresChatStore.newestPositionSQL).first.map { try $0.decode(Int64.self) } ?? 0
                let members = group.members.sorted { $0.key < $1.key }.flatMap { account, role -> [SQLValue] in
                    // A losing claim's creator joins the other's group as a plain member.
                    let stored = joiningAnother && !claimWins && role == .owner ? .member : role
                    return ids.accountIDs[account].map {
                        [SQLValue.int(id), .int($0), .int(stored.rawValue), .bool(group.voiced.contains(account)), .int(since[$0] ?? newest)]
                    } ?? []
                }
                // Joining another node's row, its members stay and this group's are added where
                // missing (a winning claim's owner made owner); otherwise the list is replaced.
                if !joiningAnother { _ = try run("DELETE FROM group_members WHERE group_id = ?", [.int(id)]) }
                try insert(into: "group_members (group_id, account_id, role, voiced, since)", width: 5, members,
                           suffix: !joiningAnother ? ""
                               : claimWins ? " ON CONFLICT (group_id, account_id) DO UPDATE SET role = GREATEST(group_members.role, excluded.role)"
                               : " ON CONFLICT (group_id, account_id) DO NOTHING")
            }
            guard !joiningAnother else { return }
            _ = try run("DELETE FROM group_bans WHERE group_id = ?", [.int(id)])
            try insert(into: "group_bans (group_id, mask, set_by, set_at)", width: 4,
                       group.bans.flatMap { [SQLValue.int(id), .text($0.mask), .text($0.setBy), .int($0.setAt.millisecondsSince1970)] })
        }

        /// A creation of a group whose key is already stored, settled as every node settles
        /// two claims (`ChatServer.settleChannelsMadeTwice`): the one made first owns the group,
        /// a tie going to the owner whose key sorts first. Returns whether this claim won; then
        /// the row is now its (owner, creation time) and the stored owner a member. So the stored
        /// group has one owner, the right one, even if both claimants' nodes die before they
        /// rewrite it as settled.
        private func settleSecondCreation(of group: GroupRecord, ownerID: Int64, storedAs id: Int64) throws -> Bool {
            let stored = try run("""
                SELECT g.created_at, a.key FROM groups g JOIN accounts a ON a.id = g.owner_id WHERE g.id = ? FOR UPDATE OF g
                """, [.int(id)])
            guard let row = stored.first else { return false }
            let (createdAt, storedOwner) = try row.decode((Int64, String).self)
            guard (group.createdAt.millisecondsSince1970, group.owner) < (createdAt, storedOwner) else { return false }
            _ = try run("UPDATE groups SET owner_id = ?, created_at = ? WHERE id = ?",
                        [.int(ownerID), .int(group.createdAt.millisecondsSince1970), .int(id)])
            _ = try run("UPDATE group_members SET role = ? WHERE group_id = ? AND role = ?",
                        [.int(Int64(ChannelRole.member.rawValue)), .int(id), .int(Int64(ChannelRole.owner.rawValue))])
            return true
        }

        func setGroupMember(group: String, account: String, role: ChannelRole?, voiced: Bool) throws {
            guard let groupID = ids.groupIDs[group], let accountID = ids.accountIDs[account] else { return }
            try flush()
            if let role {
                // A new member starts after the newest message; one already there keeps its position.
                try lockGroupOrderExclusively()
                _ = try run("""
                    INSERT INTO group_members (group_id, account_id, role, voiced, since) VALUES (?, ?, ?, ?, \(PostgresChatStore.newestPositionSQL))
                    ON CONFLICT (group_id, account_id) DO UPDATE SET role = excluded.role, voiced = excluded.voiced
                    """, [.int(groupID), .int(accountID), .int(Int64(role.rawValue)), .bool(voiced)])
            } else {
                _ = try run("DELETE FROM group_members WHERE group_id = ? AND account_id = ?", [.int(groupID), .int(accountID)])
            }
        }

        /// Deletes a group with everything that belongs to it: members, bans, messages with their
        /// recipients' rows, read markers.
        func deleteGroup(key: String) throws {
            guard let id = ids.groupIDs[key] else { return }
            try flush()
            // Recipients' rows have no foreign key to cascade from (checking one per row cost a
            // quarter of the database's time on the message path): deleted with their messages.
            let conversation = SQLValue.text(ConversationKey.group(id))
            _ = try run("DELETE FROM message_recipients WHERE message_id IN (SELECT id FROM messages WHERE conversation = ?)", [conversation])
            _ = try run("DELETE FROM messages WHERE conversation = ?", [conversation])
            _ = try run("DELETE FROM read_markers WHERE target_kind = 'group' AND target_id = ?", [.int(id)])
            _ = try run("DELETE FROM group_read_positions WHERE group_id = ?", [.int(id)])
            _ = try run("DELETE FROM groups WHERE id = ?", [.int(id)])
            ids.removeGroup(id: id)
            changes.append(.groupRemoved(id: id))
        }

        /// Deletes messages older than `cutoff` with their recipients' rows. Messages
        /// are inserted in time order, so the old ones come first by position: the scan stops at
        /// the first message to keep, as in the SQLite store.
        func deleteMessages(before cutoff: Timestamp) throws {
            try flush()
            let time = cutoff.millisecondsSince1970
            let firstKept = try run("SELECT position FROM messages WHERE time >= ? ORDER BY position LIMIT 1", [.int(time)]).first
                .map { try $0.decode(Int64.self) }
            let bound = firstKept ?? Int64.max
            _ = try run("""
                DELETE FROM message_recipients r USING messages m WHERE r.message_id = m.id AND m.position < ? AND m.time < ?
                """, [.int(bound), .int(time)])
            _ = try run("DELETE FROM messages WHERE position < ? AND time < ?", [.int(bound), .int(time)])
        }

        /// Deletes one message with its recipients' rows (no foreign key does it: migration 4).
        func deleteMessage(id: String) throws {
            try flush()
            _ = try run("DELETE FROM message_recipients WHERE message_id = ?", [.text(id)])
            _ = try run("DELETE FROM messages WHERE id = ?", [.text(id)])
        }
    }

    // MARK: Delivery state and history

    public func loadDeliveryState(since cutoff: Timestamp, maxTrackedRecipients: Int) async throws -> DeliveryState {
        try await loadDeliveryState(since: cutoff, maxTrackedRecipients: maxTrackedRecipients, sentThrough: nil)
    }

    /// `loadDeliveryState`, or with `node` the messages sent through that node only (their ids
    /// start with its name), with every recipient row whoever holds it.
    private func loadDeliveryState(since cutoff: Timestamp, maxTrackedRecipients: Int, sentThrough node: String?) async throws -> DeliveryState {
        let ids = identities.withLock { $0 }
        let sentThrough = node.map { " AND m.id LIKE '\($0).%'" } ?? ""
        do {
            let connection = try shared()
            // What the server follows in memory, loaded in bounded windows so that start-up time
            // and memory do not grow with the history: every message someone still waits for,
            // and the newest messages up to `maxTrackedRecipients` recipient states. Each message
            // counted has a recipient, so the window is at most that many messages. A group
            // message counts its members too (at most: some may have joined later), a direct
            // message its one recipient, row or not.
            var derived = DerivedRecipients()
            for row in try await connection.runAsync("SELECT group_id, account_id, since FROM group_members", logger: logger) {
                let (group, account, since) = try row.decode((Int64, Int64, Int64).self)
                derived.addMember(group: group, account: ids.accountKeys[account], since: since)
            }
            for row in try await connection.runAsync("SELECT group_id, account_id, read_until FROM group_read_positions", logger: logger) {
                let (group, account, time) = try row.decode((Int64, Int64, Int64).self)
                derived.addReadPosition(group: group, account: ids.accountKeys[account], time: Timestamp(millisecondsSince1970: time))
            }
            for row in try await connection.runAsync(
                "SELECT id, receipts_pending_since FROM accounts WHERE receipts_pending_since IS NOT NULL", logger: logger) {
                let (account, time) = try row.decode((Int64, Int64).self)
                derived.addReceiptsPendingSince(account: ids.accountKeys[account], time: Timestamp(millisecondsSince1970: time))
            }
            let window = try await connection.runAsync("""
                WITH newest AS (
                    SELECT m.position, CASE
                            WHEN \(DerivedRecipients.directWithRecipientSQL) THEN 1
                            ELSE (SELECT COUNT(*) FROM message_recipients r WHERE r.message_id = m.id)
                                + CASE WHEN m.target_kind = 'group' THEN (SELECT COUNT(*) FROM group_members g WHERE g.group_id = m.target_id) ELSE 0 END
                        END AS recipients
                    FROM messages m
                    WHERE m.time >= ? AND (m.target_kind = 'group' OR \(DerivedRecipients.directWithRecipientSQL)
                        OR EXISTS (SELECT 1 FROM message_recipients r WHERE r.message_id = m.id))
                        \(sentThrough)
                    ORDER BY m.position DESC LIMIT ?
                )
                SELECT MIN(position) FROM (
                    SELECT position, SUM(recipients) OVER (ORDER BY position DESC) - recipients AS newer FROM newest
                ) counted WHERE newer < ?
                """, [.int(cutoff.millisecondsSince1970), .int(maxTrackedRecipients), .int(maxTrackedRecipients)], logger: logger)
            let recentFrom = try window.first?.decode(Int64?.self) ?? Int64.max
            // Only messages still to be delivered are replayed, so only they need their text;
            // the others are followed for receipts by id, time and parties alone.
            let rows = try await connection.runAsync("""
                WITH waiting AS MATERIALIZED (SELECT DISTINCT message_id AS id FROM message_recipients WHERE delivered_at IS NULL)
                SELECT m.position, m.id, m.time, m.sender_id, m.sender_guest, m.target_kind, m.target_id, m.target_guest, m.target_name, m.command,
                       CASE WHEN w.id IS NOT NULL THEN m.sender_nick ELSE '' END AS sender_nick,
                       CASE WHEN w.id IS NOT NULL THEN m.sender_prefix ELSE '' END AS sender_prefix,
                       CASE WHEN w.id IS NOT NULL THEN m.text ELSE '' END AS text,
                       CASE WHEN w.id IS NOT NULL THEN m.client_tags ELSE '' END AS client_tags,
                       r.recipient_id, r.delivered_at, r.read_at, r.delivered_notified, r.read_notified
                FROM messages m LEFT JOIN message_recipients r ON r.message_id = m.id LEFT JOIN waiting w ON w.id = m.id
                WHERE m.time >= ? AND (m.position >= ? OR w.id IS NOT NULL)
                    AND (r.recipient_id IS NOT NULL OR m.target_kind = 'group' OR \(DerivedRecipients.directWithRecipientSQL))
                    \(node == nil ? Self.heldOnly(holdingNode.withLock { $0 }) : sentThrough)
                ORDER BY m.position, r.recipient_id
                """, [.int(cutoff.millisecondsSince1970), .int(recentFrom)], logger: logger)
            var state = DeliveryStateBuilder()
            for plain in rows {
                let row = plain.makeRandomAccess()
                let recipientID: Int64? = try row["recipient_id"]
                let kind: String = try row["target_kind"]
                let targetID: Int64? = try row["target_id"]
                let group: (group: Int64, position: Int64)? = kind == "group" ? (targetID ?? 0, try row["position"]) : nil
                try state.add(messageID: try row["id"], recipient: recipientID == nil ? nil : try Self.recipient(from: row, ids: ids),
                              hasRecipientRow: recipientID != nil, groupPosition: group) { try Self.message(from: row, ids: ids) }
            }
            state.complete(with: derived, ids: ids)
            for row in try await connection.runAsync("SELECT account_id, target_kind, target_id, time FROM read_markers", logger: logger) {
                let (accountID, kind, targetID, time) = try row.decode((Int64, String, Int64, Int64).self)
                state.addReadMarker(account: ids.accountKeys[accountID], conversation: ids.conversationKey(kind: kind, id: targetID),
                                    time: Timestamp(millisecondsSince1970: time))
            }
            return state.build(keepingSettled: node != nil)
        } catch { throw explained(error) }
    }

    /// The position a member who joins now starts after: the newest message stored so far.
    static let newestPositionSQL = "(SELECT COALESCE(MAX(position), 0) FROM messages)"

    /// A condition leaving out the undelivered rows another node holds. Node names are letters,
    /// digits and '-' (checked at start), so the name goes into the statement as it is.
    static func heldOnly(_ node: String?) -> String {
        guard let node, PostgresClusterLink.isValidNodeName(node) else { return "" }
        return " AND (r.recipient_id IS NULL OR r.delivered_at IS NOT NULL OR COALESCE(r.holder = '\(node)', m.id LIKE '\(node).%'))"
    }

    public func loadHistory(_ query: HistoryQuery) throws -> HistoryResult {
        do {
            let connection = try shared()
            try refreshIdentities(on: connection)
            return try PostgresHistory(connection: connection, ids: identities.withLock { $0 }, logger: logger).run(query)
        } catch { throw explained(error) }
    }

    public func close() async throws {
        let connections = [transactionConnection.withLock { $0 }, sharedConnection.withLock { $0 }]
        // Bounded, as a shutdown must end: every write has committed by the time the store closes.
        for connection in connections where !connection.isClosed {
            try await PostgresClusterLink.withTimeout(.seconds(5)) { try await connection.close() }
        }
    }

    // MARK: Row mapping

    static func encodeSettings(_ settings: [String: String]) throws -> String {
        String(decoding: try JSONEncoder().encode(settings), as: UTF8.self)
    }

    static func account(from row: PostgresRandomAccessRow) throws -> AccountRecord {
        let settingsText: String = try row["settings"]
        let settings = (try? JSONDecoder().decode([String: String].self, from: Data(settingsText.utf8))) ?? [:]
        let salt: Data = try row["salt"]
        let storedKey: Data = try row["stored_key"]
        let serverKey: Data = try row["server_key"]
        let iterations: Int64 = try row["iterations"]
        let lastSeen: Int64? = try row["last_seen"]
        return AccountRecord(
            name: try row["name"], key: try row["key"],
            credential: PasswordCredential(salt: [UInt8](salt), iterations: Int(iterations), storedKey: [UInt8](storedKey), serverKey: [UInt8](serverKey)),
            createdAt: Timestamp(millisecondsSince1970: try row["created_at"]).date,
            lastSeen: lastSeen.map { Timestamp(millisecondsSince1970: $0).date }, email: try row["email"], settings: settings)
    }

    static func recipient(from row: PostgresRandomAccessRow, ids: StoredIdentities) throws -> StoredRecipient? {
        guard let account = ids.accountKeys[try row["recipient_id", as: Int64.self]] else { return nil }
        let delivered: Int64? = try row["delivered_at"]
        let read: Int64? = try row["read_at"]
        return StoredRecipient(
            account: account, deliveredAt: delivered.map { Timestamp(millisecondsSince1970: $0) },
            readAt: read.map { Timestamp(millisecondsSince1970: $0) },
            deliveredNotified: try row["delivered_notified"], readNotified: try row["read_notified"])
    }

    /// A message row in the domain's terms (keys, not ids); nil if it names a group or account
    /// this store no longer knows.
    static func message(from row: PostgresRandomAccessRow, ids: StoredIdentities) throws -> StoredMessage? {
        let kind = StoredMessage.TargetKind(rawValue: try row["target_kind"]) ?? .direct
        let senderID: Int64? = try row["sender_id"]
        let targetID: Int64? = try row["target_id"]
        let target: String?
        switch kind {
        case .group: target = targetID.flatMap { ids.groupKeys[$0] }
        case .direct: target = try targetID.map { ids.accountKeys[$0] } ?? row["target_guest"]
        }
        guard let target else { return nil }
        let senderAccount = senderID.flatMap { ids.accountKeys[$0] }
        if senderID != nil && senderAccount == nil { return nil }
        return StoredMessage(
            id: try row["id"], time: Timestamp(millisecondsSince1970: try row["time"]), senderNick: try row["sender_nick"],
            senderAccount: senderAccount, senderGuest: try row["sender_guest"], senderPrefix: try row["sender_prefix"],
            targetKind: kind, target: target, targetName: try row["target_name"],
            command: try row["command"], text: try row["text"], clientTags: try row["client_tags"])
    }
}

// MARK: A node that died

extension PostgresChatStore: ClusterDeliveryStore {
    public func holdUndelivered(asNode name: String) {
        holdingNode.withLock { $0 = name }
    }

    public func returnHandOvers(_ handOvers: [(messageID: String, account: String)], holder: String) async throws -> [StoredMessage] {
        // Accounts another node created since this one last looked.
        do { try refreshIdentities(on: try shared()) } catch { throw explained(error) }
        let ids = identities.withLock { $0 }
        var values: [SQLValue] = []
        for handOver in handOvers {
            guard let account = ids.accountIDs[handOver.account] else { continue }
            values += [.text(handOver.messageID), .int(account)]
        }
        guard !values.isEmpty else { return [] }
        do {
            // A group member who had the message as it was sent has no row (a group message is
            // one row for all of them): the row that waits for their next login is made here.
            let rows = try await shared().runAsync("""
                WITH returned AS (
                    INSERT INTO message_recipients AS r (message_id, recipient_id, delivered_at, delivered_notified, holder)
                    SELECT v.message_id, v.recipient_id, NULL, FALSE, ?
                    FROM (VALUES \(Transaction.placeholders(rows: values.count / 2, types: ["text", "bigint"]))) AS v(message_id, recipient_id)
                    WHERE EXISTS (SELECT 1 FROM messages m WHERE m.id = v.message_id)
                    ON CONFLICT (message_id, recipient_id) DO UPDATE SET delivered_at = NULL, delivered_notified = FALSE, holder = excluded.holder
                        WHERE r.read_at IS NULL
                    RETURNING r.message_id, r.recipient_id
                )
                \(Self.waitingMessagesQuery)
                """, [.text(holder)] + values, logger: logger)
            return try Self.waitingMessages(rows, ids: ids)
        } catch { throw explained(error) }
    }

    public func followedMessages(ofNode node: UInt16, follower: String, since cutoff: Timestamp,
                                 maxTrackedRecipients: Int) async throws -> [(sentThrough: UInt16, messages: [StoredMessage])] {
        var taken: [(number: UInt16, name: String)] = []
        do {
            let connection = try shared()
            try refreshIdentities(on: connection)
            // Every node declares a dead node dead in turn: the first follows its messages, and
            // with them those of the nodes it followed (and those they followed, had one of
            // them taken over a node before it was declared dead). One statement, so that they
            // change follower together or not at all: a follower that dies in between leaves
            // none behind. A node that starts a new run meanwhile has cleared its `followed_by`
            // and is left alone (checked again on the row as it is updated).
            let rows = try await connection.runAsync("""
                WITH RECURSIVE dead AS (
                    UPDATE cluster_nodes SET followed_by = ? WHERE number = ? AND followed_by IS NULL RETURNING number, name
                ), chain (number, name, followed_by) AS (
                    SELECT number, name, CAST(NULL AS TEXT) FROM dead
                    UNION
                    SELECT n.number, n.name, n.followed_by FROM cluster_nodes n JOIN chain c ON n.followed_by = c.name
                    WHERE n.name <> ?
                ), handed AS (
                    UPDATE cluster_nodes n SET followed_by = ? FROM chain c
                    WHERE n.number = c.number AND n.followed_by = c.followed_by
                    RETURNING n.number, n.name
                )
                SELECT number, name, 0 AS handed FROM dead
                UNION ALL SELECT number, name, 1 FROM handed
                ORDER BY handed, number
                """, [.text(follower), .int(Int64(node)), .text(follower), .text(follower)], logger: logger)
            for row in rows {
                let (number, name, _) = try row.decode((Int32, String, Int32).self)
                guard PostgresClusterLink.isValidNodeName(name) else { continue }
                taken.append((UInt16(number), name))
            }
        } catch { throw explained(error) }
        return try await messages(sentThrough: taken, since: cutoff, maxTrackedRecipients: maxTrackedRecipients)
    }

    public func messagesFollowed(by follower: String, since cutoff: Timestamp,
                                 maxTrackedRecipients: Int) async throws -> [(sentThrough: UInt16, messages: [StoredMessage])] {
        var nodes: [(number: UInt16, name: String)] = []
        do {
            let connection = try shared()
            try refreshIdentities(on: connection)
            for row in try await connection.runAsync("SELECT number, name FROM cluster_nodes WHERE followed_by = ? AND name <> ? ORDER BY number",
                                                     [.text(follower), .text(follower)], logger: logger) {
                let (number, name) = try row.decode((Int32, String).self)
                guard PostgresClusterLink.isValidNodeName(name) else { continue }
                nodes.append((UInt16(number), name))
            }
        } catch { throw explained(error) }
        return try await messages(sentThrough: nodes, since: cutoff, maxTrackedRecipients: maxTrackedRecipients)
    }

    /// The window `loadDeliveryState` loads, for each node's messages in turn.
    private func messages(sentThrough nodes: [(number: UInt16, name: String)], since cutoff: Timestamp,
                          maxTrackedRecipients: Int) async throws -> [(sentThrough: UInt16, messages: [StoredMessage])] {
        var followed: [(sentThrough: UInt16, messages: [StoredMessage])] = []
        for (number, name) in nodes {
            let messages = try await loadDeliveryState(since: cutoff, maxTrackedRecipients: maxTrackedRecipients, sentThrough: name).tracked
            followed.append((number, messages))
        }
        return followed
    }

    public func stillFollowed(_ nodes: [UInt16], by follower: String) async throws -> Set<UInt16> {
        guard !nodes.isEmpty else { return [] }
        var followed: Set<UInt16> = []
        do {
            for row in try await shared().runAsync("SELECT number FROM cluster_nodes WHERE followed_by = ?", [.text(follower)], logger: logger) {
                followed.insert(UInt16(try row.decode(Int32.self)))
            }
        } catch { throw explained(error) }
        return followed.intersection(nodes)
    }

    public func recordConversationParties() async throws {
        do { try await Self.recordConversationParties(on: try shared(), logger: logger) } catch { throw explained(error) }
    }

    public func adoptUndelivered(ofNode node: UInt16, holder: String) async throws -> [StoredMessage] {
        do {
            let connection = try shared()
            try refreshIdentities(on: connection)
            let ids = identities.withLock { $0 }
            var deadName: String?
            for row in try await connection.runAsync("SELECT name FROM cluster_nodes WHERE number = ?", [.int(Int64(node))], logger: logger) {
                deadName = try row.decode(String.self)
            }
            guard let deadName, PostgresClusterLink.isValidNodeName(deadName) else { return [] }
            let rows = try await connection.runAsync("""
                WITH returned AS (
                    UPDATE message_recipients r SET holder = ?
                    WHERE r.delivered_at IS NULL AND (r.holder = ? OR (r.holder IS NULL AND r.message_id LIKE ?))
                    RETURNING r.message_id, r.recipient_id
                )
                \(Self.waitingMessagesQuery)
                """, [.text(holder), .text(deadName), .text(deadName + ".%")], logger: logger)
            return try Self.waitingMessages(rows, ids: ids)
        } catch { throw explained(error) }
    }

    /// Follows a `returned (message_id, recipient_id)` CTE: those messages, oldest first.
    private static let waitingMessagesQuery = """
        SELECT m.id, m.time, m.sender_id, m.sender_guest, m.sender_nick, m.sender_prefix, m.target_kind, m.target_id,
               m.target_guest, m.target_name, m.command, m.text, m.client_tags, returned.recipient_id
        FROM returned JOIN messages m ON m.id = returned.message_id
        ORDER BY m.position, returned.recipient_id
        """

    private static func waitingMessages(_ rows: PostgresQueryResult, ids: StoredIdentities) throws -> [StoredMessage] {
        var messages: [StoredMessage] = []
        for plain in rows {
            let row = plain.makeRandomAccess()
            guard let account = ids.accountKeys[try row["recipient_id", as: Int64.self]] else { continue }
            let id: String = try row["id"]
            if messages.last?.id != id {
                guard let message = try message(from: row, ids: ids) else { continue }
                messages.append(message)
            }
            messages[messages.count - 1].recipients.append(StoredRecipient(account: account))
        }
        return messages
    }
}
