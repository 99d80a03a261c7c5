import IRCWire

/// Everything the server knows about one connection. Owned by `ChatServer`.
///
/// A class, not a struct: the message path reads a session several times per message, and
/// copying a struct of this size cost a retain and release per field each time (about a fifth
/// of the server's time in a profile). It is only ever touched by the owner of the
/// `ChatServer` holding it (one lock in the server), hence `@unchecked Sendable`.
final class Session: @unchecked Sendable {
    // Stored properties are ordered so that they pack without padding (the small ones last):
    // with 10,000 idle guests every byte of a session is 10 KB (issue 16).
    let id: ConnectionID
    /// The address shown in the user's hostmask (IPv4-mapped IPv6 already normalised).
    let host: String
    let connectedAt: Timestamp
    var lastActivity: Timestamp
    var capabilities = CapabilitySet()
    var nick: Nickname? { didSet { madePrefix = nil } }
    var username: String? { didSet { madePrefix = nil } }
    /// `prefix` once made; nil until something needs it.
    private var madePrefix: String?
    var realname = ""
    /// Commands that arrived while a password check was in flight, oldest first: they run after
    /// it, so every reply to a command comes before any reply to a later one.
    var heldCommands: [HeldCommand] = []
    /// Keys of the channels this connection is in.
    var channels: Set<String> = []
    private var rare: Rare?
    /// The account this connection is logged in to; nil for a guest (boxed: a guest then
    /// carries one pointer for it instead of two strings).
    private var account: Account?
    /// A password check or account creation is in flight (at most one per connection);
    /// registration and later commands wait for it.
    var pendingTickets: Int32 = 0
    /// Stored-message commits of this connection not yet reported by the shell: while any is in
    /// flight, replies to its later commands queue behind them (`finishBehindStores`).
    var storesInFlight: Int32 = 0
    var pingSentAt: Timestamp?
    let isSecure: Bool
    // Connection registration.
    var isRegistered = false
    var capNegotiationInProgress = false
    var isInvisible = true
    /// The CAP LS version the client announced (302 for cap-notify and values).
    var capVersion: Int16 = 0

    private final class Account {
        var key: String?
        var name: String?
    }

    // Identity once known.
    var accountKey: String? {
        get { account?.key }
        set {
            if newValue == nil && account?.name == nil { account = nil; return }
            if account == nil { account = Account() }
            account!.key = newValue
        }
    }
    var accountName: String? {
        get { account?.name }
        set {
            if newValue == nil && account?.key == nil { account = nil; return }
            if account == nil { account = Account() }
            account!.name = newValue
        }
    }

    /// The nick last refused as in use before registration: a `REGISTER *` that follows is
    /// answered about that name (ACCOUNT_EXISTS), not with "send NICK first".
    var refusedNick: String? {
        get { rare?.refusedNick }
        set { if newValue != nil || rare != nil { rareState.refusedNick = newValue } }
    }
    /// `PASS account:password` waiting for NICK/USER before it is checked.
    var passCredentials: (account: String, password: String)? {
        get { rare?.passCredentials }
        set { if newValue != nil || rare != nil { rareState.passCredentials = newValue } }
    }
    /// PASS matched the server's connection password (`serverPassword`), where one is set.
    var gaveServerPassword: Bool {
        get { rare?.gaveServerPassword ?? false }
        set { if newValue || rare != nil { rareState.gaveServerPassword = newValue } }
    }
    /// Set once this connection has created an account: one connection creates at most one.
    var hasCreatedAccount: Bool {
        get { rare?.hasCreatedAccount ?? false }
        set { if newValue || rare != nil { rareState.hasCreatedAccount = newValue } }
    }
    var sasl: SASLExchangeState {
        get { rare?.sasl ?? .idle }
        set {
            if case .idle = newValue, rare == nil { return }
            rareState.sasl = newValue
        }
    }

    var awayMessage: String? {
        get { rare?.awayMessage }
        set { if newValue != nil || rare != nil { rareState.awayMessage = newValue } }
    }
    var isOperator: Bool {
        get { rare?.isOperator ?? false }
        set { if newValue || rare != nil { rareState.isOperator = newValue } }
    }
    /// User mode +B (IRCv3 bot-mode): the client says it is a bot; others see it in WHOIS, WHO
    /// and a `bot` tag on its messages.
    var isBot: Bool {
        get { rare?.isBot ?? false }
        set { if newValue || rare != nil { rareState.isBot = newValue } }
    }
    /// User mode +w: receives WALLOPS from operators.
    var receivesWallops: Bool {
        get { rare?.receivesWallops ?? false }
        set { if newValue || rare != nil { rareState.receivesWallops = newValue } }
    }
    var monitoredNicks: Set<String> {
        get { rare?.monitoredNicks ?? [] }
        set { if !newValue.isEmpty || rare != nil { rareState.monitoredNicks = newValue } }
    }
    /// Metadata keys this connection asked to hear about (`METADATA * SUB`).
    var metadataSubscriptions: Set<String> {
        get { rare?.metadataSubscriptions ?? [] }
        set { if !newValue.isEmpty || rare != nil { rareState.metadataSubscriptions = newValue } }
    }
    /// Closed groups this guest connection was invited into by their owner (keys), used up by
    /// JOIN; they end with the connection, as the guest's part in the group does.
    var groupInvitations: Set<String> {
        get { rare?.groupInvitations ?? [] }
        set { if !newValue.isEmpty || rare != nil { rareState.groupInvitations = newValue } }
    }

