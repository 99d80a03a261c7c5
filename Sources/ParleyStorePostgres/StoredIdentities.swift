import ParleyCore

/// The stable ids behind the domain's keys, as in the SQLite store (a copy: each backend owns
/// its mapping, and the two may diverge once nodes share a database). Rows refer to accounts and
/// groups by integer id; the domain names them by key (an account's folded name, never reused;
/// a group's folded name, which a rename changes and a deletion frees). This map translates at
/// the store's edge, so a deleted group's rows can never be reached through a new group of the
/// same name, and a rename moves no rows.
struct StoredIdentities: Sendable {
    private(set) var accountIDs: [String: Int64] = [:]
    private(set) var accountKeys: [Int64: String] = [:]
    private(set) var groupIDs: [String: Int64] = [:]
    private(set) var groupKeys: [Int64: String] = [:]

    mutating func addAccount(key: String, id: Int64) {
        accountIDs[key] = id
        accountKeys[id] = key
    }

    mutating func setGroup(key: String, id: Int64) {
        if let oldKey = groupKeys[id], oldKey != key { groupIDs[oldKey] = nil }
        groupIDs[key] = id
        groupKeys[id] = key
    }

    mutating func removeGroup(id: Int64) {
        if let key = groupKeys.removeValue(forKey: id) { groupIDs[key] = nil }
    }

    /// A read marker's or TARGETS row's conversation: a group (its name starts with a channel
    /// prefix) or the other person's account.
    func conversation(_ key: String) -> (kind: String, id: Int64)? {
        if key.hasPrefix("#") || key.hasPrefix("&") { return groupIDs[key].map { ("group", $0) } }
        return accountIDs[key].map { ("direct", $0) }
    }

    func conversationKey(kind: String, id: Int64) -> String? {
        kind == "group" ? groupKeys[id] : accountKeys[id]
    }

    /// A group change decided inside a transaction, applied to the shared map once it commits.
    enum Change: Sendable {
        case group(key: String, id: Int64)
        case groupRemoved(id: Int64)
    }

    mutating func apply(_ change: Change) {
        switch change {
        case .group(let key, let id): setGroup(key: key, id: id)
        case .groupRemoved(let id): removeGroup(id: id)
        }
    }
}
