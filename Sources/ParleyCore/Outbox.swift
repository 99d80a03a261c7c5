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
    public struct Delivery: Sendable {
        public var connection: ConnectionID
        public var line: ByteBuffer
    }

    public var deliveries: [Delivery] = []
    public var actions: [CoreAction] = []

    public init() {}

    public var isEmpty: Bool { deliveries.isEmpty && actions.isEmpty }

    public mutating func removeAll() {
        deliveries.removeAll(keepingCapacity: true)
        actions.removeAll(keepingCapacity: true)
    }

    mutating func send(_ line: ByteBuffer, to connection: ConnectionID) {
        deliveries.append(Delivery(connection: connection, line: line))
    }
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
    /// Persist a group's whole state (after a rename, `previousKey` is its former key).
    case saveGroup(GroupRecord, previousKey: String?)
    case deleteGroup(key: String)
    /// Persist messages (the shell commits them in batches, in order).
    case storeMessages([StoredMessage])
}

/// Work the shell must do in order, because later steps depend on earlier ones: storage writes.
extension CoreAction {
    public var isOrderedStorageWrite: Bool {
        switch self {
        case .saveGroup, .deleteGroup, .storeMessages, .recordLastSeen: true
        default: false
        }
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
    /// `nick!user@host`, as shown to receivers.
    public var senderPrefix: String
    public var targetKind: TargetKind
    /// Direct: the recipient's account key (or folded nick); group: the folded channel name.
    public var target: String
    /// PRIVMSG, NOTICE or TAGMSG.
    public var command: String
    public var text: String
    /// Client-only tags in wire form (possibly empty).
    public var clientTags: String

    public init(id: String, time: Timestamp, senderNick: String, senderAccount: String?, senderPrefix: String,
                targetKind: TargetKind, target: String, command: String, text: String, clientTags: String = "") {
        self.id = id
        self.time = time
        self.senderNick = senderNick
        self.senderAccount = senderAccount
        self.senderPrefix = senderPrefix
        self.targetKind = targetKind
        self.target = target
        self.command = command
        self.text = text
        self.clientTags = clientTags
    }
}
