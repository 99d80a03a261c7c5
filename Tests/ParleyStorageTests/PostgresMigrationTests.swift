import Foundation
import ParleyCore
import ParleyStorePostgres
import PostgresTestSupport
import Testing

/// The PostgreSQL store's own migrations: several nodes opening one new database at the same
/// moment, and a database migrated by a newer Parley.
@Suite("PostgreSQL migrations")
struct PostgresMigrationTests {
    @Test func nodesOpeningANewDatabaseAtOnceMigrateItOnce() async throws {
        let (url, drop) = try await TestPostgres.freshDatabase()
        // Without the advisory lock, the second CREATE TABLE of the same schema fails.
        let stores = try await withThrowingTaskGroup(of: PostgresChatStore.self) { group in
            for _ in 0..<4 { group.addTask { try await PostgresChatStore.open(url: url) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(stores.count == 4)
        // Every one of them works on the same schema: an account made through one is seen by another.
        try await stores[0].insertAccount(AccountRecord(
            name: "alice", key: "alice", credential: PasswordCredential(salt: [0], iterations: 1, storedKey: [1], serverKey: [2]),
            createdAt: Date(timeIntervalSince1970: 0)))
        #expect(try await stores[3].loadAccounts().map(\.key) == ["alice"])
        for store in stores { try await store.close() }
        try await drop()
    }

    @Test func aSchemaNewerThanThisBinaryIsRefused() async throws {
        let (url, drop) = try await TestPostgres.freshDatabase()
        try await PostgresChatStore.open(url: url).close()
        try await TestPostgres.execute("INSERT INTO parley_schema_migrations (version, name) VALUES (999, 'from-the-future')", on: url)
        await #expect(throws: PostgresStoreError.schemaTooNew(found: 999, supported: 10)) {
            try await PostgresChatStore.open(url: url)
        }
        try await drop()
    }

    @Test func aMessageWrittenByAnEarlierVersionIsInItsConversation() async throws {
        let (url, drop) = try await TestPostgres.freshDatabase()
        let store = try await PostgresChatStore.open(url: url)
        for name in ["alice", "bob"] {
            try await store.insertAccount(AccountRecord(
                name: name, key: name, credential: PasswordCredential(salt: [0], iterations: 1, storedKey: [1], serverKey: [2]),
                createdAt: Date(timeIntervalSince1970: 0)))
        }
        // A node of the version before the conversation index writes the columns it knows,
        // during a rolling upgrade: the database gives the row its conversation.
        try await TestPostgres.execute("""
            INSERT INTO messages (id, time, sender_id, sender_nick, sender_prefix, target_kind, target_id, command, text)
            SELECT 'old-1', 1000, a.id, 'bob', 'bob!~b@h', 'direct', b.id, 'PRIVMSG', 'from an older node'
            FROM accounts a, accounts b WHERE a.key = 'bob' AND b.key = 'alice'
            """, on: url)
        try store.transaction {
            try $0.storeMessages([StoredMessage(
                id: "new-1", time: Timestamp(millisecondsSince1970: 2000), senderNick: "alice", senderAccount: "alice",
                senderPrefix: "alice!~a@h", targetKind: .direct, target: "bob", command: "PRIVMSG", text: "from this version")])
        }
        for (me, other) in [("alice", "bob"), ("bob", "alice")] {
            guard case .messages(let found) = try store.loadHistory(HistoryQuery(conversation: .direct(me, other), kind: .latest(after: nil), limit: 10)) else {
                Issue.record("expected messages"); continue
            }
            #expect(found.map(\.text) == ["from an older node", "from this version"], "\(me)'s history with \(other)")
        }
        try await store.close()
        try await drop()
    }

    /// During a rolling upgrade, a node of a version before migration 9 stores direct messages
    /// without recording their conversation's parties: a conversation begun through it is
    /// missing from `CHATHISTORY TARGETS` until a newer node records them, when another node
    /// goes away (the store call the node that notices makes) or when a node starts.
    @Test func aConversationBegunThroughANodeOfAnEarlierVersionIsListedOnceItGoesAway() async throws {
        let (url, drop) = try await TestPostgres.freshDatabase()
        let store = try await PostgresChatStore.open(url: url)
        for name in ["alice", "bob", "carol"] {
            try await store.insertAccount(AccountRecord(
                name: name, key: name, credential: PasswordCredential(salt: [0], iterations: 1, storedKey: [1], serverKey: [2]),
                createdAt: Date(timeIntervalSince1970: 0)))
        }
        func storedByAnEarlierVersion(from sender: String, at time: Int) async throws {
            try await TestPostgres.execute("""
                INSERT INTO messages (id, time, sender_id, sender_nick, sender_prefix, target_kind, target_id, command, text)
                SELECT 'old-\(time)', \(time), a.id, '\(sender)', 'x!~x@h', 'direct', b.id, 'PRIVMSG', 'from an older node'
                FROM accounts a, accounts b WHERE a.key = '\(sender)' AND b.key = 'alice'
                """, on: url)
        }
        func alicesTargets(in store: PostgresChatStore) throws -> [String] {
            guard case .targets(let targets) = try store.loadHistory(HistoryQuery(
                conversation: .everything(account: "alice", groups: []),
                kind: .targets(Timestamp(millisecondsSince1970: 0), Timestamp(millisecondsSince1970: 10_000)), limit: 10)) else { return [] }
            return targets.map(\.key)
        }
        try await storedByAnEarlierVersion(from: "bob", at: 1_000)
        #expect(try alicesTargets(in: store) == [], "not recorded yet")
        try await store.recordConversationParties()
        #expect(try alicesTargets(in: store) == ["bob"])

        try await storedByAnEarlierVersion(from: "carol", at: 2_000)
        let started = try await PostgresChatStore.open(url: url)
        #expect(try alicesTargets(in: started) == ["bob", "carol"])
        try await started.close()
        try await store.close()
        try await drop()
    }

    @Test func badURLsAndMissingDatabasesAreExplained() async throws {
        #expect(throws: PostgresStoreError.self) { try PostgresDatabaseURL(parsing: "postgresql://127.0.0.1/parley") }
        #expect(throws: PostgresStoreError.self) { try PostgresDatabaseURL(parsing: "postgresql://parley@127.0.0.1") }
        let parsed = try PostgresDatabaseURL(parsing: "postgresql://al%40ice:p%3Ass@[::1]:6543/chat")
        #expect(parsed == PostgresDatabaseURL(host: "::1", port: 6543, user: "al@ice", password: "p:ss", database: "chat"))
        #expect(!parsed.description.contains("p:ss"), "the password is never shown")
        let server = try await TestPostgres.server()
        let missing = server.with(database: "parley_no_such_database")
        await #expect(throws: PostgresStoreError.missingDatabase(url: missing.description)) {
            try await PostgresChatStore.open(url: missing)
        }
    }
}
