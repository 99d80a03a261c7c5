import Foundation
import GRDB
@testable import ParleyCore
import ParleyStorage
@testable import ParleyStoreSQLite
import Testing

@Suite("SQLite store: checkpoints beside the writer")
struct WALCheckpointerTests {
    static func message(_ number: Int) -> StoredMessage {
        StoredMessage(
            id: "m\(number)", time: Timestamp(millisecondsSince1970: 1_764_000_000_000 + Int64(number)), senderNick: "alice",
            senderAccount: "alice", senderPrefix: "alice!~a@h", targetKind: .direct, target: "bob", command: "PRIVMSG",
            text: String(repeating: "x", count: 200) + " \(number)", recipients: [StoredRecipient(account: "bob")])
    }

    static func fileSize(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? 0
    }

    @Test func theWALIsCopiedIntoTheDatabaseBesideTheWriterAndEveryCommitSurvives() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("parley-checkpoint-\(UUID().uuidString).sqlite").path
        defer {
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        }
        // A checkpoint every 8 WAL pages: a few dozen commits need several.
        let store = try SQLiteChatStore(path: path, walCheckpointPages: 8)
        for name in ["alice", "bob"] {
            try await store.insertAccount(AccountRecord(
                name: name, key: name, credential: PasswordCredential(salt: [0], iterations: 1, storedKey: [1], serverKey: [2]),
                createdAt: Date(timeIntervalSince1970: 0), lastSeen: nil, email: nil))
        }
        let sizeBefore = Self.fileSize(path)
        let count = 300
        for number in 0..<count {
            try store.transaction { try $0.storeMessages([Self.message(number)]) }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while store.backgroundCheckpoints == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(store.backgroundCheckpoints > 0)
        #expect(Self.fileSize(path) > sizeBefore, "pages were copied from the WAL into the database file")
        try await store.close()

        let reopened = try DatabaseQueue(path: path)
        let stored = try await reopened.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM messages") }
        #expect(stored == count)
        try reopened.close()
    }
}
