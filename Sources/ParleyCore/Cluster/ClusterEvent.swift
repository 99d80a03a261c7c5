import IRCWire
import NIOCore

/// Which node of a cluster a connection belongs to: the top bits of its id. Node 0 is a server
/// that runs alone (no cluster), so its ids are what they always were.
extension ConnectionID {
    public static let nodeShift: UInt64 = 52
    public static let maxNodeNumber: UInt16 = (1 << 12) - 1

    public var node: UInt16 { UInt16(truncatingIfNeeded: rawValue >> Self.nodeShift) }
}

/// A registered connection as the other nodes of a cluster need to know it: enough to list it
/// (WHO, WHOIS, NAMES), route to it and encode lines for it (its capabilities).
public struct SessionSnapshot: Sendable, Equatable {
    public var connection: ConnectionID
    public var host: String
    public var isSecure: Bool
    public var connectedAt: Timestamp
    public var nick: String
    public var username: String
    public var realname: String
    public var accountKey: String?
    public var awayMessage: String?
    public var isOperator: Bool
    public var isInvisible: Bool
    public var capabilityBits: UInt64
    /// Names of the transient channels it is in (groups follow from its account).
    public var channels: [String]
    public var monitoredNicks: [String]
    /// The metadata keys it subscribed to (draft/metadata-3), and its user's metadata.
    public var metadataSubscriptions: [String]
    public var metadata: [String: String]
    /// The start of the guest identities of its node's current run (`ChatServer.guestIdentity`),
    /// so that every node names a guest in stored messages as the guest's own node does.
    public var guestIdentityPrefix: String?

    public init(connection: ConnectionID, host: String, isSecure: Bool, connectedAt: Timestamp, nick: String, username: String,
                realname: String, accountKey: String?, awayMessage: String?, isOperator: Bool, isInvisible: Bool,
                capabilityBits: UInt64, channels: [String], monitoredNicks: [String],
                metadataSubscriptions: [String] = [], metadata: [String: String] = [:], guestIdentityPrefix: String? = nil) {
        self.connection = connection
        self.host = host
        self.isSecure = isSecure
        self.connectedAt = connectedAt
        self.nick = nick
        self.username = username
        self.realname = realname
        self.accountKey = accountKey
        self.awayMessage = awayMessage
        self.isOperator = isOperator
        self.isInvisible = isInvisible
        self.capabilityBits = capabilityBits
        self.channels = channels
        self.monitoredNicks = monitoredNicks
        self.metadataSubscriptions = metadataSubscriptions
        self.metadata = metadata
        self.guestIdentityPrefix = guestIdentityPrefix
    }
}

/// What one node tells the others so that their copies of the shared state follow its own.
///
/// The node where a user is connected decides everything that user does, and writes the lines
/// for every receiver itself, remote ones included (the shell carries those lines to the
/// receiver's node), with two exceptions for nodes that say they write their own users' lines
/// (`ChatServer.channelLineNodes`): a message or REDACT to a channel goes to each such node once
/// (`Outbox.channelLines`), and the lines a replicated command or a close makes for their users
/// are left to them (`leaveLinesToTheirNodes`); each writes those to its own users from its own
/// state (it knows its users' JOINs at once, before the other node hears of them). Apart from
/// those lines, the other nodes only update their copy: they send nothing, except for what only
/// they hold (messages waiting for an account that comes online elsewhere, receipts for
/// messages their own users sent).
public enum ClusterEvent: Sendable, Equatable {
    /// A connection completed registration, or its account changed (a later login).
    case session(SessionSnapshot)
    /// A command a remote connection ran that changes shared state (JOIN, NICK, MODE ...):
    /// the other nodes run it too, silently.
    case command(ConnectionID, IRCMessage, at: Timestamp)
    /// A connection closed.
    case closed(ConnectionID, reason: String, at: Timestamp)
    /// An account read a conversation up to `time` (MARKREAD): receipts are due from the
    /// nodes whose users sent the messages.
    case read(account: String, conversation: String, time: Timestamp, disclose: Bool)
    /// An account was created, or its settings changed.
    case account(AccountRecord)
    /// A stored message was redacted (and deleted from storage): whoever holds it for an
    /// offline recipient, or follows it for receipts, forgets it.
    case redacted(messageID: String)
    /// A connection asked to redact a transient channel's message that another node keeps (the
    /// node its author used): that node decides, and answers the redactor itself.
    case redactRequest(ConnectionID, channel: String, messageID: String, reason: String?)
    /// A message or TOPIC change in a transient channel, as the node that decided it keeps it
    /// in the channel's recent history: every node keeps the same history (in memory), so that
    /// CHATHISTORY reads the same on all of them, as on one server.
    case recentMessage(StoredMessage)
    /// A transient channel's message was redacted: every node's copy of its history drops it.
    case recentRedacted(channel: String, messageID: String)
    /// What a transient channel is (modes, topic, lists, members' ranks), for a node that has
    /// just started: the JOINs in its users' snapshots make the channel there, but with a new
    /// channel's defaults, so without this it would let anyone into an invite-only channel.
    case channelState(TransientChannelState)
}

/// A transient channel's settings as every node keeps them (`ClusterEvent.channelState`).
public struct TransientChannelState: Sendable, Equatable, Codable {
    public struct ListEntry: Sendable, Equatable, Codable {
        public var mask: String, setBy: String, setAt: Int64
    }
    public var name: String
    public var createdAt: Int64
    public var topic: String
    public var topicSetBy: String
    public var topicSetAt: Int64?
    /// Flag modes, as `ChatChannel.flagModes` writes them.
    public var modes: String
    public var key: String?
    public var limit: Int?
    public var bans: [ListEntry]
    public var banExceptions: [ListEntry]
    public var inviteExceptions: [ListEntry]
    public var invitedNicks: [String]
    /// Members above `member` (connection id -> `ChannelRole` raw value), and the voiced.
    public var ranks: [UInt64: Int]
    public var voiced: [UInt64]
    public var metadata: [String: String]
}

extension ChatServer {
    /// Commands whose effect on shared state the other nodes reproduce by running them.
    /// Messages are not among them: their lines reach remote receivers directly.
    static let replicatedCommands: Set<String> = [
        "NICK", "JOIN", "PART", "KICK", "MODE", "TOPIC", "AWAY", "SETNAME", "MONITOR", "INVITE", "RENAME",
        "CHANSERV", "CS", "CAP",
    ]

    /// METADATA subcommands that change what the other nodes keep (values and subscriptions);
    /// the others only read.
    static let replicatedMetadataSubcommands: Set<String> = ["SET", "CLEAR", "SUB", "UNSUB"]
}

/// A read (`ClusterEvent.read`, disclosed) sent to a node that died before taking it: that node
/// sent no read receipt for it (`ChatServer.adoptFollowed`).
public struct UntakenRead: Sendable, Equatable {
    public var account: String
    public var conversation: String
    public var time: Timestamp

    public init(account: String, conversation: String, time: Timestamp) {
        self.account = account
        self.conversation = conversation
        self.time = time
    }
}
