import ParleyCore

/// The stable ids behind the domain's keys. Rows refer to accounts and groups by integer id; the
/// domain names them by key (an account's folded name, which no other account can ever take; a
/// group's folded name, which changes with a rename and is free again after the group is
/// deleted). This map translates at the store's edge, so a deleted group's rows can never be
/// reached through a new group of the same name, and a rename moves no rows. Each backend keeps
/// one, filled from its own tables.
public struct StoredIdentities: Sendable {
    public init() {}

    public private(set) var accountIDs: [String: Int64] = [:]
    public private(set) var accountKeys: [Int64: String] = [:]
    public private(set) var groupIDs: [String: Int64] = [:]
    public private(set) var groupKeys: [Int64: String] = [:]

    public mutating func addAccount(key: String, id: Int64) {
        accountIDs[key] = id
        accountKeys[id] = key
    }

    public mutating func setGroup(key: String, id: Int64) {
        if let oldKey = groupKeys[id], oldKey != key { groupIDs[oldKey] = nil }
        groupIDs[key] = id
        groupKeys[id] = key
    }

    public mutating func removeGroup(id: Int64) {
        if let key = groupKeys.removeValue(forKey: id) { groupIDs[key] = nil }
    }

    /// A read marker's or TARGETS row's conversation: a group (its name starts with a channel
    /// prefix) or the other person's account.
    public func conversation(_ key: String) -> (kind: String, id: Int64)? {
        if key.hasPrefix("#") || key.hasPrefix("&") { return groupIDs[key].map { ("group", $0) } }
        return accountIDs[key].map { ("direct", $0) }
    }

    /// The other party of a CHATHISTORY TARGETS row, which both backends write as one text value:
    /// `g<id>` a group, `a<id>` an account, anything else a guest's identity (they start with `!`).
    public func party(_ other: String) -> String? {
        if other.hasPrefix("g"), let id = Int64(other.dropFirst()) { return groupKeys[id] }
        if other.hasPrefix("a"), let id = Int64(other.dropFirst()) { return accountKeys[id] }
        return other
    }

    public func conversationKey(kind: String, id: Int64) -> String? {
        kind == "group" ? groupKeys[id] : accountKeys[id]
    }

    /// A group change decided inside a transaction, applied to the shared map once it commits.
    public enum Change: Sendable {
        case group(key: String, id: Int64)
        case groupRemoved(id: Int64)
    }

    public mutating func apply(_ change: Change) {
        switch change {
        case .group(let key, let id): setGroup(key: key, id: id)
        case .groupRemoved(let id): removeGroup(id: id)
        }
    }
}
