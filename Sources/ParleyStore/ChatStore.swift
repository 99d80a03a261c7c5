import Foundation
import ParleyCore

/// The storage seam: everything the server persists goes through this protocol, so backends
/// (SQLite now, others later) are interchangeable. All methods are async and never block an
/// event loop.
public protocol ChatStore: Sendable {
    func loadAccounts() async throws -> [AccountRecord]
    /// Throws `StoreError.accountExists` when the key is taken.
    func insertAccount(_ account: AccountRecord) async throws
    /// Returns false when there is no such account.
    func updateCredential(accountKey: String, _ credential: PasswordCredential) async throws -> Bool
    func updateSettings(accountKey: String, _ settings: [String: String]) async throws
    func deleteAccount(accountKey: String) async throws -> Bool
    func recordLastSeen(accountKey: String, at: Date) async throws
    /// Appends messages in one transaction: all are stored or none.
    func appendMessages(_ messages: [StoredMessage]) async throws
    func close() async throws
}

public enum StoreError: Error, Sendable, Hashable {
    case accountExists
    case closed
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
