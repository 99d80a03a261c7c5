import NIOCore

/// Direct messages from accounts that reached their recipient as they were sent (the common
/// case), followed for their read receipt and for REDACT: kept in send order and found by their
/// position in that order, not by msgid. As entries of `tracked` (a table keyed by msgid, up to
/// `maxTrackedRecipients` of them) every message at full speed inserted one entry and evicted
/// another at random places of a 200,000-entry table, about 9 % of the stored direct path
/// (bench/PROFILE.md); here both are at the ends of one buffer. They count against the same
/// bound as `tracked`, oldest forgotten first.
struct DeliveredDirectMessages: Sendable {
    struct Message: Sendable {
        let id: String
        let time: Timestamp
        let author: String
        let reader: String
        fileprivate(set) var forgotten = false
    }

    private var messages = CircularBuffer<Message>()
    /// The position of `messages.first`. Positions count every message ever appended, so a
    /// position handed out stays valid (or points before the start) as older messages go.
    private var firstPosition = 0
    /// Messages followed (forgotten ones excluded).
    private(set) var count = 0

    /// Follows a message; its position finds it again (`message(at:)`).
    mutating func append(id: String, time: Timestamp, author: String, reader: String) -> Int {
        messages.append(Message(id: id, time: time, author: author, reader: reader))
        count += 1
        return firstPosition + messages.count - 1
    }

    /// The message at `position`, unless it has been forgotten since.
    func message(at position: Int) -> Message? {
        let offset = position - firstPosition
        guard offset >= 0, offset < messages.count else { return nil }
        let message = messages[offset: offset]
        return message.forgotten ? nil : message
    }

    /// The oldest message followed (forgotten ones never stay at the front).
    var oldest: Message? { messages.first }

    mutating func forgetOldest() {
        guard messages.popFirst() != nil else { return }
        firstPosition += 1
        count -= 1
        dropForgottenAtFront()
    }

    /// The followed message with this id, looked for from the newest (REDACT and failed
    /// commits are about recent messages; they are rare).
    func find(_ id: String) -> Message? {
        messages.reversed().first { !$0.forgotten && $0.id == id }
    }

    /// Forgets the message with this id; returns it if it was followed.
    @discardableResult
    mutating func forget(_ id: String) -> Message? {
        guard let index = messages.indices.reversed().first(where: { !messages[$0].forgotten && messages[$0].id == id }) else { return nil }
        let message = messages[index]
        messages[index].forgotten = true
        count -= 1
        dropForgottenAtFront()
        return message
    }

    /// Forgets the messages sent before `cutoff` (the retention period).
    mutating func forget(before cutoff: Timestamp) {
        for index in messages.indices where !messages[index].forgotten && messages[index].time < cutoff {
            messages[index].forgotten = true
            count -= 1
        }
        dropForgottenAtFront()
    }

    private mutating func dropForgottenAtFront() {
        while let first = messages.first, first.forgotten {
            _ = messages.popFirst()
            firstPosition += 1
        }
    }
}
