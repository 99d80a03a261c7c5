import NIOCore

/// Identifies one client connection for the lifetime of the server process.
public struct ConnectionID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (lhs: ConnectionID, rhs: ConnectionID) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "c\(rawValue)" }
}

/// What the chat domain decided: encoded lines to write, in order per connection, and work that
/// the shell carries out (closing sockets, slow password hashing, storage), whose results come
/// back as calls into `ChatServer`. Reused between calls to avoid allocations on the hot path.
public struct Outbox: Sendable {
    public struct Delivery: Sendable, Equatable {
        public var connection: ConnectionID
        public var line: ByteBuffer

        public init(connection: ConnectionID, line: ByteBuffer) {
            self.connection = connection
            self.line = line
        }
    }

    /// Lines per connection, in order; one delivery may hold several lines.
    public var deliveries: [Delivery] = []
    public var actions: [CoreAction] = []
    /// What the other nodes of a cluster must learn (always empty when the server runs alone).
    public var clusterEvents: [ClusterEvent] = []
    /// Stored messages whose lines in `deliveries` reach an account only through other nodes'
    /// connections (`ClusterRecord.handedOver`, `.handedOverToSeveral`).
    public var handOvers: [HandOver] = []

    public struct HandOver: Sendable, Equatable {
        public var node: UInt16
        public var messageID: String
        public var account: String
        /// The other nodes the lines went to, for an account connected to several.
        public var alsoVia: [UInt16] = []
    }
    /// Lines for a channel's members on the other nodes (`ClusterRecord.channelLine`): each of
    /// those nodes writes them to its own members, from its own member list, so that a member
    /// who has just joined there gets them even before this node heard of the JOIN. Empty when
    /// no other node takes them (`ChatServer.channelLineNodes`).
    public var channelLines: [ChannelLine] = []

    /// A line for the members of a channel that are on other nodes.
    public struct ChannelLine: Sendable, Equatable {
        /// The channel's key.
        public var channel: String
        /// `@` or `+` for a STATUSMSG (members of that status or higher only), else nil.
        public var statusPrefix: UInt8?
        /// The line with every tag; each receiver gets the tags its capabilities allow.
        public var line: ByteBuffer
        /// How many of `deliveries` were queued before it: the lines for other nodes'
        /// connections keep their order around it.
        public var afterDeliveries: Int

        public init(channel: String, statusPrefix: UInt8?, line: ByteBuffer, afterDeliveries: Int) {
            self.channel = channel
            self.statusPrefix = statusPrefix
            self.line = line
            self.afterDeliveries = afterDeliveries
        }
    }
    /// Where lines for one connection are encoded in place while the shell lends it (the
    /// server's write batch, for the call that reads a client's line); nil otherwise.
    public var sink: (any OutboxSink)?
    /// Whether the last delivery's buffer belongs to it alone, so more lines for the same
    /// connection can be appended to it (a reply burst becomes one buffer, not one per line).
    private var lastLineIsPrivate = false
    /// Lines queued since this outbox was made, for the operator's metrics: a running total
    /// that `removeAll()` keeps, so a reused outbox counts every line it ever carried.
    public internal(set) var linesQueued: UInt64 = 0

    public init() {}

    public var isEmpty: Bool { deliveries.isEmpty && actions.isEmpty && clusterEvents.isEmpty && handOvers.isEmpty && channelLines.isEmpty }

    public mutating func removeAll() {
        deliveries.removeAll(keepingCapacity: true)
        actions.removeAll(keepingCapacity: true)
        clusterEvents.removeAll()
        handOvers.removeAll()
        channelLines.removeAll()
        lastLineIsPrivate = false
    }

    /// Queues a line that may be shared with other receivers. With a sink, and nothing queued
    /// yet, the line goes straight to the connection's pending output (as in `write`): a group
    /// message is then one step per member, not an entry to queue, resolve and free later.
    mutating func send(_ line: ByteBuffer, to connection: ConnectionID) {
        linesQueued &+= 1
        if deliveries.isEmpty, sink?.add(line, to: connection) == true { return }
        deliveries.append(Delivery(connection: connection, line: line))
        lastLineIsPrivate = false
    }

