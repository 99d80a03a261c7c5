import ParleyCore

/// Assembles the start-up `DeliveryState` from a backend's rows, the same way for every backend:
/// rows come one per message and recipient, in message order; messages whose every receipt is
/// done are not followed (unless kept for a node following a dead node's messages).
public struct DeliveryStateBuilder {
    private var messages: [StoredMessage] = []
    private var index: [String: Int] = [:]
    /// Where each group message was stored: its group's id and its position.
    private var groupPositions: [Int: (group: Int64, position: Int64)] = [:]
    /// Direct messages that came without a recipient row.
    private var directWithoutRows: [Int] = []
    private var receiptsPendingSince: [String: Timestamp] = [:]
    private var markers: [String: [String: Timestamp]] = [:]

    public init() {}

    /// One row: a recipient of message `id`. `message` reads the message's own columns, only for
    /// its first row; nil (or a nil recipient) skips what the store no longer knows. A group
    /// message comes with its group's id and position (`groupPosition`). A group message, or a
    /// direct message had at once, may come without a recipient row (`hasRecipientRow` false):
    /// its recipients are added by `complete(with:ids:)`.
    public mutating func add(messageID id: String, recipient: StoredRecipient?, hasRecipientRow: Bool = true,
                             groupPosition: (group: Int64, position: Int64)? = nil, message: () throws -> StoredMessage?) rethrows {
        if hasRecipientRow && recipient == nil { return }
        if let position = index[id] {
            if let recipient { messages[position].recipients.append(recipient) }
        } else if var first = try message() {
            first.recipients = recipient.map { [$0] } ?? []
            if let groupPosition {
                groupPositions[messages.count] = groupPosition
            } else if !hasRecipientRow {
                directWithoutRows.append(messages.count)
            }
            index[id] = messages.count
            messages.append(first)
        }
    }

    /// Adds the recipients who have no row (`DerivedRecipients`): group members, and the
    /// recipients of direct messages had at once.
    public mutating func complete(with derived: DerivedRecipients, ids: StoredIdentities) {
        for (offset, stored) in groupPositions {
            derived.complete(&messages[offset], group: stored.group, position: stored.position, ids: ids)
        }
        for offset in directWithoutRows { derived.completeDirect(&messages[offset]) }
        receiptsPendingSince = derived.receiptsPendingSince
    }

    public mutating func addReadMarker(account: String?, conversation: String?, time: Timestamp) {
        guard let account, let conversation else { return }
        markers[account, default: [:]][conversation] = time
    }

    /// With `keepingSettled`, messages whose every receipt counts as sent are kept too: a node
    /// following a dead node's messages decides itself which of their receipts are still due
    /// (`ChatServer.adoptFollowed`), as a group read position stored a moment ago counts as sent.
    public func build(keepingSettled: Bool = false) -> DeliveryState {
        let followed = messages.filter { message in
            !message.recipients.isEmpty && (keepingSettled || !message.recipients.allSatisfy(\.isSettled))
        }
        var undelivered: [String: [StoredMessage]] = [:]
        for message in followed {
            for recipient in message.recipients where recipient.deliveredAt == nil {
                undelivered[recipient.account, default: []].append(message)
            }
        }
        return DeliveryState(undelivered: undelivered, tracked: followed, readMarkers: markers, receiptsPendingSince: receiptsPendingSince)
    }
}
