import Logging
import ParleyCore
import ParleyStorage
import PostgresNIO

/// CHATHISTORY queries, with the same limits and order as the SQLite store: messages of one
/// conversation ordered by time, ties broken by insertion order (`position`).
struct PostgresHistory {
    let connection: PostgresConnection
    let ids: StoredIdentities
    let logger: Logger

    func run(_ query: HistoryQuery) throws -> HistoryResult {
        // The conversation as a WHERE clause over messages.
        var scope: String
        var scopeValues: [SQLValue] = []
        switch query.conversation {
        case .group(let key):
            guard let group = ids.groupIDs[key] else { return .messages([]) }
            scope = "conversation = ?"
            scopeValues = [.text(ConversationKey.group(group))]
        case .direct(let me, let other):
            guard let myID = ids.accountIDs[me] else { return .messages([]) }
            // A guest by the identity of that guest's connection, never by its nick.
            let otherParty = ids.accountIDs[other].map(ConversationKey.account) ?? other
            scope = "conversation = ?"
            scopeValues = [.text(ConversationKey.direct(ConversationKey.account(myID), otherParty))]
        case .everything(let account, let groups):
            guard let myID = ids.accountIDs[account] else {
                if case .targets = query.kind { return .targets([]) }
                return .messages([])
            }
            let groupKeys = groups.compactMap { ids.groupIDs[$0] }.map(ConversationKey.group)
            let placeholders = groupKeys.map { _ in "?" }.joined(separator: ",")
            scope = "(conversation IN (SELECT conversation FROM conversation_parties WHERE account_id = ?)"
                + (groupKeys.isEmpty ? ")" : " OR conversation IN (\(placeholders)))")
            scopeValues = [.int(myID)] + groupKeys.map { .text($0) }
        }
        if !query.includesEvents { scope = "(\(scope)) AND command <> 'TAGMSG'" }

        func rows(_ sql: String, _ values: [SQLValue]) throws -> [PostgresRandomAccessRow] {
            try connection.run(sql, values, logger: logger).map { $0.makeRandomAccess() }
        }
        let conversation = Conversation(connection: connection, scope: scope, scopeValues: scopeValues, ids: ids, logger: logger)
        if let messages = try conversation.messages(query.kind, limit: query.limit) { return .messages(messages) }
        switch query.kind {
        case .latest, .before, .after, .around, .between:
            return .messages([])  // read above
        case .receipts(let messageIDs):
            guard case .everything(let account, _) = query.conversation, let myID = ids.accountIDs[account], !messageIDs.isEmpty else { return .messages([]) }
            let placeholders = messageIDs.map { _ in "?" }.joined(separator: ",")
            let found = try rows(
                "SELECT * FROM messages WHERE sender_id = ? AND id IN (\(placeholders)) LIMIT ?",
                [.int(myID)] + messageIDs.map { .text($0) } + [.int(query.limit)])
            var derived = DerivedRecipients()
            let groupIDs = Set(try found.compactMap { row -> Int64? in try (row["target_kind"] as String) == "group" ? row["target_id"] : nil })
            for group in groupIDs {
                for row in try rows("SELECT account_id, since FROM group_members WHERE group_id = ?", [.int(group)]) {
                    derived.addMember(group: group, account: ids.accountKeys[try row["account_id"]], since: try row["since"])
                }
                for row in try rows("SELECT account_id, read_until FROM group_read_positions WHERE group_id = ?", [.int(group)]) {
                    derived.addReadPosition(group: group, account: ids.accountKeys[try row["account_id"]],
                                           time: Timestamp(millisecondsSince1970: try row["read_until"]))
                }
            }
            if !found.isEmpty {
                for row in try rows("SELECT receipts_pending_since FROM accounts WHERE id = ? AND receipts_pending_since IS NOT NULL", [.int(myID)]) {
                    derived.addReceiptsPendingSince(account: account, time: Timestamp(millisecondsSince1970: try row["receipts_pending_since"]))
                }
            }
            var messages: [StoredMessage] = []
            for row in found {
                guard var message = try PostgresChatStore.message(from: row, ids: ids) else { continue }
                message.recipients = try rows(
                    "SELECT * FROM message_recipients WHERE message_id = ? ORDER BY recipient_id", [.text(message.id)]
                ).compactMap { try PostgresChatStore.recipient(from: $0, ids: ids) }
                if message.targetKind == .group, let group: Int64 = try row["target_id"] {
                    derived.complete(&message, group: group, position: try row["position"], ids: ids)
                }
                derived.completeDirect(&message)
                messages.append(message)
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
                let key = ids.party(try row["other"])
                let kind: String = try row["target_kind"]
                let latest: Int64 = try row["latest"]
                return key.map { HistoryTarget(isGroup: kind == "group", key: $0, latest: Timestamp(millisecondsSince1970: latest)) }
            })
        }
    }
}

extension PostgresHistory {
    /// One conversation (a WHERE clause over messages) for `ConversationReader`'s CHATHISTORY
    /// forms; `position` orders messages of the same millisecond.
    struct Conversation: ConversationReader {
        let connection: PostgresConnection
        let scope: String
        let scopeValues: [SQLValue]
        let ids: StoredIdentities
        let logger: Logger

        private func rows(_ sql: String, _ values: [SQLValue]) throws -> [PostgresRandomAccessRow] {
            try connection.run(sql, values, logger: logger).map { $0.makeRandomAccess() }
        }

        func point(of reference: HistoryQuery.Reference) throws -> HistoryPoint? {
            switch reference {
            case .timestamp(let time):
                return HistoryPoint(time: time.millisecondsSince1970, order: nil)
            case .msgid(let id):
                guard let row = try rows("SELECT time, position FROM messages WHERE id = ? AND " + scope, [.text(id)] + scopeValues).first else { return nil }
                return HistoryPoint(time: try row["time"], order: try row["position"])
            }
        }

        func read(_ bounds: [HistoryBound], newestFirst: Bool, limit: Int) throws -> [StoredMessage] {
            guard limit > 0 else { return [] }
            var sql = "SELECT * FROM messages WHERE \(scope)"
            var values = scopeValues
            for bound in bounds {
                let condition = bound.sqlCondition(orderColumn: "position")
                sql += " AND " + condition.sql
                values += condition.values.map { .int($0) }
            }
            let order = newestFirst ? "DESC" : "ASC"
            sql += " ORDER BY time \(order), position \(order) LIMIT ?"
            let messages = try rows(sql, values + [.int(limit)]).compactMap { try PostgresChatStore.message(from: $0, ids: ids) }
            return newestFirst ? messages.reversed() : messages
        }

        func message(at point: HistoryPoint) throws -> StoredMessage? {
            guard let position = point.order, let row = try rows("SELECT * FROM messages WHERE position = ?", [.int(position)]).first else { return nil }
            return try PostgresChatStore.message(from: row, ids: ids)
        }
    }
}