    /// Encodes a line for one connection, after the previous line when that was its own too.
    /// `capacity`: the bytes expected, when more than a line (a new buffer's first size).
    /// With a sink, and nothing queued yet (so no earlier line can be waiting for `connection`),
    /// the line goes straight to the connection's pending output instead: no buffer of its own
    /// to allocate, copy and free.
    mutating func write(to connection: ConnectionID, allocator: ByteBufferAllocator, capacity: Int = 512, _ encode: (inout ByteBuffer) -> Void) {
        linesQueued &+= 1
        if deliveries.isEmpty, sink?.write(to: connection, capacity: capacity, encode) == true { return }
        if lastLineIsPrivate, let last = deliveries.indices.last, deliveries[last].connection == connection {
            encode(&deliveries[last].line)
            return
        }
        var buffer = allocator.buffer(capacity: capacity)
        encode(&buffer)
        deliveries.append(Delivery(connection: connection, line: buffer))
        lastLineIsPrivate = true
    }
}

/// The shell's pending output per connection, which the domain may encode lines into directly
/// (see `Outbox.sink`). Used only during the call it was lent for, by the thread making it.
public protocol OutboxSink: AnyObject, Sendable {
    /// Appends the line `encode` writes to what is pending for `connection`; false, with nothing
    /// written, when the sink does not write to that connection (it is not one of this node's).
    /// `capacity`: the bytes expected, at least.
    func write(to connection: ConnectionID, capacity: Int, _ encode: (inout ByteBuffer) -> Void) -> Bool
    /// Appends a line (possibly shared with other receivers) to what is pending for
    /// `connection`; false, with nothing added, as for `write`.
    func add(_ line: ByteBuffer, to connection: ConnectionID) -> Bool
}

/// Work the shell performs for the domain.
public enum CoreAction: Sendable, Equatable {
    /// Close the connection once the lines queued for it have been written.
    case close(ConnectionID)
    /// Check a password against a verifier off the event loop, then call
    /// `ChatServer.completePasswordCheck(ticket:succeeded:now:into:)`.
    case checkPassword(ticket: UInt64, credential: PasswordCredential, password: String)
    /// Derive a verifier for a new account, insert it into storage, then call
    /// `ChatServer.completeAccountCreation(ticket:result:now:into:)`.
    case createAccount(ticket: UInt64, name: String, key: String, password: String, email: String?, iterations: Int)
    /// Persist when an account was last online.
    case recordLastSeen(accountKey: String, at: Timestamp)
    /// Persist a group just made here. Another node may have made one of that name in the
    /// same instant (`ChatServer.settleChannelsMadeTwice`): then the store settles the two
    /// creations as the nodes do (`StorageTransaction.createGroup`).
    case createGroup(GroupRecord)
    /// Persist a group's whole state (after a rename, `previousKey` is its former key).
    case saveGroup(GroupRecord, previousKey: String?)
    /// Persist a group's state but its member list (the record's members are left empty).
    case saveGroupSettings(GroupRecord, previousKey: String?)
    /// Persist one account's place on a group's member list (its role and voice), or its
    /// removal (`role` nil); the rest of the list stays as stored.
    case saveGroupMember(group: String, account: String, role: ChannelRole?, voiced: Bool)
    case deleteGroup(key: String)
    /// Persist messages (the shell commits them in batches, in order), then write `afterCommit`
    /// (the sender's echo and replies: an echo means the message is on disk). If the commit
    /// failed, call `ChatServer.messagesNotStored(_:sender:now:into:)` instead, which tells the
    /// sender (the replies are rendered only then: nearly every commit succeeds).
    case storeMessages([StoredMessage], afterCommit: [Outbox.Delivery], sender: StoreRequest)
    /// Record deliveries, reads and receipts sent.
    case updateRecipients([RecipientUpdate])
    case saveReadMarker(account: String, target: String, time: Timestamp)
    /// Persist how far a member has read a group, disclosed to authors: the read state of the
    /// group's messages that have no row per member follows from it.
    case saveGroupReadPosition(account: String, group: String, time: Timestamp)
    /// Persist since when an author's receipts wait for a receipts-capable connection (nil: none
    /// wait any more): the receipts of group members without a row of their own follow from it.
    case saveReceiptsPendingSince(account: String, time: Timestamp?)
    case saveAccountSettings(accountKey: String, settings: [String: String])
    /// Delete one message (a redaction) with its recipients' rows.
    case deleteMessage(id: String)
    /// Forget messages older than the retention period.
    case pruneHistory(before: Timestamp)
    /// Read stored history, then call `ChatServer.completeHistory(ticket:messages:now:into:)`.
    case loadHistory(ticket: UInt64, query: HistoryQuery)
}

