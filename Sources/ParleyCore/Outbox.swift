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
}

public enum AccountCreationResult: Sendable, Equatable {
    case created(AccountRecord)
    case nameTaken
    case failed(String)
}
