/// The last messages of a transient channel (one without an owner account), kept in memory only
/// while the channel exists, so that CHATHISTORY works for the people in it, guests included.
/// Nothing of it is written to disk; at most `capacity` messages and `maxBytes` bytes of them
/// (a guest may make many channels), the oldest go first.
struct RecentChannelHistory: Sendable {
    /// The kept messages: `storage` from `head` on, indexed as in `storage`.
    var messages: ArraySlice<StoredMessage> { storage[head...] }
    /// Dropped messages before `head` leave the array in bulk, once they are as many as
    /// `capacity`: removing each as it was dropped moved the whole history every time. Their
    /// slots are emptied at once (`dropped`), so they hold no memory meanwhile.
    private var storage: [StoredMessage] = []
    private var head = 0
    private static let dropped = StoredMessage(id: "", time: Timestamp(millisecondsSince1970: 0), senderNick: "", senderAccount: nil,
                                               senderPrefix: "", targetKind: .group, target: "", command: "", text: "")
    /// What `messages` hold, as counted by `size(of:)`.
    private(set) var bytes = 0
    /// The order number of `storage[0]`: orders keep counting up as old messages are dropped,
    /// so a point taken from a message stays valid.
    private var firstOrder: Int64 = 0
    /// Ids of redacted messages still in `messages`: they keep their place, so the order numbers
    /// of the others stay valid, but no reader sees them again.
    private(set) var redacted: Set<String> = []
    /// How many of `messages` are events.
    private var eventCount = 0

    mutating func redact(_ id: String) {
        redacted.insert(id)
    }

    /// The history as a client without draft/event-playback reads it: messages only (events are
    /// hidden like redactions, keeping everyone's order numbers).
    func hidingEvents() -> RecentChannelHistory {
        var copy = self
        for message in messages where Self.isEvent(message) { copy.redacted.insert(message.id) }
        return copy
    }

    static func size(of message: StoredMessage) -> Int {
        message.text.utf8.count + message.clientTags.utf8.count + message.senderPrefix.utf8.count + message.id.utf8.count
    }

    static func isEvent(_ message: StoredMessage) -> Bool { message.command != "PRIVMSG" && message.command != "NOTICE" }

    /// Keeps at most `capacity` messages and `capacity` events (TOPIC, TAGMSG) besides them, so
    /// that events never push out the messages of a client without draft/event-playback.
    mutating func append(_ message: StoredMessage, capacity: Int, maxBytes: Int) {
        guard capacity > 0, Self.size(of: message) <= maxBytes else { return }
        // In time order. A message decided by another node may arrive after a later one of this
        // node's (each node keeps every node's messages); on one node it is simply appended.
        var index = storage.endIndex
        while index > head && storage[index - 1].time > message.time { index -= 1 }
        // Kept once: a node that (re)joins the cluster gets the history from every node with
        // members in the channel.
        var sameTime = index
        while sameTime > head && storage[sameTime - 1].time == message.time {
            if storage[sameTime - 1].id == message.id { return }
            sameTime -= 1
        }
        storage.insert(message, at: index)
        bytes += Self.size(of: message)
        if Self.isEvent(message) { eventCount += 1 }
        while storage.count - head - eventCount > capacity || eventCount > capacity || bytes > maxBytes {
            bytes -= Self.size(of: storage[head])
            if Self.isEvent(storage[head]) { eventCount -= 1 }
            if !redacted.isEmpty { redacted.remove(storage[head].id) }
            storage[head] = Self.dropped
            head += 1
        }
        if head >= max(capacity, 1) {
            storage.removeFirst(head)
            firstOrder += Int64(head)
            head = 0
        }
    }
}

extension RecentChannelHistory: ConversationReader {
    func point(of reference: HistoryQuery.Reference) -> HistoryPoint? {
        switch reference {
        case .timestamp(let time):
            return HistoryPoint(time: time.millisecondsSince1970, order: nil)
        case .msgid(let id):
            guard let index = messages.firstIndex(where: { $0.id == id }) else { return nil }
            return HistoryPoint(time: messages[index].time.millisecondsSince1970, order: firstOrder + Int64(index))
        }
    }

    func read(_ bounds: [HistoryBound], newestFirst: Bool, limit: Int) -> [StoredMessage] {
        guard limit > 0 else { return [] }
        let within = messages.indices.filter { index in
            if !redacted.isEmpty && redacted.contains(messages[index].id) { return false }
            let time = messages[index].time.millisecondsSince1970, order = firstOrder + Int64(index)
            return bounds.allSatisfy { bound in
                switch bound {
                case .after(let point): time > point.time || (time == point.time && point.order.map { order > $0 } ?? false)
                case .before(let point): time < point.time || (time == point.time && point.order.map { order < $0 } ?? false)
                case .from(let instant): time >= instant
                }
            }
        }
        // Kept in time order (`append`), then arrival order within a millisecond.
        let chosen = newestFirst ? within.suffix(limit) : within.prefix(limit)
        return chosen.map { messages[$0] }
    }

    func message(at point: HistoryPoint) -> StoredMessage? {
        guard let order = point.order else { return nil }
        let index = Int(order - firstOrder)
        guard messages.indices.contains(index), !redacted.contains(messages[index].id) else { return nil }
        return messages[index]
    }
}
