import Foundation
import IRCWire
import NIOCore

/// What one node sends another, in the order it must be applied.
public enum ClusterRecord: Sendable, Equatable {
    /// The sender has just started (whatever the receiver knew of it is stale), or, with
    /// `rejoin`, is back after losing the database (what the receiver knows stands; the sender
    /// sends its users again, since the receiver may have taken it for dead meanwhile).
    case hello(rejoin: Bool)
    case event(ClusterEvent)
    /// Lines the sender decided for a connection of the receiver (one or more whole lines).
    case lines(ConnectionID, ByteBuffer)
    /// The sender decided to close a connection of the receiver (after its lines).
    case close(ConnectionID)
    /// The lines before it in the payload hand a stored message to an account whose only
    /// connections are on the receiver. The receiver ignores it; if the receiver dies before
    /// taking the payload, it comes back to the sender, which then knows the message is still
    /// to be delivered to that account.
    case handedOver(messageID: String, account: String)
    /// As `handedOver`, for an account whose connections are on several nodes (none on the
    /// sender), the others named in `alsoVia`: the message is still to be delivered only once
    /// every one of those payloads has come back.
    case handedOverToSeveral(messageID: String, account: String, alsoVia: [UInt16])
    /// The answer to a `hello` from a node that has just started (or started over): everything
    /// the sender decided before it read that hello is committed to the shared store, so the
    /// receiver reads it there; what the sender decides later reaches it as records after this.
    case caughtUp
    /// A line for the receiver's members of a channel (`Outbox.ChannelLine`), which the
    /// receiver writes to them from its own member list, each with the tags it may see.
    case channelLine(channel: String, statusPrefix: UInt8?, line: ByteBuffer)
    /// The sender writes its own users' lines (sent after its `hello` and in answer to one): the
    /// receiver sends it `channelLine` records instead of a line per member, and leaves the
    /// lines of its replicated commands and closes for the sender's users to the sender, which
    /// writes them as it runs them. A node of an earlier version skips both kinds, and so is
    /// sent lines per user, as it expects.
    case writesChannelLines
    /// The sender's node name, the first part of its message ids (sent beside
    /// `writesChannelLines`): a node that knows every live node's name can tell an id that
    /// names none of them. A node of an earlier version skips it.
    case nodeName(String)
}

/// The bytes of a batch of records between nodes: each record is a kind byte, a 32-bit length
/// and its body. Lines travel as they are; events as JSON (they are rare next to lines, and
/// JSON keeps them readable in the database while debugging).
public enum ClusterCodec {
    enum Kind: UInt8 {
        case hello = 1, event = 2, lines = 3, close = 4, handedOver = 5, redacted = 6, redactRequest = 7, recentMessage = 8, recentRedacted = 9, channelState = 10
        case handedOverToSeveral = 11, caughtUp = 12, channelLine = 13, writesChannelLines = 14, nodeName = 15
    }

    public struct DecodingError: Error, CustomStringConvertible {
        public let description: String
    }

