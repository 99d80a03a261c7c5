import Foundation
import ParleyCore

/// The storage seam: everything the server persists goes through this protocol, so backends
/// (SQLite now, others later) are interchangeable. All methods are async and never block an
/// event loop.
public protocol ChatStore: Sendable {
    func loadAccounts() async throws -> [AccountRecord]
    /// Throws `StoreError.accountExists` when the key is taken.
    func insertAccount(_ account: AccountRecord) async throws
    /// Returns false when there is no such account.
    func updateCredential(accountKey: String, _ credential: PasswordCredential) async throws -> Bool
    func updateSettings(accountKey: String, _ settings: [String: String]) async throws
    func deleteAccount(accountKey: String) async throws -> Bool
    func recordLastSeen(accountKey: String, at: Date) async throws
    /// Appends messages in one transaction: all are stored or none.
    func appendMessages(_ messages: [StoredMessage]) async throws
    func loadGroups() async throws -> [GroupRecord]
    /// Inserts or replaces a group, members and bans included, in one transaction. With
    /// `previousKey` (a rename) the old entry goes and its stored messages follow the new key.
    func saveGroup(_ group: GroupRecord, previousKey: String?) async throws
    func deleteGroup(key: String) async throws
    /// Carries out storage actions (`CoreAction.isOrderedStorageWrite`) in order, in one
    /// transaction: a batch of writes costs one commit.
    func perform(_ writes: [CoreAction]) async throws
    /// Messages still waiting for recipients or for receipts (newer than `since`), and read markers.
    func loadDeliveryState(since: Timestamp) async throws -> DeliveryState
    /// Runs a CHATHISTORY query the domain has already allowed.
    func loadHistory(_ query: HistoryQuery) async throws -> HistoryResult
    func close() async throws
}

public enum StoreError: Error, Sendable, Hashable {
    case accountExists
    case closed
}

