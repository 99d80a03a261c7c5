/// A place in a conversation: a stored message (its time and its place in the store's insertion
/// order, which breaks ties between messages of the same millisecond), or an instant.
public struct HistoryPoint: Sendable, Hashable {
    public var time: Int64
    /// The message's place in storage order; nil for an instant (a `timestamp=` reference).
    public var order: Int64?

    public init(time: Int64, order: Int64?) {
        self.time = time
        self.order = order
    }
}

/// One side of a range of a conversation. A message's bound leaves that message out; an
/// instant's `after` leaves that instant out, `from` keeps it.
public enum HistoryBound: Sendable, Hashable {
    case after(HistoryPoint)
    case before(HistoryPoint)
    case from(instant: Int64)
}

/// One conversation as CHATHISTORY reads it: a storage backend, or the recent messages a
/// transient channel keeps in memory. A reader says how to find a reference and how to read a
/// range; which ranges each form reads, and how many messages, is decided once, here, for all.
public protocol ConversationReader {
    /// Where a reference is in this conversation; nil for a msgid that is not in it.
    func point(of reference: HistoryQuery.Reference) throws -> HistoryPoint?
    /// At most `limit` messages within all the bounds, the newest (or the oldest) of them,
    /// returned oldest first.
    func read(_ bounds: [HistoryBound], newestFirst: Bool, limit: Int) throws -> [StoredMessage]
    /// The message at a point that is a message.
    func message(at point: HistoryPoint) throws -> StoredMessage?
}

extension ConversationReader {
    /// The messages of a LATEST, BEFORE, AFTER, AROUND or BETWEEN request, oldest first, at most
    /// `limit` of them; nil for the other kinds (they are not reads of one conversation).
    public func messages(_ kind: HistoryQuery.Kind, limit: Int) throws -> [StoredMessage]? {
        switch kind {
        case .latest(nil):
            return try read([], newestFirst: true, limit: limit)
        case .latest(let reference?):
            guard let point = try point(of: reference) else { return [] }
            return try read([.after(point)], newestFirst: true, limit: limit)
        case .before(let reference):
            guard let point = try point(of: reference) else { return [] }
            return try read([.before(point)], newestFirst: true, limit: limit)
        case .after(let reference):
            guard let point = try point(of: reference) else { return [] }
            return try read([.after(point)], newestFirst: false, limit: limit)
        case .around(let reference):
            guard let point = try point(of: reference) else { return [] }
            // At most `limit` in all: up to half before the point, the point itself (a msgid),
            // the rest after it. A timestamp's own instant belongs to the later half (no message
            // stands for it, as one does for a msgid).
            var messages = try read([.before(point)], newestFirst: true, limit: limit / 2)
            if messages.count < limit, point.order != nil, let message = try message(at: point) {
                messages.append(message)
            }
            let later: HistoryBound = point.order == nil ? .from(instant: point.time) : .after(point)
            messages += try read([later], newestFirst: false, limit: limit - messages.count)
            return messages
        case .between(let first, let second):
            guard let start = try point(of: first), let end = try point(of: second) else { return [] }
            let ascending = start.time <= end.time
            let low = ascending ? start : end, high = ascending ? end : start
            return try read([.after(low), .before(high)], newestFirst: !ascending, limit: limit)
        case .targets, .receipts:
            return nil
        }
    }
}