    /// What few connections ever have, kept apart so that an idle connection carries one
    /// pointer for it instead of about 150 bytes (issue 16's memory per connection).
    private final class Rare {
        var refusedNick: String?
        var passCredentials: (account: String, password: String)?
        var gaveServerPassword = false
        var hasCreatedAccount = false
        var sasl = SASLExchangeState.idle
        var awayMessage: String?
        var isOperator = false
        var isBot = false
        var receivesWallops = false
        var monitoredNicks: Set<String> = []
        var metadataSubscriptions: Set<String> = []
        var groupInvitations: Set<String> = []
    }
    private var rareState: Rare {
        if let rare { return rare }
        let made = Rare()
        rare = made
        return made
    }

    init(id: ConnectionID, host: String, isSecure: Bool, connectedAt: Timestamp) {
        self.id = id
        self.host = host
        self.isSecure = isSecure
        self.connectedAt = connectedAt
        self.lastActivity = connectedAt
    }

    /// A detached copy (for telling others what a session looked like before a change).
    init(snapshotOf other: Session) {
        id = other.id
        host = other.host
        isSecure = other.isSecure
        connectedAt = other.connectedAt
        madePrefix = other.madePrefix
        lastActivity = other.lastActivity
        pingSentAt = other.pingSentAt
        isRegistered = other.isRegistered
        capabilities = other.capabilities
        nick = other.nick
        username = other.username
        realname = other.realname
        accountKey = other.accountKey
        accountName = other.accountName
        awayMessage = other.awayMessage
        isOperator = other.isOperator
        isInvisible = other.isInvisible
    }

    /// The name to address this client by in numerics: its nick, or `*` before it has one.
    var replyName: String { nick?.name ?? "*" }

    var displayUsername: String { username ?? "~unknown" }

    /// `nick!user@host`, the source of everything this client says. Kept once made: the message
    /// path reads it for every relayed line. Made on first use: a connection that never speaks
    /// never needs it (a heap string, about 80 bytes of an idle connection's memory).
    var prefix: String {
        if let madePrefix { return madePrefix }
        let made = prefixWithoutKeeping
        madePrefix = made
        return made
    }

    /// `prefix` without keeping it (the welcome burst's text, which every connection gets).
    var prefixWithoutKeeping: String { madePrefix ?? Self.makePrefix(nick: nick, username: username, host: host) }

    private static func makePrefix(nick: Nickname?, username: String?, host: String) -> String {
        "\(nick?.name ?? "*")!\(username ?? "~unknown")@\(host)"
    }

    func has(_ capability: Capability) -> Bool { capabilities.contains(capability) }

    /// Whether relayed messages reach this connection with any tags (msgid, time, account).
    var takesTags: Bool { has(.messageTags) || has(.serverTime) || has(.accountTag) }
}

/// A line received while the connection waited for a password check.
enum HeldCommand: Sendable {
    case message(IRCMessage)
    case invalid(ChatServer.InvalidLine, command: String?, label: String?)
}

/// Indirect: the SCRAM state is large and most sessions never use it; boxed, it costs an idle
/// session one pointer instead of a few hundred bytes.
indirect enum SASLExchangeState: Sendable {
    case idle
    /// `AUTHENTICATE PLAIN` accepted; waiting for the client's payload (maybe in 400-byte chunks).
    case awaitingPlain(buffer: String)
    /// SCRAM-SHA-256 after the client-first message (or before it, when `exchange` is fresh).
    case scram(exchange: ScramSHA256ServerExchange, step: ScramStep, buffer: String, username: String?)
    /// A password check for PLAIN is in flight.
    case checking

    /// Base64 received so far for the message being assembled.
    var bufferedBytes: Int {
        switch self {
        case .awaitingPlain(let buffer), .scram(_, _, let buffer, _): buffer.utf8.count
        case .idle, .checking: 0
        }
    }
}

enum ScramStep: Sendable {
    case awaitingClientFirst, awaitingClientFinal, awaitingFinalAck
}