    public static func append(_ record: ClusterRecord, to buffer: inout ByteBuffer) {
        switch record {
        case .hello(let rejoin):
            buffer.writeInteger(Kind.hello.rawValue)
            buffer.writeInteger(UInt32(1))
            buffer.writeInteger(UInt8(rejoin ? 1 : 0))
        case .event(.redacted(let messageID)):
            // A kind of its own, not a JSON event: a node of the previous version skips it,
            // where an event it cannot read would make it drop the whole payload.
            buffer.writeInteger(Kind.redacted.rawValue)
            buffer.writeInteger(UInt32(messageID.utf8.count))
            buffer.writeString(messageID)
        case .event(.redactRequest(let connection, let channel, let messageID, let reason)):
            let texts = [channel, messageID] + (reason.map { [$0] } ?? [])
            buffer.writeInteger(Kind.redactRequest.rawValue)
            buffer.writeInteger(UInt32(8 + texts.reduce(0) { $0 + 2 + $1.utf8.count }))
            buffer.writeInteger(connection.rawValue)
            for text in texts {
                buffer.writeInteger(UInt16(text.utf8.count))
                buffer.writeString(text)
            }
        case .event(.recentMessage(let message)):
            // One per message of a transient channel, so binary like lines; a node of the
            // previous version skips the kind.
            let optionals = [message.senderAccount, message.senderGuest]
            let texts = [message.target, message.id, message.command, message.senderNick, message.senderPrefix, message.text, message.clientTags]
                + optionals.compactMap { $0 }
            buffer.writeInteger(Kind.recentMessage.rawValue)
            buffer.writeInteger(UInt32(9 + texts.reduce(0) { $0 + 2 + $1.utf8.count }))
            buffer.writeInteger(message.time.millisecondsSince1970)
            buffer.writeInteger(UInt8((message.senderAccount != nil ? 1 : 0) | (message.senderGuest != nil ? 2 : 0)))
            for text in texts { writeShortString(text, to: &buffer) }
        case .event(.recentRedacted(let channel, let messageID)):
            buffer.writeInteger(Kind.recentRedacted.rawValue)
            buffer.writeInteger(UInt32(4 + channel.utf8.count + messageID.utf8.count))
            writeShortString(channel, to: &buffer)
            writeShortString(messageID, to: &buffer)
        case .event(.channelState(let state)):
            // A kind of its own (a node of the previous version skips it); JSON, as it is rare.
            let body = (try? JSONEncoder().encode(state)) ?? Data()
            buffer.writeInteger(Kind.channelState.rawValue)
            buffer.writeInteger(UInt32(body.count))
            buffer.writeBytes(body)
        case .event(let event):
            let body = (try? JSONEncoder().encode(EventBody(event))) ?? Data()
            buffer.writeInteger(Kind.event.rawValue)
            buffer.writeInteger(UInt32(body.count))
            buffer.writeBytes(body)
        case .lines(let connection, let lines):
            buffer.writeInteger(Kind.lines.rawValue)
            buffer.writeInteger(UInt32(8 + lines.readableBytes))
            buffer.writeInteger(connection.rawValue)
            buffer.writeImmutableBuffer(lines)
        case .close(let connection):
            buffer.writeInteger(Kind.close.rawValue)
            buffer.writeInteger(UInt32(8))
            buffer.writeInteger(connection.rawValue)
        case .handedOver(let messageID, let account):
            buffer.writeInteger(Kind.handedOver.rawValue)
            buffer.writeInteger(UInt32(4 + messageID.utf8.count + account.utf8.count))
            buffer.writeInteger(UInt16(messageID.utf8.count))
            buffer.writeString(messageID)
            buffer.writeInteger(UInt16(account.utf8.count))
            buffer.writeString(account)
        case .handedOverToSeveral(let messageID, let account, let alsoVia):
            buffer.writeInteger(Kind.handedOverToSeveral.rawValue)
            buffer.writeInteger(UInt32(6 + messageID.utf8.count + account.utf8.count + 2 * alsoVia.count))
            buffer.writeInteger(UInt16(messageID.utf8.count))
            buffer.writeString(messageID)
            buffer.writeInteger(UInt16(account.utf8.count))
            buffer.writeString(account)
            buffer.writeInteger(UInt16(alsoVia.count))
            for node in alsoVia { buffer.writeInteger(node) }
        case .caughtUp:
            buffer.writeInteger(Kind.caughtUp.rawValue)
            buffer.writeInteger(UInt32(0))
        case .channelLine(let channel, let statusPrefix, let line):
            buffer.writeInteger(Kind.channelLine.rawValue)
            buffer.writeInteger(UInt32(3 + channel.utf8.count + line.readableBytes))
            writeShortString(channel, to: &buffer)
            buffer.writeInteger(statusPrefix ?? 0)
            buffer.writeImmutableBuffer(line)
        case .writesChannelLines:
            buffer.writeInteger(Kind.writesChannelLines.rawValue)
            buffer.writeInteger(UInt32(0))
        case .nodeName(let name):
            buffer.writeInteger(Kind.nodeName.rawValue)
            buffer.writeInteger(UInt32(name.utf8.count))
            buffer.writeString(name)
        }
    }

