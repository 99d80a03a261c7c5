import Foundation
import IRCWire

/// Who to log in as, and how.
public struct LoginSettings: Sendable, Equatable {
    public var account: String
    public var password: String
    /// Register the account (IRCv3 `REGISTER`) instead of logging in to an existing one.
    public var createAccount: Bool

    public init(account: String, password: String, createAccount: Bool = false) {
        self.account = account
        self.password = password
        self.createAccount = createAccount
    }
}

/// One message we sent, followed from pending to read.
public struct OutgoingMessage: Sendable, Equatable {
    public let id: String
    public let target: String
    public let text: String
    /// The client message id (`+parley.chat/cid`) that makes a resend harmless.
    public let clientID: String
    public var state: DeliveryState = .pending
    public var msgid: String?
    public var time: String?
    public var deliveredTo: Set<String> = []
    public var readBy: Set<String> = []
    /// Everyone the message went to, as far as known (from `RECEIPTS STATUS`, including those
    /// it has not reached yet).
    public var recipients: Set<String> = []
    public var failure: String?
}

/// The client side of the protocol as a value: server lines and user intents go in, lines to
/// send and events come out. No sockets and no clock (times come from the server's tags), so
/// every rule here is testable with plain values; `ChatClient` carries out what it decides.
public struct ClientSession: Sendable {
    public static let wantedCapabilities: Set<String> = [
        "message-tags", "server-time", "echo-message", "labeled-response", "batch", "standard-replies",
        "sasl", "draft/account-registration", "parley.chat/receipts", "draft/read-marker", "draft/chathistory",
        "draft/channel-rename", "multi-prefix", "account-tag",
    ]

    public let login: LoginSettings
    public private(set) var nick: String
    public private(set) var isRegistered = false
    public private(set) var capabilities: Set<String> = []
    public private(set) var outgoing: [String: OutgoingMessage] = [:]
    /// Our messages in the order we sent them.
    public private(set) var outgoingOrder: [String] = []
    public private(set) var groups: Set<String> = []
    /// For a screen that counts group receipts (`✓✓ 3/5`): after the echo of a group message, ask
    /// the server who it went to (`RECEIPTS STATUS`), and report history answers' ends. Off for
    /// `--batch`, whose output stays as it was.
    public var followsGroupRecipients = false
    public var reportsHistoryEnd = false
    /// Read markers the screen sends on its own (a conversation with a guest has none): a
    /// refusal is no news to the user.
    public var ignoresReadMarkerRefusals = false

    private var offeredCapabilities: Set<String> = []
    private var nextLabel = 1
    private let clientIDPrefix: String
    private var messageByMsgid: [String: String] = [:]
    private var labels: [String: LabelPurpose] = [:]
    /// Open batches: reference -> (type, first parameter, label of a labeled-response batch).
    private var batches: [String: (type: String, target: String?, label: String?)] = [:]
    private var pendingNames: [String: [String]] = [:]
    /// Receipts that came before our echo told us the message's id (the echo waits for the
    /// server's disk; a quick reader does not), applied when the echo arrives.
    private var earlyReceipts: [String: [IRCMessage]] = [:]
    private var creating: Bool

    enum LabelPurpose: Sendable {
        case message(String)
        case whois(String)
        case history
        case command
    }

    public init(login: LoginSettings, clientIDPrefix: String = UUID().uuidString.prefix(8).lowercased()) {
        self.login = login
        self.nick = login.account
        self.clientIDPrefix = clientIDPrefix
        self.creating = login.createAccount
    }

    // MARK: Connecting

    /// The first lines of every connection (and of every reconnection).
    public mutating func openingLines() -> [IRCMessage] {
        isRegistered = false
        capabilities = []
        offeredCapabilities = []
        batches = [:]
        labels = labels.filter { if case .message = $0.value { return true } else { return false } }
        return [
            IRCMessage(command: "CAP", parameters: ["LS", "302"]),
            IRCMessage(command: "NICK", parameters: [login.account]),
            IRCMessage(command: "USER", parameters: [login.account, "0", "*", login.account]),
        ]
    }

