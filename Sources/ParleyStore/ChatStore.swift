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
    func loadGroups() async throws -> [GroupRecord]
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
}

