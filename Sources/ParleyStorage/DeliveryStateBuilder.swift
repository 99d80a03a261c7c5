import ParleyCore

/// Assembles the start-up `DeliveryState` from a backend's rows, the same way for every backend:
/// rows come one per message and recipient, in message order; messages whose every receipt is
/// done are not followed.
public struct DeliveryStateBuilder {
    private var messages: [StoredMessage] = []
    private var index: [String: Int] = [:]
    private var markers: [String: [String: Timestamp]] = [:]

    public init() {}

    /// One row: a recipient of message `id`. `message` reads the message's own columns, only for
    /// its first row; nil (or a nil recipient) skips what the store no longer knows.
    public mutating func add(messageID id: String, recipient: StoredRecipient?, message: () throws -> StoredMessage?) rethrows {
        guard let recipient else { return }
        if let position = index[id] {
            messages[position].recipients.append(recipient)
        } else if var first = try message() {
            first.recipients = [recipient]
            index[id] = messages.count
            messages.append(first)
        }
    }

    public mutating func addReadMarker(account: String?, conversation: String?, time: Timestamp) {
        guard let account, let conversation else { return }
        markers[account, default: [:]][conversation] = time
    }

    public func build() -> DeliveryState {
        let followed = messages.filter { message in
            !message.recipients.allSatisfy { $0.deliveredAt != nil && $0.readAt != nil && $0.deliveredNotified && $0.readNotified }
        }
        var undelivered: [String: [StoredMessage]] = [:]
        for message in followed {
            for recipient in message.recipients where recipient.deliveredAt == nil {
                undelivered[recipient.account, default: []].append(message)
            }
        }
        return DeliveryState(undelivered: undelivered, tracked: followed, readMarkers: markers)
    }
}