    /// Our messages the server never confirmed, to send again after a reconnect. Their
    /// `+parley.chat/cid` makes the server answer instead of delivering twice.
    public func unconfirmedLines() -> [IRCMessage] {
        outgoingOrder.compactMap { outgoing[$0] }.filter { $0.state == .pending }.map { message in
            messageLine(message)
        }
    }

    func messageLine(_ message: OutgoingMessage) -> IRCMessage {
        IRCMessage(tags: [IRCTag("label", message.id), IRCTag("+parley.chat/cid", message.clientID)],
                   command: "PRIVMSG", parameters: [message.target, message.text])
    }

    // MARK: What the user does

    /// Sends a message to a nick or a group; returns the line and the pending state event.
    public mutating func send(_ text: String, to target: String) -> (lines: [IRCMessage], events: [ClientEvent]) {
        let id = "m\(nextLabel)"
        nextLabel += 1
        let message = OutgoingMessage(id: id, target: target, text: text, clientID: "\(clientIDPrefix)-\(id)")
        outgoing[id] = message
        outgoingOrder.append(id)
        labels[id] = .message(id)
        return ([messageLine(message)], [stateEvent(message)])
    }

    /// A command whose replies need no special handling.
    public mutating func command(_ verb: String, _ parameters: [String]) -> IRCMessage {
        let label = makeLabel(.command)
        return IRCMessage(tags: capabilities.contains("labeled-response") ? [IRCTag("label", label)] : [], command: verb, parameters: parameters)
    }

    public mutating func whois(_ nick: String) -> IRCMessage {
        let label = makeLabel(.whois(nick))
        return IRCMessage(tags: [IRCTag("label", label)], command: "WHOIS", parameters: [nick])
    }

    public mutating func history(of target: String, limit: Int) -> IRCMessage {
        let label = makeLabel(.history)
        return IRCMessage(tags: [IRCTag("label", label)], command: "CHATHISTORY", parameters: ["LATEST", target, "*", String(limit)])
    }

    /// Messages of `target` older than a shown message (`nil`: the latest).
    public mutating func history(of target: String, before anchor: HistoryAnchor?, limit: Int) -> IRCMessage {
        guard let anchor else { return history(of: target, limit: limit) }
        let label = makeLabel(.history)
        let reference = anchor.msgid.map { "msgid=\($0)" } ?? "timestamp=\(anchor.time)"
        return IRCMessage(tags: [IRCTag("label", label)], command: "CHATHISTORY", parameters: ["BEFORE", target, reference, String(limit)])
    }

    /// Marks a conversation read up to a message's time (only ever forward).
    public func markRead(_ conversation: String, time: String) -> IRCMessage? {
        guard capabilities.contains("draft/read-marker") else { return nil }
        return IRCMessage(command: "MARKREAD", parameters: [conversation, "timestamp=\(time)"])
    }

    private mutating func makeLabel(_ purpose: LabelPurpose) -> String {
        let label = "c\(nextLabel)"
        nextLabel += 1
        labels[label] = purpose
        return label
    }

    // MARK: What the server says

