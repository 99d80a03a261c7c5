import ParleyCore

/// What a backend reads to give back the recipients who have no row of their own
/// (`StorageTransaction.storeMessages`), the same way for every backend: the members of groups
/// and their read positions (one stored row per group message instead of one per member), and
/// the authors whose receipts wait (for group members and for the recipient of a direct message
/// who had it as it was sent).
public struct DerivedRecipients: Sendable {
    struct Member: Sendable {
        var account: String
        /// The message position (SQLite's rowid, PostgreSQL's `position`) the member joined
        /// after: messages stored later are theirs.
        var since: Int64
    }

    private var members: [Int64: [Member]] = [:]
    /// Read positions by group id, then account key.
    private var readUntil: [Int64: [String: Timestamp]] = [:]
    /// Authors whose receipts wait, by account key: since when.
    public private(set) var receiptsPendingSince: [String: Timestamp] = [:]

    public init() {}

    /// One `group_members` row; unknown accounts (nil) are skipped.
    public mutating func addMember(group: Int64, account: String?, since: Int64) {
        guard let account else { return }
        members[group, default: []].append(Member(account: account, since: since))
    }

    /// One `group_read_positions` row.
    public mutating func addReadPosition(group: Int64, account: String?, time: Timestamp) {
        guard let account else { return }
        readUntil[group, default: [:]][account] = time
    }

    /// An author whose receipts wait for a receipts-capable connection since `time`.
    public mutating func addReceiptsPendingSince(account: String?, time: Timestamp) {
        guard let account else { return }
        receiptsPendingSince[account] = time
    }

    /// How many members a group has (an upper bound of a message's derived recipients).
    public func memberCount(group: Int64) -> Int { members[group]?.count ?? 0 }

    /// Adds to a group message (stored at `position` in group `group`) the members who have no row
    /// for it: members since before it, other than its author. They had it when it was sent and
    /// it is read once their read position reaches its time. Their receipts count as sent unless
    /// the author's receipts have waited since before they happened.
    /// Recipients come back ordered by account id, as rows are read.
    public func complete(_ message: inout StoredMessage, group: Int64, position: Int64, ids: StoredIdentities) {
        guard message.targetKind == .group, let members = members[group] else { return }
        let explicit = Set(message.recipients.map(\.account))
        let positions = readUntil[group] ?? [:]
        let waitingSince = message.senderAccount.flatMap { receiptsPendingSince[$0] }
        let deliveredNotified = waitingSince.map { message.time < $0 } ?? true
        for member in members where member.since < position && member.account != message.senderAccount && !explicit.contains(member.account) {
            let read = positions[member.account].flatMap { $0 >= message.time ? $0 : nil }
            // A read's own time is not kept, only how far it reached: a read reaching past the
            // time receipts began to wait counts as waiting.
            let readNotified = read.map { read in waitingSince.map { read < $0 } ?? true } ?? false
            message.recipients.append(StoredRecipient(
                account: member.account, deliveredAt: message.time, readAt: read, deliveredNotified: deliveredNotified, readNotified: readNotified))
        }
        message.recipients.sort { (ids.accountIDs[$0.account] ?? .max) < (ids.accountIDs[$1.account] ?? .max) }
    }

    /// Adds to a direct message stored without a recipient row its recipient, the account it
    /// was sent to (`needsNoRow`): delivered at its time, not read (a read writes the row), its
    /// delivered receipt counted as sent unless the author's receipts have waited since before.
    public func completeDirect(_ message: inout StoredMessage) {
        // A guest's identity starts with "!", never an account key: a guest has no receipts.
        guard message.targetKind == .direct, message.recipients.isEmpty, message.command != "TAGMSG", !message.target.hasPrefix("!") else { return }
        let waitingSince = message.senderAccount.flatMap { receiptsPendingSince[$0] }
        message.recipients = [StoredRecipient(
            account: message.target, deliveredAt: message.time, deliveredNotified: waitingSince.map { message.time < $0 } ?? true)]
    }

    /// Whether a recipient's whole state follows from the message, membership and read
    /// positions, so that it needs no row: it had the message as it was sent and has not read it,
    /// as a member of the group or as the account a direct message (not a TAGMSG) was sent to.
    public static func needsNoRow(_ recipient: StoredRecipient, of message: StoredMessage) -> Bool {
        guard recipient.deliveredAt == message.time, recipient.readAt == nil else { return false }
        switch message.targetKind {
        case .group: return true
        case .direct: return message.command != "TAGMSG" && recipient.account == message.target
        }
    }

    /// The direct messages, over `messages m`, that have a recipient with or without a row: those
    /// to an account (not a guest), but TAGMSG. Row or not, each has exactly that one recipient;
    /// a backend writes a missing row, as `completeDirect` gives it, before applying a read.
    public static let directWithRecipientSQL = "(m.target_kind = 'direct' AND m.target_id IS NOT NULL AND m.command <> 'TAGMSG')"
}
