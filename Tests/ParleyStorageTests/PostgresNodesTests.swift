import Dispatch
import Foundation
import ParleyCore
import ParleyStorage
import ParleyStorePostgres
import PostgresTestSupport
import Synchronization
import Testing

/// Two stores on one PostgreSQL database, as two nodes of a cluster have.
@Suite("PostgreSQL store shared by two nodes")
struct PostgresNodesTests {
    /// A node learns of a group another node made before that node has committed it: a message
    /// to it waits for the commit instead of failing (ClusterProcessTests' group message used
    /// to fail now and then with STORAGE_FAILED under load).
    @Test func aMessageToAGroupAnotherNodeIsStillCommittingWaitsForIt() async throws {
        let (first, done) = try await StorageBackend.postgres.open()
        let url = try #require((first as? PostgresChatStore)?.url)
        let second = try await PostgresChatStore.open(url: url)
        let now = Timestamp(millisecondsSince1970: 1_764_000_000_000)
        let group = GroupRecord(name: "#new", key: "#new", createdAt: now, owner: "alice", members: ["alice": .owner, "bob": .member])
        let message = StoredMessage(id: "n2.g1", time: now, senderNick: "bob", senderAccount: "bob", senderPrefix: "bob!~b@h",
                                    targetKind: .group, target: "#new", command: "PRIVMSG", text: "hello",
                                    recipients: [StoredRecipient(account: "alice")])
        let outcome = Mutex<Result<Void, any Error>?>(nil)
        let finished = DispatchSemaphore(value: 0)
        try first.transaction { transaction in
            try transaction.saveGroup(group, previousKey: nil)
            // The other node stores a message to the group while its row is not committed yet
            // (this transaction stays open a moment longer to make sure of that).
            DispatchQueue.global().async {
                let result = Result { try second.transaction { try $0.storeMessages([message]) } }
                outcome.withLock { $0 = result }
                finished.signal()
            }
            Thread.sleep(forTimeInterval: 0.3)
        }
        #expect(finished.wait(timeout: .now() + 10) == .success)
        let result = outcome.withLock { $0 }
        #expect(throws: Never.self) { try result?.get() }
        guard case .messages(let found) = try first.loadHistory(HistoryQuery(conversation: .group("#new"), kind: .latest(after: nil), limit: 10)) else {
            Issue.record("expected messages"); return
        }
        #expect(found.map(\.text) == ["hello"])
        try await second.close()
        try await done()
    }
}
