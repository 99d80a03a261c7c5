import Foundation
import ParleyCore

/// The storage seam: everything the server persists goes through these named operations, so
/// backends (the embedded SQLite default; others beside it) are interchangeable and one
/// behavioural test suite runs against each.
///
/// Rows refer to accounts and groups by stable ids that the backend keeps behind the domain's
/// keys (an account's folded name, never reused; a group's folded name, which a rename changes
/// and a deletion frees): a group made later under a deleted group's name is a new group.
///
/// The async operations are for start-up and account work. Transactions and history reads are
/// synchronous: the server calls them from its own storage thread and reader queue, never from
/// an event loop, so a batch costs no hops between threads or tasks.
public protocol ChatStore: Sendable {
    func loadAccounts() async throws -> [AccountRecord]
    /// Throws `StoreError.accountExists` when the key is taken.
    func insertAccount(_ account: AccountRecord) async throws
    /// Returns false when there is no such account.
    func updateCredential(accountKey: String, _ credential: PasswordCredential) async throws -> Bool
    func loadGroups() async throws -> [GroupRecord]
    /// Messages still waiting for recipients, the newest messages whose receipts are still due
    /// (up to `maxTrackedRecipients` recipient states; all newer than `since`), and read markers.
    func loadDeliveryState(since: Timestamp, maxTrackedRecipients: Int) async throws -> DeliveryState
    /// Runs `body`'s writes in one transaction: all of them land, or none (the error is
    /// rethrown). Blocks until committed.
    func transaction(_ body: (any StorageTransaction) throws -> Void) throws
    /// Whether an error `transaction` threw says the database could not take the writes just
    /// then (unreachable, restarting, out of disk, busy) rather than that it refused them: the
    /// same writes may be tried again later. Every write but a message's is such that applying
    /// it twice is harmless, should a commit whose answer was lost be tried again.
    func isUnavailable(_ error: any Error) -> Bool
    /// Runs a CHATHISTORY query the domain has already allowed. Sees every committed write.
    func loadHistory(_ query: HistoryQuery) throws -> HistoryResult
    func close() async throws
}

/// The writes of one transaction, in the order the server decided them.
public protocol StorageTransaction {
    /// Stores messages with their recipients' delivery state. Every account and group they name
    /// must be known to the store (`StoreError.unknownIdentity` otherwise), but the group members
    /// who get no row (below), for whom nothing is written.
    ///
    /// A group message is one row: its members who got it as it was sent (delivered at its time,
    /// not read) get no row of their own. Their state follows from positions per member: they
    /// were members when it was stored (`group_members.since`), so it was delivered at its time,
    /// and it is read once their read position (`setGroupReadPosition`) reaches its time.
    /// Reads give them back as recipients like any other: delivered, and read once the position
    /// covers it, each receipt counted as sent unless the author's receipts have been waiting
    /// since before (`setReceiptsPendingSince`). Members who were offline keep a row
    /// each, since they still wait for it.
    ///
    /// A direct message to an account (not a TAGMSG) that its recipient got as it was sent has
    /// no recipient row either: reads give it back delivered at its time, not read, its receipt
    /// counted as sent unless the author's receipts have been waiting since before. Its read
    /// writes the row (`updateRecipients`).
    func storeMessages(_ messages: [StoredMessage]) throws
    /// Records deliveries, reads and receipts sent; updates for unknown rows change nothing, but
    /// a read of a direct message stored without its recipient's row (`storeMessages`), which
    /// writes the row, from the message, then applies the read.
    func updateRecipients(_ updates: [RecipientUpdate]) throws
    /// Moves an account's read marker in a conversation (a group's key or another account's
    /// key) forward; it never moves back. Markers for unknown conversations are not kept.
    func setReadMarker(account: String, conversation: String, time: Timestamp) throws
    /// Moves an account's read position in a group forward (it never moves back): the group's
    /// messages up to `time` count as read by it, for messages whose members have no row of their
    /// own (see `storeMessages`). Unlike the read marker it moves only when the read is disclosed
    /// to authors. Unknown accounts or groups change nothing.
    func setGroupReadPosition(account: String, group: String, time: Timestamp) throws
    /// Records since when an author's receipts wait for a receipts-capable connection of theirs
    /// (nil: none wait). Group members without a row of their own count their delivered receipt
    /// for the author's messages from then on, and their read receipt for reads from then on, as
    /// not sent yet; so do recipients of direct messages without a row. Unknown accounts change
    /// nothing.
    func setReceiptsPendingSince(account: String, time: Timestamp?) throws
    func recordLastSeen(account: String, at time: Timestamp) throws
    func setAccountSettings(account: String, _ settings: [String: String]) throws
    /// Stores a group just made. If a group of that key is already stored (another node made
    /// one in the same instant), the two claims are settled as the nodes settle them: the one
    /// made first keeps or takes the row as owner, the other creator is added as a member, and
    /// nothing else of the stored group changes, so a creation that commits after the nodes
    /// rewrote the group as settled (`saveGroup`) does not undo it.
    func createGroup(_ group: GroupRecord) throws
    /// Saves a group's whole state; after a rename `previousKey` is its former key (the group
    /// keeps its id, its history and its read markers).
    func saveGroup(_ group: GroupRecord, previousKey: String?) throws
    /// Saves what `saveGroup` does but the member list (`group.members` and `voiced` are not
    /// read): a TOPIC, MODE or RENAME of a large group writes one row, not one per member.
    func saveGroupSettings(_ group: GroupRecord, previousKey: String?) throws
    /// Puts one account on a group's member list with its role and voice, replacing what it
    /// had, or takes it off (`role` nil); the other members' rows are left alone, so a join into
    /// a large group writes one row. An unknown group or account changes nothing (as members
    /// unknown to `saveGroup` are skipped). A new member counts as a recipient of the group's
    /// messages stored after this call, not before; a member who stays keeps that position (here
    /// and in `saveGroup`).
    func setGroupMember(group: String, account: String, role: ChannelRole?, voiced: Bool) throws
    /// Deletes a group with its members, bans, messages (and their recipients), read markers and
    /// read positions.
    func deleteGroup(key: String) throws
    /// Deletes messages older than `cutoff`, with their recipients' rows.
    func deleteMessages(before cutoff: Timestamp) throws
    /// Deletes one message and its recipients' rows (a redaction); no message with `id` is no error.
    func deleteMessage(id: String) throws
}

public enum StoreError: Error, Sendable, Hashable {
    case accountExists
    /// A write named an account or group the store has no id for (it was never saved, or
    /// deleted): refused rather than stored under a name.
    case unknownIdentity(String)
}