    public mutating func receive(_ message: IRCMessage) -> (lines: [IRCMessage], events: [ClientEvent]) {
        var lines: [IRCMessage] = []
        var events: [ClientEvent] = []
        let batchReference = message.tagValue("batch")
        let label = message.tagValue("label") ?? batchReference.flatMap { batches[$0]?.label }
        let sourceNick = message.source.map { String($0.prefix { $0 != "!" }) }
        let fromServer = message.source.map { !$0.contains("!") } ?? true

        switch message.command {
        case "PING":
            lines.append(IRCMessage(command: "PONG", parameters: message.parameters))
        case "CAP":
            handleCap(message, &lines, &events)
        case "AUTHENTICATE":
            if message.parameters.first == "+" {
                let payload = Data("\0\(login.account)\0\(login.password)".utf8).base64EncodedString()
                lines.append(IRCMessage(command: "AUTHENTICATE", parameters: [payload]))
            }
        case "903":
            lines.append(IRCMessage(command: "CAP", parameters: ["END"]))
        case "904", "902", "464":
            var event = ClientEvent(.loginFailed)
            event.reason = message.parameters.last
            events.append(event)
        case "001":
            isRegistered = true
            nick = message.parameters.first ?? nick
            if creating {
                lines.append(IRCMessage(tags: [IRCTag("label", makeLabel(.command))], command: "REGISTER", parameters: ["*", "*", login.password]))
            } else {
                var event = ClientEvent(.connected)
                event.nick = nick
                event.account = capabilities.contains("sasl") ? login.account : nil
                events.append(event)
                lines.append(contentsOf: unconfirmedLines())
            }
        case "REGISTER":
            if message.parameters.first == "SUCCESS" {
                creating = false
                var created = ClientEvent(.accountCreated)
                created.account = message.parameters.count > 1 ? message.parameters[1] : login.account
                events.append(created)
                var event = ClientEvent(.connected)
                event.nick = nick
                event.account = created.account
                events.append(event)
            }
        case "BATCH":
            guard let reference = message.parameters.first else { break }
            if reference.hasPrefix("+") {
                let type = message.parameters.count > 1 ? message.parameters[1] : ""
                batches[String(reference.dropFirst())] = (type, message.parameters.count > 2 ? message.parameters[2] : nil, label)
            } else if let closed = batches.removeValue(forKey: String(reference.dropFirst())), let finished = closed.label {
                // The end of a labeled-response batch: that request is answered.
                if reportsHistoryEnd, closed.type == "chathistory", case .history? = labels[finished] {
                    events.append(ClientEvent(.historyEnd, conversation: closed.target))
                }
                labels[finished] = nil
            }
        case "PRIVMSG", "NOTICE":
            handleMessage(message, sourceNick: sourceNick, fromServer: fromServer, label: label, batchReference: batchReference, &lines, &events)
        case "RECEIPT":
            handleReceipt(message, &events)
        case "NOTE":
            handleNote(message, label: label, &events)
        case "FAIL" where ignoresReadMarkerRefusals && message.parameters.first == "MARKREAD":
            break
        case "FAIL", "WARN":
            let code = message.parameters.count > 1 ? message.parameters[1] : ""
            let text = message.parameters.last ?? code
            if case .message(let id)? = label.flatMap({ labels[$0] }), message.command == "FAIL" {
                fail(id, reason: text, &events)
            } else if message.parameters.first == "REGISTER" {
                var event = ClientEvent(.loginFailed)
                event.reason = text
                events.append(event)
            } else {
                events.append(.error(text, reason: code))
            }
        case "JOIN":
            guard let group = message.parameters.first else { break }
            if sourceNick == nick {
                groups.insert(group)
                events.append(ClientEvent(.joined, conversation: group))
            } else {
                events.append(ClientEvent(.memberJoined, conversation: group, user: sourceNick))
            }
        case "PART", "KICK":
            guard let group = message.parameters.first else { break }
            let leaver = message.command == "KICK" ? (message.parameters.count > 1 ? message.parameters[1] : "") : (sourceNick ?? "")
            if leaver == nick {
                groups.remove(group)
                let kicked = message.command == "KICK"
                events.append(ClientEvent(kicked ? .kicked : .parted, conversation: group, from: sourceNick,
                                          reason: kicked ? message.parameters.last : nil))
            } else {
                events.append(ClientEvent(.memberLeft, conversation: group, user: leaver))
            }
        case "RENAME":
            guard message.parameters.count >= 2 else { break }
            groups.remove(message.parameters[0])
            groups.insert(message.parameters[1])
            events.append(ClientEvent(.renamed, conversation: message.parameters[1], from: message.parameters[0]))
        case "332":
            events.append(ClientEvent(.topic, conversation: message.parameters.count > 1 ? message.parameters[1] : nil,
                                      text: message.parameters.last))
        case "353":
            guard message.parameters.count >= 4 else { break }
            pendingNames[message.parameters[2], default: []] += message.parameters[3].split(separator: " ").map(String.init)
        case "366":
            guard message.parameters.count >= 2 else { break }
            var event = ClientEvent(.members)
            event.conversation = message.parameters[1]
            event.members = pendingNames.removeValue(forKey: message.parameters[1]) ?? []
            events.append(event)
        case "311":
            if case .whois(let user)? = label.flatMap({ labels[$0] }) {
                var event = ClientEvent(.seen)
                event.user = user
                event.online = true
                events.append(event)
            }
        case "401", "403", "404", "406", "407", "412", "417", "471", "473", "474", "475", "482", "442", "441", "443", "461", "421":
            let text = message.parameters.dropFirst().joined(separator: " ")
            if case .message(let id)? = label.flatMap({ labels[$0] }) {
                fail(id, reason: message.parameters.last ?? text, &events)
            } else if case .whois? = label.flatMap({ labels[$0] }), message.command == "401" {
                // The NOTE WHOIS LAST_SEEN that follows answers for accounts; a stranger has none.
                break
            } else {
                events.append(.error(text, reason: message.command))
            }
        case "ACK":
            break
        case "ERROR":
            var event = ClientEvent(.disconnected)
            event.reason = message.parameters.last
            events.append(event)
        default:
            break
        }
        // A labeled reply outside a batch is the whole answer: forget the label.
        if let label = message.tagValue("label"), message.command != "BATCH" {
            labels[label] = nil
        }
        return (lines, events)
    }

