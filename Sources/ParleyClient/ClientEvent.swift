import Foundation

/// Where a message of ours stands.
public enum DeliveryState: String, Codable, Sendable, Comparable {
    /// Written to the connection (or waiting for one); the server has not confirmed it.
    case pending
    /// The server stored it and gave it an id (its echo came back).
    case sent
    /// It reached the recipient (for a group: at least one member).
    case delivered
    /// The recipient marked it read (for a group: at least one member).
    case read
    /// The server refused it; `reason` says why.
    case failed

    private var rank: Int {
        switch self {
        case .pending: 0
        case .sent: 1
        case .delivered: 2
        case .read: 3
        case .failed: 4
        }
    }

    public static func < (lhs: DeliveryState, rhs: DeliveryState) -> Bool { lhs.rank < rhs.rank }
}

/// Everything the client reports, one value per event. In `parley --batch` each event is one
/// JSON object per line; fields that do not apply are left out.
public struct ClientEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// Connected and registered (`nick`), logged in to `account` if any.
        case connected
        /// An account was created (`account`).
        case accountCreated = "account-created"
        /// The server refused the login (`reason`); the client stops.
        case loginFailed = "login-failed"
        /// A message from someone (or from another of our devices, `own`).
        case message
        /// One of our messages changed state (`id`, `state`, `msgid`, `time`, `reader`).
        case state
        /// The recipient is offline (`conversation`, `lastSeen`), for message `id`.
        case recipientOffline = "recipient-offline"
        case joined, parted, kicked
        /// Someone joined or left a group we are in.
        case memberJoined = "member-joined"
        case memberLeft = "member-left"
        case members
        case topic
        case renamed
        /// When a user was last online (`user`, `lastSeen`, `online`).
        case seen
        /// A notice or information from the server.
        case notice
        case error
        case disconnected
        case reconnecting
        /// Local information for the user (help, mode changes), produced by the interface.
        case info
        /// The answer to a history request for `conversation` is complete (its messages came
        /// before, as `message` events with `history`). Only when `ClientSession.reportsHistoryEnd`.
        case historyEnd = "history-end"
    }

    public var type: Kind
    /// Our own message's local id (the label it was sent with).
    public var id: String?
    public var from: String?
    /// The conversation this belongs to: a group's name, or the other person's nick.
    public var conversation: String?
    public var text: String?
    public var time: String?
    public var msgid: String?
    public var state: DeliveryState?
    public var reader: String?
    public var reason: String?
    public var lastSeen: String?
    public var online: Bool?
    public var nick: String?
    public var account: String?
    public var user: String?
    public var members: [String]?
    /// A message that arrived while we were offline, replayed at login.
    public var missed: Bool?
    /// From our own account (another device of ours), or our own message.
    public var own: Bool?
    /// Part of a history answer (`/history`).
    public var history: Bool?
    public var delay: Double?

    public init(_ type: Kind) {
        self.type = type
    }

    /// An event about a conversation (most group events), with the fields such events carry.
    public init(_ type: Kind, conversation: String?, from: String? = nil, user: String? = nil, text: String? = nil, reason: String? = nil) {
        self.type = type
        self.conversation = conversation
        self.from = from
        self.user = user
        self.text = text
        self.reason = reason
    }

    public static func info(_ text: String) -> ClientEvent {
        var event = ClientEvent(.info)
        event.text = text
        return event
    }

    public static func error(_ text: String, reason: String? = nil) -> ClientEvent {
        var event = ClientEvent(.error)
        event.text = text
        event.reason = reason
        return event
    }

    /// One line of JSON with the keys sorted, for `--batch`.
    public var jsonLine: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(self) else { return #"{"type":"error","text":"unencodable event"}"# }
        return String(decoding: data, as: UTF8.self)
    }
}