/// Work the shell must do in order, because later steps depend on earlier ones: storage writes,
/// and history reads (which must see every write decided before them).
extension CoreAction {
    public var isOrderedStorageWrite: Bool {
        switch self {
        case .createGroup, .saveGroup, .saveGroupSettings, .saveGroupMember, .deleteGroup, .storeMessages, .recordLastSeen, .updateRecipients, .saveReadMarker,
             .saveGroupReadPosition, .saveReceiptsPendingSince, .saveAccountSettings, .pruneHistory, .deleteMessage, .loadHistory: true
        default: false
        }
    }
}

/// Who asked for messages to be stored, so that a failure can be answered with the request's
/// command and label.
public struct StoreRequest: Sendable, Equatable {
    public var connection: ConnectionID
    public var label: String?
    /// PRIVMSG or NOTICE.
    public var verb: String

    public init(connection: ConnectionID, label: String?, verb: String) {
        self.connection = connection
        self.label = label
        self.verb = verb
    }
}

public enum AccountCreationResult: Sendable, Equatable {
    case created(AccountRecord)
    case nameTaken
    case failed(String)
}

/// A durable record of one chat message.
public struct StoredMessage: Sendable, Hashable {
    public enum TargetKind: String, Sendable, Hashable {
        case direct, group
    }

    /// The IRCv3 msgid, unique.
    public var id: String
    public var time: Timestamp
    public var senderNick: String
    /// The sender's account key, if logged in.
    public var senderAccount: String?
    /// A guest sender's identity (`ChatServer.guestIdentity`): unique to that connection, never
    /// an account's, so nobody who later takes the guest's nick inherits the conversation.
    public var senderGuest: String?
    /// `nick!user@host`, as shown to receivers.
    public var senderPrefix: String
    public var targetKind: TargetKind
    /// Direct: the recipient's account key, or a guest recipient's identity; group: the group's
    /// key (its folded name; the store keeps the group's stable id behind it).
    public var target: String
    /// A guest recipient's nick when the message was sent (a guest identity is not a name).
    public var targetName: String?
    /// PRIVMSG, NOTICE or TAGMSG.
    public var command: String
    public var text: String
    /// Client-only tags in wire form (possibly empty).
    public var clientTags: String
    /// The accounts this message is for (the author excluded), with their delivery state.
    public var recipients: [StoredRecipient]

    public init(id: String, time: Timestamp, senderNick: String, senderAccount: String?, senderGuest: String? = nil, senderPrefix: String,
                targetKind: TargetKind, target: String, targetName: String? = nil, command: String, text: String, clientTags: String = "",
                recipients: [StoredRecipient] = []) {
        self.id = id
        self.time = time
        self.senderNick = senderNick
        self.senderAccount = senderAccount
        self.senderGuest = senderGuest
        self.senderPrefix = senderPrefix
        self.targetKind = targetKind
        self.target = target
        self.targetName = targetName
        self.command = command
        self.text = text
        self.clientTags = clientTags
        self.recipients = recipients
    }
}

/// One recipient account of a stored message.
public struct StoredRecipient: Sendable, Hashable {
    public var account: String
    public var deliveredAt: Timestamp?
    public var readAt: Timestamp?
    /// Whether the author has been sent the delivered / read receipt.
    public var deliveredNotified: Bool
    public var readNotified: Bool