    private mutating func handleCap(_ message: IRCMessage, _ lines: inout [IRCMessage], _ events: inout [ClientEvent]) {
        let parameters = message.parameters
        guard parameters.count >= 3 else { return }
        let subcommand = parameters[1]
        let list = parameters[parameters.count - 1].split(separator: " ").map { String($0.split(separator: "=").first ?? "") }
        switch subcommand {
        case "LS":
            offeredCapabilities.formUnion(list)
            if parameters.count == 4 && parameters[2] == "*" { return }  // more LS lines follow
            var wanted = offeredCapabilities.intersection(Self.wantedCapabilities)
            if creating { wanted.remove("sasl") }
            if wanted.isEmpty {
                lines.append(IRCMessage(command: "CAP", parameters: ["END"]))
            } else {
                lines.append(IRCMessage(command: "CAP", parameters: ["REQ", wanted.sorted().joined(separator: " ")]))
            }
        case "ACK":
            capabilities.formUnion(list)
            if capabilities.contains("sasl") && !creating {
                lines.append(IRCMessage(command: "AUTHENTICATE", parameters: ["PLAIN"]))
            } else {
                lines.append(IRCMessage(command: "CAP", parameters: ["END"]))
            }
        case "NAK":
            lines.append(IRCMessage(command: "CAP", parameters: ["END"]))
        default:
            break
        }
    }

    private mutating func handleMessage(_ message: IRCMessage, sourceNick: String?, fromServer: Bool, label: String?, batchReference: String?, _ lines: inout [IRCMessage], _ events: inout [ClientEvent]) {
        guard message.parameters.count >= 2 else { return }
        let target = message.parameters[0]
        let text = message.parameters[1]
        if fromServer || sourceNick?.lowercased() == "nickserv" || sourceNick?.lowercased() == "chanserv" {
            var event = ClientEvent(.notice)
            event.from = sourceNick
            event.text = text
            events.append(event)
            return
        }
        // Our echo: the label (or the msgid) ties it to what we sent.
        if sourceNick?.lowercased() == nick.lowercased(), case .message(let id)? = label.flatMap({ labels[$0] }), var mine = outgoing[id] {
            if mine.state == .pending {
                mine.state = .sent
                mine.msgid = message.tagValue("msgid")
                mine.time = message.tagValue("time")
                if let msgid = mine.msgid { messageByMsgid[msgid] = id }
                outgoing[id] = mine
                events.append(stateEvent(mine))
                for receipt in mine.msgid.flatMap({ earlyReceipts.removeValue(forKey: $0) }) ?? [] {
                    handleReceipt(receipt, &events)
                }
                if followsGroupRecipients, mine.target.hasPrefix("#"), let msgid = mine.msgid, capabilities.contains("parley.chat/receipts") {
                    lines.append(IRCMessage(tags: [IRCTag("label", makeLabel(.command))], command: "RECEIPTS", parameters: ["STATUS", msgid]))
                }
            }
            return
        }
        let batch = batchReference.flatMap { batches[$0] }
        let isHistoryBatch = batch?.type == "chathistory"
        var event = ClientEvent(.message)
        event.from = sourceNick
        event.text = text
        event.time = message.tagValue("time")
        event.msgid = message.tagValue("msgid")
        let own = sourceNick?.lowercased() == nick.lowercased()
        if own { event.own = true }
        event.conversation = target.hasPrefix("#") ? target : (own ? target : sourceNick)
        if isHistoryBatch {
            if batch?.label == nil { event.missed = true } else { event.history = true }
        }
        if message.command == "NOTICE" { event.reason = "notice" }
        events.append(event)
    }

