import GRDB
import ParleyStorage

extension ConversationKey {
    /// The same key computed from a `messages` row (for the migration that added the column).
    static let sql = """
        (CASE WHEN target_kind = 'group' THEN 'g' || target_id
              ELSE min(COALESCE('a' || sender_id, sender_guest), COALESCE('a' || target_id, target_guest)) || ' ' ||
                   max(COALESCE('a' || sender_id, sender_guest), COALESCE('a' || target_id, target_guest)) END)
        """
}

/// Conversation ids by key as one write transaction sees them: those known when it began (the
/// store's cache), and those it looked up or created, which join the cache once it commits
/// (a rolled-back transaction's new conversations do not exist).
struct ConversationIDs {
    private let known: [String: Int64]
    private(set) var found: [String: Int64] = [:]

    init(known: [String: Int64]) {
        self.known = known
    }

    /// The conversation's id, creating it (and its accounts' rows in `conversation_parties`)
    /// the first time.
    mutating func id(for key: String, accounts: (Int64?, Int64?), in db: Database) throws -> Int64 {
        if let id = known[key] ?? found[key] { return id }
        let id: Int64
        if let existing = try Int64.fetchOne(db.cachedStatement(sql: "SELECT id FROM conversations WHERE key = ?"), arguments: [key]) {
            id = existing
        } else {
            try db.cachedStatement(sql: "INSERT INTO conversations (key) VALUES (?)").execute(arguments: [key])
            id = db.lastInsertedRowID
            let party = try db.cachedStatement(sql: "INSERT OR IGNORE INTO conversation_parties (account_id, conversation_id) VALUES (?, ?)")
            for account in [accounts.0, accounts.1].compactMap({ $0 }) {
                try party.execute(arguments: [account, id])
            }
        }
        found[key] = id
        return id
    }
}