    private static func writeShortString(_ text: String, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt16(text.utf8.count))
        buffer.writeString(text)
    }

    private static func readShortStrings(_ body: inout ByteBuffer) throws(DecodingError) -> [String] {
        var texts: [String] = []
        while body.readableBytes > 0 {
            guard let length = body.readInteger(as: UInt16.self), let text = body.readString(length: Int(length)) else {
                throw DecodingError(description: "truncated strings in a cluster record")
            }
            texts.append(text)
        }
        return texts
    }

    public static func decode(_ payload: ByteBuffer) throws(DecodingError) -> [ClusterRecord] {
        var buffer = payload
        var records: [ClusterRecord] = []
        while buffer.readableBytes > 0 {
            guard let kindByte = buffer.readInteger(as: UInt8.self), let length = buffer.readInteger(as: UInt32.self),
                  var body = buffer.readSlice(length: Int(length)) else {
                throw DecodingError(description: "truncated cluster record")
            }
            switch Kind(rawValue: kindByte) {
            case .hello:
                records.append(.hello(rejoin: body.readInteger(as: UInt8.self) == 1))
            case .event:
                guard let decoded = try? JSONDecoder().decode(EventBody.self, from: Data(body.readableBytesView)),
                      let event = decoded.event else {
                    throw DecodingError(description: "unreadable cluster event")
                }
                records.append(.event(event))
            case .lines:
                guard let raw = body.readInteger(as: UInt64.self) else { throw DecodingError(description: "truncated lines record") }
                records.append(.lines(ConnectionID(raw), body))
            case .close:
                guard let raw = body.readInteger(as: UInt64.self) else { throw DecodingError(description: "truncated close record") }
                records.append(.close(ConnectionID(raw)))
            case .redacted:
                guard let messageID = body.readString(length: body.readableBytes) else { throw DecodingError(description: "unreadable redaction record") }
                records.append(.event(.redacted(messageID: messageID)))
            case .redactRequest:
                guard let raw = body.readInteger(as: UInt64.self) else { throw DecodingError(description: "truncated redaction request") }
                var texts: [String] = []
                while body.readableBytes > 0 {
                    guard let length = body.readInteger(as: UInt16.self), let text = body.readString(length: Int(length)) else {
                        throw DecodingError(description: "truncated redaction request")
                    }
                    texts.append(text)
                }
                guard texts.count >= 2 else { throw DecodingError(description: "truncated redaction request") }
                records.append(.event(.redactRequest(ConnectionID(raw), channel: texts[0], messageID: texts[1], reason: texts.count > 2 ? texts[2] : nil)))
            case .recentMessage:
                guard let time = body.readInteger(as: Int64.self), let flags = body.readInteger(as: UInt8.self) else {
                    throw DecodingError(description: "truncated recent message")
                }
                var texts = try readShortStrings(&body)
                let optionalCount = (flags & 1) + (flags >> 1 & 1)
                guard texts.count == 7 + Int(optionalCount) else { throw DecodingError(description: "malformed recent message") }
                let guest = flags & 2 != 0 ? texts.removeLast() : nil
                let account = flags & 1 != 0 ? texts.removeLast() : nil
                records.append(.event(.recentMessage(StoredMessage(
                    id: texts[1], time: Timestamp(millisecondsSince1970: time), senderNick: texts[3], senderAccount: account, senderGuest: guest,
                    senderPrefix: texts[4], targetKind: .group, target: texts[0], command: texts[2], text: texts[5], clientTags: texts[6]))))
            case .recentRedacted:
                let texts = try readShortStrings(&body)
                guard texts.count == 2 else { throw DecodingError(description: "malformed recent redaction") }
                records.append(.event(.recentRedacted(channel: texts[0], messageID: texts[1])))
            case .channelState:
                guard let state = try? JSONDecoder().decode(TransientChannelState.self, from: Data(body.readableBytesView)) else {
                    throw DecodingError(description: "unreadable channel state")
                }
                records.append(.event(.channelState(state)))
            case .handedOver:
                guard let idLength = body.readInteger(as: UInt16.self), let messageID = body.readString(length: Int(idLength)),
                      let accountLength = body.readInteger(as: UInt16.self), let account = body.readString(length: Int(accountLength)) else {
                    throw DecodingError(description: "truncated hand-over record")
                }
                records.append(.handedOver(messageID: messageID, account: account))
            case .handedOverToSeveral:
                guard let idLength = body.readInteger(as: UInt16.self), let messageID = body.readString(length: Int(idLength)),
                      let accountLength = body.readInteger(as: UInt16.self), let account = body.readString(length: Int(accountLength)),
                      let count = body.readInteger(as: UInt16.self) else {
                    throw DecodingError(description: "truncated hand-over record")
                }
                var alsoVia: [UInt16] = []
                for _ in 0..<count {
                    guard let node = body.readInteger(as: UInt16.self) else { throw DecodingError(description: "truncated hand-over record") }
                    alsoVia.append(node)
                }
                records.append(.handedOverToSeveral(messageID: messageID, account: account, alsoVia: alsoVia))
            case .caughtUp:
                records.append(.caughtUp)
            case .channelLine:
                guard let length = body.readInteger(as: UInt16.self), let channel = body.readString(length: Int(length)),
                      let status = body.readInteger(as: UInt8.self) else {
                    throw DecodingError(description: "truncated channel line")
                }
                records.append(.channelLine(channel: channel, statusPrefix: status == 0 ? nil : status, line: body))
            case .writesChannelLines:
                records.append(.writesChannelLines)
            case .nodeName:
                guard let name = body.readString(length: body.readableBytes) else { throw DecodingError(description: "unreadable node name") }
                records.append(.nodeName(name))
            case nil:
                // A newer node's record kind: skipped, so that nodes of two versions can run
                // side by side during an upgrade.
                continue
            }
        }
        return records
    }

    /// `ClusterEvent` as JSON: one optional field per case.
    struct EventBody: Codable {
        var session: Snapshot?
        var command: Command?
        var closed: Closed?
        var read: Read?
        var account: Account?

        struct Snapshot: Codable {
            var connection: UInt64, host: String, secure: Bool, connectedAt: Int64, nick: String, username: String, realname: String
            var account: String?, away: String?, oper: Bool, invisible: Bool, caps: UInt64, channels: [String], monitored: [String]
            var subs: [String]?, metadata: [String: String]?, guestPrefix: String?
        }
        struct Command: Codable { var connection: UInt64, line: String, at: Int64 }
        struct Closed: Codable { var connection: UInt64, reason: String, at: Int64 }
        struct Read: Codable { var account: String, conversation: String, time: Int64, disclose: Bool }
        struct Account: Codable {
            var name: String, key: String, credential: PasswordCredential, createdAt: Date, lastSeen: Date?, email: String?
            var settings: [String: String]
        }

        init(_ event: ClusterEvent) {
            switch event {
            case .session(let s):
                session = Snapshot(
                    connection: s.connection.rawValue, host: s.host, secure: s.isSecure, connectedAt: s.connectedAt.millisecondsSince1970,
                    nick: s.nick, username: s.username, realname: s.realname, account: s.accountKey, away: s.awayMessage,
                    oper: s.isOperator, invisible: s.isInvisible, caps: s.capabilityBits, channels: s.channels, monitored: s.monitoredNicks,
                    subs: s.metadataSubscriptions.isEmpty ? nil : s.metadataSubscriptions, metadata: s.metadata.isEmpty ? nil : s.metadata,
                    guestPrefix: s.guestIdentityPrefix)
            case .command(let connection, let message, let time):
                var line = ByteBuffer()
                message.write(to: &line)
                command = Command(connection: connection.rawValue, line: String(buffer: line), at: time.millisecondsSince1970)
            case .closed(let connection, let reason, let time):
                closed = Closed(connection: connection.rawValue, reason: reason, at: time.millisecondsSince1970)
            case .read(let account, let conversation, let time, let disclose):
                read = Read(account: account, conversation: conversation, time: time.millisecondsSince1970, disclose: disclose)
            case .redacted, .redactRequest, .recentMessage, .recentRedacted, .channelState:
                break  // record kinds of their own
            case .account(let record):
                account = Account(name: record.name, key: record.key, credential: record.credential, createdAt: record.createdAt,
                                  lastSeen: record.lastSeen, email: record.email, settings: record.settings)
            }
        }

        var event: ClusterEvent? {
            if let s = session {
                return .session(SessionSnapshot(
                    connection: ConnectionID(s.connection), host: s.host, isSecure: s.secure,
                    connectedAt: Timestamp(millisecondsSince1970: s.connectedAt), nick: s.nick, username: s.username,
                    realname: s.realname, accountKey: s.account, awayMessage: s.away, isOperator: s.oper, isInvisible: s.invisible,
                    capabilityBits: s.caps, channels: s.channels, monitoredNicks: s.monitored,
                    metadataSubscriptions: s.subs ?? [], metadata: s.metadata ?? [:], guestIdentityPrefix: s.guestPrefix))
            }
            if let c = command {
                // By bytes: "\r\n" is a single Character, so dropping two Characters would
                // take the line's last one with it.
                let text = c.line.utf8.last == 10 ? String(decoding: c.line.utf8.dropLast(c.line.utf8.dropLast().last == 13 ? 2 : 1), as: UTF8.self) : c.line
                guard let message = try? IRCMessage(parsing: text) else { return nil }
                return .command(ConnectionID(c.connection), message, at: Timestamp(millisecondsSince1970: c.at))
            }
            if let c = closed {
                return .closed(ConnectionID(c.connection), reason: c.reason, at: Timestamp(millisecondsSince1970: c.at))
            }
            if let r = read {
                return .read(account: r.account, conversation: r.conversation, time: Timestamp(millisecondsSince1970: r.time), disclose: r.disclose)
            }
            if let a = account {
                return .account(AccountRecord(name: a.name, key: a.key, credential: a.credential, createdAt: a.createdAt,
                                              lastSeen: a.lastSeen, email: a.email, settings: a.settings))
            }
            return nil
        }
    }
}
