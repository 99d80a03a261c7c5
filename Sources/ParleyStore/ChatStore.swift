import Foundation
import ParleyCore

/// The storage seam: everything the server persists goes through this protocol, so backends
/// (SQLite now, others later) are interchangeable. The async methods are for start-up and
/// account work; the ordered writes and history reads are synchronous, because the server calls
/// them from its own storage thread, one call at a time (never from an event loop): a batch
/// then costs no hops between threads or tasks.
public protocol ChatStore: Sendable {
    func loadAccounts() async throws -> [AccountRecord]
    /// Throws `StoreError.accountExists` when the key is taken.
    func insertAccount(_ account: AccountRecord) async throws
    /// Returns false when there is no such account.
    func updateCredential(accountKey: String, _ credential: PasswordCredential) async throws -> Bool
    func loadGroups() async throws -> [GroupRecord]
    /// Carries out storage actions (`CoreAction.isOrderedStorageWrite`) in order, in one
    /// transaction: a batch of writes costs one commit. Blocks until it is committed.
    func perform(_ writes: [CoreAction]) throws
    /// Messages still waiting for recipients, the newest messages whose receipts are still due
    /// (up to `maxTrackedRecipients` recipient states; all newer than `since`), and read markers.
    func loadDeliveryState(since: Timestamp, maxTrackedRecipients: Int) async throws -> DeliveryState
    /// Runs a CHATHISTORY query the domain has already allowed.
    func loadHistory(_ query: HistoryQuery) throws -> HistoryResult
    func close() async throws
}

public enum StoreError: Error, Sendable, Hashable {
    case accountExists
    /// A write named an account or group the store has no id for (it was never saved, or
    /// deleted): refused rather than stored under a name.
    case unknownIdentity(String)
}

