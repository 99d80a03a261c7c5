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

/// Who a conversation is between, as the message path knows it: ids where it has them, so that
/// finding a known conversation's id builds no key text (the texts of two account ids, joined in
/// byte order, cost about a tenth of a stored message's instructions, callgrind).
enum ConversationParties: Hashable {
    case group(Int64)
    /// Two accounts, the lower id first.
    case accounts(Int64, Int64)
    /// A conversation with a guest: its key.
    case other(String)

    static func direct(_ first: Int64, _ second: Int64) -> ConversationParties {
        first <= second ? .accounts(first, second) : .accounts(second, first)
    }

    var key: String {
        switch self {
        case .group(let id): ConversationKey.group(id)
        case .accounts(let first, let second): ConversationKey.direct(ConversationKey.account(first), ConversationKey.account(second))
        case .other(let key): key
        }
    }
}

/// Conversation ids as one write transaction sees them: those known when it began (the store's
/// cache), and those it looked up or created, which join the cache once it commits (a
/// rolled-back transaction's new conversations do not exist).
struct ConversationIDs {
    private let known: [ConversationParties: Int64]
    private(set) var found: [ConversationParties: Int64] = [:]

    init(known: [ConversationParties: Int64]) {
        self.known = known
    }

    /// The conversation's id, creating it (and its accounts' rows in `conversation_parties`)
    /// the first time.
    mutating func id(for parties: ConversationParties, accounts: (Int64?, Int64?), in db: Database) throws -> Int64 {
        if let id = known[parties] ?? found[parties] { return id }
        let key = parties.key
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
        found[parties] = id
        return id
    }
}
