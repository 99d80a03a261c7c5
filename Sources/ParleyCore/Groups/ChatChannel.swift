import IRCWire

/// What a user may do in a channel, from least to most. Owners (`~`, mode q) of a group manage
/// its member list; operators (`@`) help with the topic, voice and bans. Voice (`+`, mode v) is
/// not a rank but a mark kept beside it (a member can be an operator and voiced, shown `@+` with
/// multi-prefix); the raw values are stored, and 1 was the old voice rank.
public enum ChannelRole: Int, Sendable, Comparable, CaseIterable {
    case member = 0, op = 2, owner = 3

    public static func < (lhs: ChannelRole, rhs: ChannelRole) -> Bool { lhs.rawValue < rhs.rawValue }

    var prefix: String {
        switch self {
        case .member: ""
        case .op: "@"
        case .owner: "~"
        }
    }

    /// Every prefix this role implies, highest first (for multi-prefix: an owner is shown `~@`).
    var allPrefixes: String {
        switch self {
        case .member: ""
        case .op: "@"
        case .owner: "~@"
        }
    }

    /// The prefixes shown before a nick in NAMES and WHO: the highest only, or (multi-prefix)
    /// all of them in order of rank.
    func prefixes(voiced: Bool, all: Bool) -> String {
        if all { return allPrefixes + (voiced ? "+" : "") }
        return self == .member && voiced ? "+" : prefix
    }
}

public struct BanEntry: Sendable, Hashable {
    public var mask: String
    public var setBy: String
    public var setAt: Timestamp

    public init(mask: String, setBy: String, setAt: Timestamp) {
        self.mask = mask
        self.setBy = setBy
        self.setAt = setAt
    }
}

/// The stored form of a persistent group: everything that must survive a restart.
public struct GroupRecord: Sendable, Hashable {
    public var name: String
    /// The case-folded name, the group's key.
    public var key: String
    public var createdAt: Timestamp
    /// Account key of the owner.
    public var owner: String
    public var topic: String
    public var topicSetBy: String
    public var topicSetAt: Timestamp?
    /// Flag modes, e.g. "int".
    public var modes: String
    public var password: String?
    public var userLimit: Int?
    public var bans: [BanEntry]
    /// Account key -> role, the owner included.
    public var members: [String: ChannelRole]
    /// Account keys of the members with voice (+v), whatever their role.
    public var voiced: Set<String>

    public init(name: String, key: String, createdAt: Timestamp, owner: String, topic: String = "", topicSetBy: String = "",
                topicSetAt: Timestamp? = nil, modes: String = "int", password: String? = nil, userLimit: Int? = nil,
                bans: [BanEntry] = [], members: [String: ChannelRole], voiced: Set<String> = []) {
        self.name = name
        self.key = key
        self.createdAt = createdAt
        self.owner = owner
        self.topic = topic
        self.topicSetBy = topicSetBy
        self.topicSetAt = topicSetAt
        self.modes = modes
        self.password = password
        self.userLimit = userLimit
        self.bans = bans
        self.members = members
        self.voiced = voiced
    }
}

/// One channel in memory. A channel with an owner account is a persistent group: its member
/// list is kept by account, survives disconnects and restarts, and members' connections are
/// joined automatically. A channel without one is an ordinary transient IRC channel.
struct ChatChannel: Sendable {
    var name: String
    var key: String
    var createdAt: Timestamp
    var owner: String?
    var topic = ""
    var topicSetBy = ""
    var topicSetAt: Timestamp?
    var inviteOnly = false
    var topicProtected = true
    var noOutsideMessages = true
    var moderated = false
    /// +s: outsiders see nothing of it (LIST, NAMES, WHOIS), as for an invite-only channel.
    var secret = false
    var password: String?
    var userLimit: Int?
    var bans: [BanEntry] = []
    /// +e and +I entries (ban exceptions, invite exceptions), same mask forms as bans. Only
    /// transient channels have them: a group admits by its member list, which INVITE edits.
    var banExceptions: [BanEntry] = []
    var inviteExceptions: [BanEntry] = []
    /// +C: no CTCP but ACTION (`/me`).
    var noCTCP = false
    /// Persistent membership: account key -> role.
    var accountRoles: [String: ChannelRole] = [:]
    /// Persistent voice (+v) of member accounts, kept apart from their role.
    var voicedAccounts: Set<String> = []
    /// Roles of connections without an account (guests) in this channel.
    var guestRoles: [ConnectionID: ChannelRole] = [:]
    /// Guests' connections with voice in this channel.
    var voicedGuests: Set<ConnectionID> = []
    /// Connections currently in the channel, in the order they joined (NAMES, WHO and fan-out
    /// walk it); `joinedSet` holds the same connections for membership checks, which a JOIN
    /// into a large channel makes several of. Changed only through `add` and `remove`.
    private(set) var joined: [ConnectionID] = []
    private(set) var joinedSet: Set<ConnectionID> = []
    /// The sessions of `joined`, in the same order: fan-out and NAMES read each member's nick
    /// and capabilities here instead of looking its session up by id (two hash lookups per
    /// member per JOIN).
    private(set) var joinedSessions: [Session] = []
    /// Nicks invited into a transient invite-only channel (case-folded), used up by JOIN.
    var invitedNicks: Set<String> = []
    /// A transient channel's last messages, in memory only (a group's history is stored).
    var recentHistory = RecentChannelHistory()
    /// IRCv3 metadata set by the channel's operators (key -> value); in memory only.
    var metadata: [String: String] = [:]