    public init(account: String, deliveredAt: Timestamp? = nil, readAt: Timestamp? = nil, deliveredNotified: Bool = false, readNotified: Bool = false) {
        self.account = account
        self.deliveredAt = deliveredAt
        self.readAt = readAt
        self.deliveredNotified = deliveredNotified
        self.readNotified = readNotified
    }

    /// Delivered and read, and the author sent both receipts: nothing left to follow.
    public var isSettled: Bool { deliveredAt != nil && readAt != nil && deliveredNotified && readNotified }
}

/// A change to one recipient's row; nil fields stay as they are.
public struct RecipientUpdate: Sendable, Hashable {
    public var messageID: String
    public var recipient: String
    public var deliveredAt: Timestamp?
    public var readAt: Timestamp?
    public var deliveredNotified: Bool?
    public var readNotified: Bool?

    public init(messageID: String, recipient: String, deliveredAt: Timestamp? = nil, readAt: Timestamp? = nil, deliveredNotified: Bool? = nil, readNotified: Bool? = nil) {
        self.messageID = messageID
        self.recipient = recipient
        self.deliveredAt = deliveredAt
        self.readAt = readAt
        self.deliveredNotified = deliveredNotified
        self.readNotified = readNotified
    }
}

/// A CHATHISTORY request, already checked: the requester may read this conversation.
public struct HistoryQuery: Sendable, Hashable {
    /// A point in a conversation: a message's time, or a message (by msgid) whose time the
    /// store looks up.
    public enum Reference: Sendable, Hashable {
        case timestamp(Timestamp)
        case msgid(String)
    }

    public enum Kind: Sendable, Hashable {
        case latest(after: Reference?)
        case before(Reference)
        case after(Reference)
        case around(Reference)
        case between(Reference, Reference)
        /// Conversations with messages between two times (CHATHISTORY TARGETS).
        case targets(Timestamp, Timestamp)
        /// These messages of the account (`.everything(account:)`), with their recipients' state.
        case receipts([String])
    }

    public enum Conversation: Sendable, Hashable {
        /// A group, by key.
        case group(String)
        /// Between two parties: an account key and another account key or a guest identity.
        case direct(String, String)
        /// Everything this account takes part in: its direct conversations and these groups.
        case everything(account: String, groups: [String])
    }

    public var conversation: Conversation
    public var kind: Kind
    public var limit: Int
    /// Whether events other than PRIVMSG and NOTICE (TAGMSG) count: only for clients with
    /// draft/event-playback, so that they never take the place of messages within `limit`.
    public var includesEvents: Bool

    public init(conversation: Conversation, kind: Kind, limit: Int, includesEvents: Bool = false) {
        self.conversation = conversation
        self.kind = kind
        self.limit = limit
        self.includesEvents = includesEvents
    }
}

/// What a history read found.
public enum HistoryResult: Sendable, Hashable {
    case messages([StoredMessage])
    /// Conversations and the time of their latest message: `.group(key)` or `.direct(other party)`.
    case targets([HistoryTarget])
    case failed(String)
}

public struct HistoryTarget: Sendable, Hashable {
    public var isGroup: Bool
    /// The group's key, or the other party's key (an account key or a guest identity).
    public var key: String
    public var latest: Timestamp

    public init(isGroup: Bool, key: String, latest: Timestamp) {
        self.isGroup = isGroup
        self.key = key
        self.latest = latest
    }
}

/// What the store keeps about delivery, loaded at startup: undelivered messages per account
/// (oldest first), recent messages whose receipts are still tracked, read markers, and since
/// when authors' receipts wait (`StorageTransaction.setReceiptsPendingSince`).
public struct DeliveryState: Sendable {
    public var undelivered: [String: [StoredMessage]]
    public var tracked: [StoredMessage]
    public var readMarkers: [String: [String: Timestamp]]
    public var receiptsPendingSince: [String: Timestamp]

    public init(undelivered: [String: [StoredMessage]] = [:], tracked: [StoredMessage] = [], readMarkers: [String: [String: Timestamp]] = [:],
                receiptsPendingSince: [String: Timestamp] = [:]) {
        self.undelivered = undelivered
        self.tracked = tracked
        self.readMarkers = readMarkers
        self.receiptsPendingSince = receiptsPendingSince
    }
}
