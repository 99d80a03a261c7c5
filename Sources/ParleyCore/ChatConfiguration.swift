import IRCWire

/// What the chat domain needs to know about the server it runs in. Transport, storage and flood
/// settings live with the shell (`ParleyServer`); these are the rules users see.
public struct ChatConfiguration: Sendable {
    /// The server's name as sent in the source of numerics and in 004/RPL_MYINFO.
    public var serverName: String = "parley.local"
    /// A password every connection must give with PASS before registering; nil: none. With one
    /// set, PASS carries only it, and accounts log in with SASL or NickServ.
    public var serverPassword: String?
    /// What LINKS says about this server (RPL_LINKS' server info).
    public var serverDescription: String = "Parley chat server"
    /// The network name in ISUPPORT NETWORK= and the welcome line.
    public var networkName: String = "Parley"
    /// Lines of the message of the day; empty sends ERR_NOMOTD.
    public var motd: [String] = ["Welcome to Parley."]
    public var caseMapping: IRCCaseMapping = .ascii
    public var nickLength = 30
    public var userLength = 18
    public var channelLength = 64
    /// Channels one connection may be in; nil means no limit.
    public var maxChannelsPerUser: Int? = 100
    /// Messages kept for an account while it is offline; past this, senders get a FAIL reply.
    public var maxUndeliveredPerAccount = 5000
    /// Recipient states followed in memory for live receipts (delivered, read), counted per
    /// recipient (a message to a group of 1,000 counts 1,000). Past this the oldest messages
    /// that every recipient has received are forgotten: their state stays on disk (RECEIPTS
    /// STATUS still answers), but a later read sends no live receipt. Start-up loads at most
    /// this many too, so memory does not grow with the history's size.
    public var maxTrackedRecipients = 200_000
    /// Receipts kept in memory for one author who has no receipts-capable connection (the
    /// newest); older ones stay on disk.
    public var maxPendingReceiptsPerAuthor = 1000
    /// Bytes of messages (text and client tags) one account may have stored per day, whoever
    /// they are to (to oneself included); past it, sends get `FAIL <verb> QUOTA_EXCEEDED`.
    public var storedBytesPerAccountPerDay = 20_000_000
    /// How long stored messages are kept (history, offline delivery, receipts).
    public var historyRetentionMilliseconds: Int64 = 30 * 24 * 3600 * 1000
    /// The most messages one CHATHISTORY request returns.
    public var chathistoryLimit = 500
    /// Messages a transient channel keeps in memory for CHATHISTORY while it exists (0: none).
    public var transientChannelHistoryLength = 200
    /// Bytes of those messages (text, client tags, sender) one transient channel keeps at most.
    public var transientChannelHistoryBytes = 65_536
    public var topicLength = 390
    public var awayLength = 390
    public var kickLength = 390
    public var realnameLength = 100
    /// Targets per PRIVMSG / NOTICE / TAGMSG (ISUPPORT TARGMAX).
    public var maxMessageTargets = 4
    /// Entries per MONITOR list (ISUPPORT MONITOR=).
    public var monitorLimit = 100
    /// A connection that has sent nothing for this long is sent a PING.
    public var pingIntervalMilliseconds: Int64 = 90_000
    /// A PING unanswered for this long closes the connection ("Ping timeout").
    public var pingTimeoutMilliseconds: Int64 = 60_000
    /// A sender whose messages have waited this long for the store (a database that stopped
    /// answering) is told so with `NOTE * STORAGE_SLOW`, once until they are stored.
    public var storageSlowNoticeMilliseconds: Int64 = 5_000
    /// Connections that have not completed registration within this time are closed.
    public var registrationTimeoutMilliseconds: Int64 = 30_000
    /// PBKDF2 iterations for new password credentials (SCRAM-SHA-256 verifiers).
    public var passwordIterations = 210_000
    public var minimumPasswordLength = 8
    public var maximumPasswordLength = 300
    // MARK: Password guessing and account creation
    // Attempts count when a check starts (a right password is refunded when its check ends),
    // by source network: an IPv4 address or an IPv6 /64. Failures from one network never
    // refuse a login from another. 0 turns a bound off.

    /// Password attempts per account from one source network within
    /// `loginFailureWindowMilliseconds`; then that account is refused from that network until
    /// the window has passed.
    public var loginFailuresAllowed = 5
    /// Password attempts from one source network across all accounts within the window.
    public var loginFailuresPerNetworkAllowed = 20
    public var loginFailureWindowMilliseconds: Int64 = 60_000
    /// Password hashes (checks and new accounts) queued or running, server-wide; past this a
    /// login or registration is refused with "try again later" (FAIL / 904) without a guess
    /// being counted.
    public var maxPasswordChecksInFlight = 32
    /// Commands a connection may send while its password check runs; they wait and run after
    /// it, in order. Past this the connection is closed (Excess Flood).
    public var maxHeldCommands = 200
    /// Accounts created from one source network within `accountRegistrationWindowMilliseconds`.
    /// One connection creates at most one account whatever this says.
    public var accountRegistrationsPerNetworkAllowed = 3
    public var accountRegistrationWindowMilliseconds: Int64 = 3_600_000
    /// Whether connections without an account may register and chat.
    public var allowGuests = true
    /// Whether anyone may register accounts (REGISTER, NickServ REGISTER).
    public var allowAccountRegistration = true
    /// Whether REGISTER works before connection registration ends (`draft/account-registration=before-connect`).
    public var accountRegistrationBeforeConnect = true
    /// Server operators: name and SCRAM-SHA-256 verifier of the OPER password.
    public var operators: [OperatorCredential] = []
    public var whowasLength = 1000

    // Bounds on work done under the domain's lock for one command.
    /// Entries per channel ban list (ISUPPORT MAXLIST=b:N): every JOIN and message to the
    /// channel checks them all. Past this, +b gets ERR_BANLISTFULL (478).
    public var maxBansPerChannel = 100
    /// Users one WHO by mask (`WHO *`, `WHO a*`) lists: the scan stops there and a
    /// `NOTE WHO TRUNCATED` says so. WHO of a nick or channel looks it up directly.
    public var maxWhoReplies = 200
    /// Users one `WHO` by mask looks at before it stops (with `NOTE WHO TRUNCATED`).
    public var maxWhoScanned = 10_000
    public var version = "parley-0.1"
    /// This node's number in a cluster (1...4095; the top bits of its connection ids), or 0 when
    /// the server runs alone.
    public var clusterNode: UInt16 = 0
    /// This node's name in a cluster (part of its message ids, so that nodes never collide).
    public var clusterNodeName: String?

    public init() {}

    /// The defaults, for configuration layers that state them again (so they are stated once).
    public static let defaults = ChatConfiguration()
}

/// One `OPER` login from the configuration; the password is stored only as a verifier.
public struct OperatorCredential: Sendable, Hashable {
    public var name: String
    public var credential: PasswordCredential

    public init(name: String, credential: PasswordCredential) {
        self.name = name
        self.credential = credential
    }
}