    var isGroup: Bool { owner != nil }

    init(name: String, key: String, createdAt: Timestamp) {
        self.name = name
        self.key = key
        self.createdAt = createdAt
    }

    init(record: GroupRecord) {
        name = record.name
        key = record.key
        createdAt = record.createdAt
        owner = record.owner
        topic = record.topic
        topicSetBy = record.topicSetBy
        topicSetAt = record.topicSetAt
        inviteOnly = record.modes.contains("i")
        topicProtected = record.modes.contains("t")
        noOutsideMessages = record.modes.contains("n")
        moderated = record.modes.contains("m")
        secret = record.modes.contains("s")
        noCTCP = record.modes.contains("C")
        password = record.password
        userLimit = record.userLimit
        bans = record.bans
        accountRoles = record.members
        accountRoles[record.owner] = .owner
        voicedAccounts = record.voiced.filter { record.members[$0] != nil }
    }

    var record: GroupRecord? {
        guard let owner else { return nil }
        return GroupRecord(
            name: name, key: key, createdAt: createdAt, owner: owner, topic: topic, topicSetBy: topicSetBy,
            topicSetAt: topicSetAt, modes: flagModes, password: password, userLimit: userLimit, bans: bans,
            members: accountRoles, voiced: voicedAccounts)
    }

    /// `record` without the member list, for saving what a TOPIC, MODE or RENAME changed.
    var settingsRecord: GroupRecord? {
        guard let owner else { return nil }
        return GroupRecord(
            name: name, key: key, createdAt: createdAt, owner: owner, topic: topic, topicSetBy: topicSetBy,
            topicSetAt: topicSetAt, modes: flagModes, password: password, userLimit: userLimit, bans: bans, members: [:])
    }

    var flagModes: String {
        var modes = ""
        if noCTCP { modes.append("C") }
        if inviteOnly { modes.append("i") }
        if moderated { modes.append("m") }
        if noOutsideMessages { modes.append("n") }
        if secret { modes.append("s") }
        if topicProtected { modes.append("t") }
        return modes
    }

    func role(of connection: ConnectionID, account: String?) -> ChannelRole {
        if let account, let role = accountRoles[account] { return role }
        return guestRoles[connection] ?? .member
    }

    func isVoiced(_ connection: ConnectionID, account: String?) -> Bool {
        if let account, accountRoles[account] != nil { return voicedAccounts.contains(account) }
        return voicedGuests.contains(connection)
    }

    /// The prefixes shown before this connection's nick in NAMES and WHO.
    func prefixes(of connection: ConnectionID, account: String?, all: Bool) -> String {
        role(of: connection, account: account).prefixes(voiced: isVoiced(connection, account: account), all: all)
    }

    /// Whether the connection may speak in a moderated channel, or despite a ban: voiced or an operator.
    func maySpeakAsPrivileged(_ connection: ConnectionID, account: String?) -> Bool {
        role(of: connection, account: account) >= .op || isVoiced(connection, account: account)
    }

    func contains(_ connection: ConnectionID) -> Bool { joinedSet.contains(connection) }

    /// Puts a connection in the channel (after those already in it); false if it was in.
    @discardableResult
    mutating func add(_ session: Session) -> Bool {
        guard joinedSet.insert(session.id).inserted else { return false }
        joined.append(session.id)
        joinedSessions.append(session)
        return true
    }

    /// Takes connections out of the channel.
    mutating func remove(_ connections: [ConnectionID]) {
        // Found by a scan of plain integers, not by a set lookup per member.
        for connection in connections where joinedSet.remove(connection) != nil {
            if let index = joined.firstIndex(of: connection) {
                joined.remove(at: index)
                joinedSessions.remove(at: index)
            }
        }
    }
}