    private mutating func handleReceipt(_ message: IRCMessage, _ events: inout [ClientEvent]) {
        let parameters = message.parameters
        guard parameters.count >= 5 else { return }
        guard let id = messageByMsgid[parameters[1]], var mine = outgoing[id] else {
            if earlyReceipts.count < 1000 { earlyReceipts[parameters[1], default: []].append(message) }
            return
        }
        let reader = parameters[3]
        let before = mine
        mine.recipients.insert(reader)
        switch parameters[2] {
        case "pending":
            break
        case "delivered":
            mine.deliveredTo.insert(reader)
            if mine.state < .delivered { mine.state = .delivered }
        case "read":
            mine.deliveredTo.insert(reader)
            mine.readBy.insert(reader)
            mine.state = .read
        default:
            return
        }
        outgoing[id] = mine
        // A status answer repeats what live receipts said: only news becomes an event. Who the
        // message went to is news only to a screen that counts group receipts.
        let news = mine.deliveredTo != before.deliveredTo || mine.readBy != before.readBy
        let newRecipient = followsGroupRecipients && mine.recipients != before.recipients
        guard news || newRecipient || !followsGroupRecipients else { return }
        var event = stateEvent(mine)
        event.reader = reader
        event.time = parameters[4] == "*" ? nil : parameters[4]
        if parameters[2] != "pending" { event.state = parameters[2] == "read" ? .read : .delivered }
        if followsGroupRecipients, mine.target.hasPrefix("#") { event.members = mine.recipients.sorted() }
        events.append(event)
    }

    private mutating func handleNote(_ message: IRCMessage, label: String?, _ events: inout [ClientEvent]) {
        let parameters = message.parameters
        guard parameters.count >= 2 else { return }
        switch (parameters[0], parameters[1]) {
        case (_, "RECIPIENT_OFFLINE") where parameters.count >= 5:
            var event = ClientEvent(.recipientOffline)
            if case .message(let id)? = label.flatMap({ labels[$0] }) { event.id = id }
            event.conversation = parameters[2]
            event.lastSeen = parameters[3] == "never" ? nil : parameters[3]
            event.text = parameters.last
            events.append(event)
        case ("WHOIS", "LAST_SEEN") where parameters.count >= 5:
            var event = ClientEvent(.seen)
            event.user = parameters[2]
            event.online = false
            event.lastSeen = parameters[3] == "never" ? nil : parameters[3]
            event.text = parameters.last
            events.append(event)
        default:
            var event = ClientEvent(.notice)
            event.text = parameters.last
            events.append(event)
        }
    }

    private mutating func fail(_ id: String, reason: String, _ events: inout [ClientEvent]) {
        guard var mine = outgoing[id], mine.state == .pending else { return }
        mine.state = .failed
        mine.failure = reason
        outgoing[id] = mine
        events.append(stateEvent(mine))
    }

    func stateEvent(_ message: OutgoingMessage) -> ClientEvent {
        var event = ClientEvent(.state)
        event.id = message.id
        event.conversation = message.target
        event.text = message.text
        event.state = message.state
        event.msgid = message.msgid
        event.time = message.time
        event.reason = message.failure
        return event
    }
}
