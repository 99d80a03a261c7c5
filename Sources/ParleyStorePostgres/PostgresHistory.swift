import Logging
import ParleyCore
import PostgresNIO

/// CHATHISTORY queries, with the same limits and order as the SQLite store: messages of one
/// conversation ordered by time, ties broken by insertion order (`position`).
struct PostgresHistory {
    let connection: PostgresConnection
    let ids: StoredIdentities
    let logger: Logger

    /// A point in a conversation: a time, and for a msgid reference that message's position
    /// (which the reference itself excludes).
    private typealias Point = (time: Int64, position: Int64?)

    func run(_ query: HistoryQuery) throws -> HistoryResult {
        // The conversation as a WHERE clause over messages.
        let scope: String
        var scopeValues: [SQLValue] = []
        switch query.conversation {
        case .group(let key):
            guard let group = ids.groupIDs[key] else { return .messages([]) }
            scope = "target_kind = 'group' AND target_id = ?"
            scopeValues = [.int(group)]
        case .direct(let me, let other):
            guard let myID = ids.accountIDs[me] else { return .messages([]) }
            if let otherID = ids.accountIDs[other] {
                scope = "target_kind = 'direct' AND ((sender_id = ? AND target_id = ?) OR (sender_id = ? AND target_id = ?))"
                scopeValues = [.int(myID), .int(otherID), .int(otherID), .int(myID)]
            } else {
                // A guest: by the identity of that guest's connection, never by its nick.
                scope = "target_kind = 'direct' AND ((sender_id = ? AND target_guest = ?) OR (sender_guest = ? AND target_id = ?))"
                scopeValues = [.int(myID), .text(other), .text(other), .int(myID)]
            }
        case .everything(let account, let groups):
            guard let myID = ids.accountIDs[account] else {
                if case .targets = query.kind { return .targets([]) }
                return .messages([])
            }
            let groupIDs = groups.compactMap { ids.groupIDs[$0] }
            let placeholders = groupIDs.map { _ in "?" }.joined(separator: ",")
            scope = "((target_kind = 'direct' AND (sender_id = ? OR target_id = ?))"
                + (groupIDs.isEmpty ? ")" : " OR (target_kind = 'group' AND target_id IN (\(placeholders))))")
            scopeValues = [.int(myID), .int(myID)] + groupIDs.map { .int($0) }
        }

        func rows(_ sql: String, _ values: [SQLValue]) throws -> [PostgresRandomAccessRow] {
            try connection.run(sql, values, logger: logger).map { $0.makeRandomAccess() }
        }
        func point(of reference: HistoryQuery.Reference) throws -> Point? {
            switch reference {
            case .timestamp(let time):
                return (time.millisecondsSince1970, nil)
            case .msgid(let id):
                guard let row = try rows("SELECT time, position FROM messages WHERE id = ? AND " + scope, [.text(id)] + scopeValues).first else { return nil }
                return (try row["time"], try row["position"])
            }
        }
        func fetch(_ condition: String, _ values: [SQLValue], newestFirst: Bool, limit: Int) throws -> [StoredMessage] {
            guard limit > 0 else { return [] }
            let order = newestFirst ? "DESC" : "ASC"
            let messages = try rows(
                "SELECT * FROM messages WHERE \(scope) AND \(condition) ORDER BY time \(order), position \(order) LIMIT ?",
                scopeValues + values + [.int(limit)]
            ).compactMap { try PostgresChatStore.message(from: $0, ids: ids) }
            return newestFirst ? messages.reversed() : messages
        }
        // A msgid reference excludes that message itself; a timestamp excludes that instant.
        func before(_ point: Point) -> (String, [SQLValue]) {
            if let position = point.position { return ("(time < ? OR (time = ? AND position < ?))", [.int(point.time), .int(point.time), .int(position)]) }
            return ("time < ?", [.int(point.time)])
        }
        func after(_ point: Point) -> (String, [SQLValue]) {
            if let position = point.position { return ("(time > ? OR (time = ? AND position > ?))", [.int(point.time), .int(point.time), .int(position)]) }
            return ("time > ?", [.int(point.time)])
        }

        switch query.kind {
        case .latest(let reference):
            if let reference {
                guard let point = try point(of: reference) else { return .messages([]) }
                let (condition, values) = after(point)
                return .messages(try fetch(condition, values, newestFirst: true, limit: query.limit))
            }
            return .messages(try fetch("TRUE", [], newestFirst: true, limit: query.limit))
        case .before(let reference):
            guard let point = try point(of: reference) else { return .messages([]) }
            let (condition, values) = before(point)
            return .messages(try fetch(condition, values, newestFirst: true, limit: query.limit))
        case .after(let reference):
            guard let point = try point(of: reference) else { return .messages([]) }
            let (condition, values) = after(point)
            return .messages(try fetch(condition, values, newestFirst: false, limit: query.limit))
        case .around(let reference):
            guard let point = try point(of: reference) else { return .messages([]) }
            // A timestamp's own instant belongs to the later half (there is no message to stand
            // for it, as there is for a msgid).
            let earlier = before(point)
            let later = point.position == nil ? ("time >= ?", [SQLValue.int(point.time)]) : after(point)
            // At most `limit` in all: up to half before the point, the point itself (a msgid),
            // the rest after it.
            var messages = try fetch(earlier.0, earlier.1, newestFirst: true, limit: query.limit / 2)
            if messages.count < query.limit, let position = point.position,
               let row = try rows("SELECT * FROM messages WHERE position = ?", [.int(position)]).first,
               let message = try PostgresChatStore.message(from: row, ids: ids) {
                messages.append(message)
            }
            messages += try fetch(later.0, later.1, newestFirst: false, limit: query.limit - messages.count)
            return .messages(messages)
        case .between(let first, let second):
            guard let start = try point(of: first), let end = try point(of: second) else { return .messages([]) }
            let ascending = start.time <= end.time
            let low = ascending ? start : end, high = ascending ? end : start
            let lower = after(low), upper = before(high)
            return .messages(try fetch("\(lower.0) AND \(upper.0)", lower.1 + upper.1, newestFirst: !ascending, limit: query.limit))
        case .receipts(let messageIDs):
            guard case .everything(let account, _) = query.conversation, let myID = ids.accountIDs[account], !messageIDs.isEmpty else { return .messages([]) }
            let placeholders = messageIDs.map { _ in "?" }.joined(separator: ",")
            var messages = try rows(
                "SELECT * FROM messages WHERE sender_id = ? AND id IN (\(placeholders)) LIMIT ?",
                [.int(myID)] + messageIDs.map { .text($0) } + [.int(query.limit)]
            ).compactMap { try PostgresChatStore.message(from: $0, ids: ids) }
            for index in messages.indices {
                messages[index].recipients = try rows(
                    "SELECT * FROM message_recipients WHERE message_id = ? ORDER BY recipient_id", [.text(messages[index].id)]
                ).compactMap { try PostgresChatStore.recipient(from: $0, ids: ids) }
            }
            return .messages(messages)
        case .targets(let from, let to):
            guard case .everything(let account, _) = query.conversation, let myID = ids.accountIDs[account] else { return .targets([]) }
            // The other party as one text value: 'g<id>' a group, 'a<id>' an account, or a guest's identity.
            let found = try rows("""
                SELECT target_kind,
                       CASE WHEN target_kind = 'group' THEN 'g' || target_id
                            WHEN sender_id = ? THEN COALESCE('a' || target_id, target_guest)
                            ELSE COALESCE('a' || sender_id, sender_guest) END AS other,
                       MAX(time) AS latest
                FROM messages WHERE \(scope) AND time >= ? AND time <= ?
                GROUP BY target_kind, other ORDER BY latest ASC LIMIT ?
                """, [.int(myID)] + scopeValues + [.int(from.millisecondsSince1970), .int(to.millisecondsSince1970), .int(query.limit)])
            return .targets(try found.compactMap { row in
                let other: String = try row["other"]
                let key: String?
                if other.hasPrefix("g"), let id = Int64(other.dropFirst()) {
                    key = ids.groupKeys[id]
                } else if other.hasPrefix("a"), let id = Int64(other.dropFirst()) {
                    key = ids.accountKeys[id]
                } else {
                    key = other
                }
                let kind: String = try row["target_kind"]
                let latest: Int64 = try row["latest"]
                return key.map { HistoryTarget(isGroup: kind == "group", key: $0, latest: Timestamp(millisecondsSince1970: latest)) }
            })
        }
    }
}
