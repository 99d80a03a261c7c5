import Foundation
import ParleyCore
import ParleyStorage
import ParleyStorePostgres
import ParleyStoreSQLite
import PostgresTestSupport
import Testing

/// A storage backend under test: opens an empty store that knows the accounts alice, bob, carol
/// and dave (rows refer to accounts by id, so messages need their accounts), and cleans up after.
struct StorageBackend: Sendable, CustomTestStringConvertible {
    let name: String
    let makeStore: @Sendable () async throws -> (store: any ChatStore, cleanup: @Sendable () async throws -> Void)

    var testDescription: String { name }

    static let accounts = ["alice", "bob", "carol", "dave"]

    /// Every backend the suite runs against.
    static var all: [StorageBackend] { [.sqlite, .postgres] }

    static let sqlite = StorageBackend(name: "SQLite") {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("parley-store-\(UUID().uuidString).sqlite").path
        let store = try SQLiteChatStore(path: path)
        return (store, {
            try await store.close()
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        })
    }

    /// A new database per test on the tests' PostgreSQL (see TestPostgres), dropped afterwards.
    static let postgres = StorageBackend(name: "PostgreSQL") {
        let (url, drop) = try await TestPostgres.freshDatabase()
        let store: PostgresChatStore
        do { store = try await PostgresChatStore.open(url: url) } catch {
            try? await drop()
            throw error
        }
        return (store, {
            try await store.close()
            try await drop()
        })
    }

    /// Opens the store with the test accounts; `done` closes and removes it.
    func open() async throws -> (store: any ChatStore, done: @Sendable () async throws -> Void) {
        let (store, cleanup) = try await makeStore()
        for name in Self.accounts {
            try await store.insertAccount(AccountRecord(
                name: name, key: name, credential: PasswordCredential(salt: [0], iterations: 1, storedKey: [1], serverKey: [2]),
                createdAt: Date(timeIntervalSince1970: 0), lastSeen: nil, email: nil))
        }
        return (store, cleanup)
    }
}
