import Foundation
import IRCWire
import NIOCore

/// The chat domain: users, accounts and message routing, with no sockets and no clock. The shell
/// feeds it connection events and parsed messages with the current time, and carries out what it
/// decides (an `Outbox` of encoded lines and actions).
///
/// Ownership rule: exactly one owner uses a `ChatServer` at a time (the server shell keeps it
/// behind one lock and never waits on I/O while holding it). Sessions are held by reference, so
/// a copy of a `ChatServer` is not independent of the original: never keep two.
public struct ChatServer: Sendable {
    public let configuration: ChatConfiguration
    public let startedAt: Timestamp

    var sessions: SessionTable
    /// Registered users by case-folded nick. Several connections share one entry when they are
    /// logged in to the same account (the account's name is their nick).
    var nickIndex: [String: NickHolder] = [:]
    /// Every registered account, by case-folded name.
    var accounts: [String: AccountRecord] = [:]
    var pendingAccountKeys: Set<String> = []
    var pendingWork: [UInt64: PendingWork] = [:]
    var nextTicket: UInt64 = 1
    var messageIDs: MessageIDGenerator
    var nextBatchNumber: UInt64 = 1
    var whowas: [WhowasEntry] = []
    /// Who watches which nick with MONITOR: case-folded nick -> connections.
    var monitorWatchers: [String: Set<ConnectionID>] = [:]
    /// Password attempts per account and source network, and per source network.
    var loginAttemptsPerAccount: AttemptCounter
    var loginAttemptsPerNetwork: AttemptCounter
    /// Accounts created per source network.
    var registrationsPerNetwork: AttemptCounter
    /// Password checks and account creations handed to the shell and not yet completed.
    var passwordWorkInFlight = 0
    /// Channels and groups by case-folded name.
    var channels: [String: ChatChannel] = [:]
    /// The groups each account is a member of (account key -> channel keys).
    var groupsOfAccount: [String: Set<String>] = [:]
    /// Old names of renamed channels, for `FAIL JOIN CHANNEL_RENAMED`.
    var renamedChannels: [String: RenamedChannel] = [:]
    /// Messages waiting for accounts that have no connection, oldest first.
    var undelivered: [String: [StoredMessage]] = [:]
    /// Recent messages from accounts to accounts, by msgid, for receipts.
    var tracked: [String: TrackedMessage] = [:]
    /// `tracked`'s ids, oldest first (ids forgotten or set aside since are skipped when met).
    var trackedOrder = CircularBuffer<String>()
    /// Tracked messages set aside by the memory bound while they wait for a recipient, oldest
    /// first (ids forgotten or delivered since are skipped when met).
    var parkedTrackedOrder = CircularBuffer<String>()
    /// Direct messages from accounts that their recipient had as they were sent, followed for
    /// receipts outside `tracked` (one node only: in a cluster they stay in `tracked`).
    var deliveredDirect = DeliveredDirectMessages()
    /// Recipients followed across `tracked` and `deliveredDirect` (the bound
    /// `maxTrackedRecipients` counts these).
    var trackedRecipientCount = 0
    /// Delivered but not yet read: reader -> conversation key -> messages, oldest first.
    var unread: [String: [String: [UnreadMessage]]] = [:]
    /// For groups, instead of `unread`: each group's followed messages, oldest first, and how far
    /// each member's reads of the group have been looked at (reader -> group key -> time). A list
    /// per member and message was a share of the stored fan-out; a member's read receipts are
    /// found by walking the group's list past that position.
    var groupFollowed: [String: [String]] = [:]
    var groupReadsSeen: [String: [String: Timestamp]] = [:]
    /// Receipts for authors who had no receipts-capable connection when they happened.
    var pendingReceipts: [String: [PendingReceipt]] = [:]
    /// Since when each author's receipts have waited, as the store keeps it: the recipients who
    /// have no row of their own count their receipts from then on as not sent yet.
    var receiptsWaitingSince: [String: Timestamp] = [:]
    /// In a cluster: how far each account's reads were disclosed to authors, per conversation
    /// (reader -> conversation key), whichever node they were made on, and when this node heard
    /// of it. A node that takes over a dead node's messages sends the read receipts that node
    /// could no longer send.
    var disclosedReads: [String: [String: DisclosedRead]] = [:]

    struct DisclosedRead: Sendable {
        var until: Timestamp
        var notedAt: Timestamp
        /// The reads disclosed before this one, oldest first (at most `earlierKept`): how far a
        /// node that died before taking this read knew the reader had read (`adoptFollowed`).
        var earlier: [Timestamp] = []
        static let earlierKept = 8
    }
    /// Messages of dead nodes this node follows for receipts, by node: forgotten when the node
    /// starts again (it follows them itself from the store).
    var followedForDeadNodes: [UInt16: [String]] = [:]
    /// Read markers: account -> conversation key -> time of the last read message.
    var readMarkers: [String: [String: Timestamp]] = [:]
    /// Holders (account keys, guest identities) of a marker for each transient channel name.
    /// Such markers are in memory only; they outlast the channel (a channel made again under the
    /// name shows where its people had read) until the holder leaves the network or a group
    /// takes the name.
    var transientMarkerHolders: [String: Set<String>] = [:]
    /// The transient channel names each holder has a marker for, oldest first.
    var transientMarkerKeys: [String: [String]] = [:]
    /// Fixed bound: markers one holder keeps for transient channels (the oldest go first).
    static let maxTransientMarkersPerHolder = 100
    var lastPrune: Timestamp?
    /// The `time` tag of the current millisecond: hundreds of messages share it under load.
    var cachedTimeTag: (time: Timestamp, text: String) = (Timestamp(millisecondsSince1970: -1), "")
    /// Connections told their messages wait for a slow store (`storageIsWorking`).
    var toldStorageIsSlow: Set<ConnectionID> = []
    /// RECIPIENT_OFFLINE notes of the current second, by account and verb: their text says
    /// when the account was last seen, to the minute, and a sender writing to someone offline
    /// usually sends more than one message.
    var offlineNotes: (second: Int64, notes: [String: (lastSeen: Date?, note: IRCMessage)]) = (-1, [:])
    /// Recent sends by client message id (`+parley.chat/cid`), per account, so a client that
    /// resends after a reconnect does not deliver twice.
    var recentSends: [String: RecentSends] = [:]
    var lastRecentSendsSweep: Timestamp?
    /// IRCv3 metadata of users (key -> value), by account key or guest identity; in memory only.
    var userMetadata: [String: [String: String]] = [:]
    /// Bytes stored today per account (or guest address), for `storedBytesPerAccountPerDay`.
    var storedBytesToday: [String: (dayStart: Timestamp, bytes: Int)] = [:]

    struct RecentSends: Sendable {
        var order: [String] = []
        var relayed: [String: [IRCMessage]] = [:]
        /// Bytes of text and client tags held, for the per-account bound.
        var bytes = 0
        /// Set when the account's last connection closed: a client that reconnects at once and
        /// resends is still recognised, then the entries are freed.
        var forgetAt: Timestamp?
    }
    /// Running totals for the operator's metrics (read by the shell, never reset).
    public internal(set) var counters = ChatCounters()
    var maximumUsersSeen = 0
    var registeredSessionCount = 0
    /// Registered connections without +i, and IRC operators (for LUSERS).
    var visibleUsers: Set<ConnectionID> = []
    var operators: Set<ConnectionID> = []
    let allocator = ByteBufferAllocator()
    /// RPL_ISUPPORT parameters, 13 tokens a line, with the closing text: the same for every
    /// registration, so built once.
    let isupportLines: [[String]]
    /// RPL_CREATED's text (the start time formatted once).
    let createdText: String
    /// The welcome burst, encoded once (see `sendWelcome`).
    let welcomeTemplate: ReplyTemplate?
    /// The start of this run's guest identities (`guestIdentity(of:)`), made once: guests' stored
    /// messages need one each.
    let guestIdentityPrefix: String
    /// The other nodes' prefixes of guest identities (`guestIdentityPrefix(ofNode:)`), by node
    /// number, from their users' snapshots.
    var remoteGuestIdentityPrefixes: [UInt16: String] = [:]
    /// The other nodes that write lines to their own users themselves: a channel's messages
    /// (`Outbox.channelLines`), and what a command they run after this node (JOIN, NICK, QUIT
    /// ...) shows their users. Those that said so since they last started; a node of an earlier
    /// version never says so, and is sent a line per receiver, as it expects.
    public internal(set) var channelLineNodes: Set<UInt16> = []
    /// The names of the other live nodes that said theirs (`ClusterRecord.nodeName`).
    var peerNames: [UInt16: String] = [:]

    struct NickHolder: Sendable {
        var connections: NickConnections
        var accountKey: String?
    }

    struct WhowasEntry: Sendable {
        var nick: String
        var folded: String
        var username: String
        var host: String
        var realname: String
        var accountName: String?
        var leftAt: Timestamp
    }

    enum PendingWork: Sendable {
        case passLogin(ConnectionID, accountKey: String)
        case saslPlain(ConnectionID, accountKey: String)
        case identify(ConnectionID, accountKey: String, label: String?)
        case oper(ConnectionID, name: String, label: String?)
        case registerAccount(ConnectionID, key: String, viaNickServ: Bool, label: String?)
        case history(ConnectionID, target: String, label: String?, subcommand: String)
        case redaction(ConnectionID, RedactRequest)
    }

    public init(configuration: ChatConfiguration, accounts: [AccountRecord], groups: [GroupRecord] = [], delivery: DeliveryState = DeliveryState(), startedAt: Timestamp) {
        self.configuration = configuration
        self.startedAt = startedAt
        self.sessions = SessionTable(localNode: configuration.clusterNode)
        self.messageIDs = MessageIDGenerator(startedAt: startedAt, node: configuration.clusterNodeName)
        self.loginAttemptsPerAccount = AttemptCounter(limit: configuration.loginFailuresAllowed, windowMilliseconds: configuration.loginFailureWindowMilliseconds)
        self.loginAttemptsPerNetwork = AttemptCounter(limit: configuration.loginFailuresPerNetworkAllowed, windowMilliseconds: configuration.loginFailureWindowMilliseconds)
        self.registrationsPerNetwork = AttemptCounter(limit: configuration.accountRegistrationsPerNetworkAllowed, windowMilliseconds: configuration.accountRegistrationWindowMilliseconds)
        for account in accounts { self.accounts[account.key] = account }
        for group in groups {
            let channel = ChatChannel(record: group)
            channels[channel.key] = channel
            for account in channel.accountRoles.keys { groupsOfAccount[account, default: []].insert(channel.key) }
        }
        let tokens = Self.makeISupportTokens(configuration)
        self.isupportLines = stride(from: 0, to: tokens.count, by: 13).map {
            Array(tokens[$0..<min($0 + 13, tokens.count)]) + ["are supported by this server"]
        }
        self.createdText = "This server was created \(startedAt.iso8601)"
        self.welcomeTemplate = Self.makeWelcomeTemplate(configuration, isupportLines: isupportLines, createdText: createdText)
        self.guestIdentityPrefix = "!" + String(startedAt.millisecondsSince1970, radix: 36) + "."
        restoreDeliveryState(delivery)
    }

    // MARK: - Queries for the shell and tests

    public var connectionCount: Int { sessions.count }
    public var unregisteredConnectionCount: Int { sessions.count - registeredSessionCount }
    public var registeredUserCount: Int { nickIndex.count }
    public func isRegistered(_ connection: ConnectionID) -> Bool { sessions[connection]?.isRegistered ?? false }
    public func nick(of connection: ConnectionID) -> String? { sessions[connection]?.nick?.name }
    public func account(of connection: ConnectionID) -> String? { sessions[connection]?.accountName }
    public func accountRecord(named name: String) -> AccountRecord? { accounts[fold(name)] }
    public var accountCount: Int { accounts.count }
    /// Password checks and account creations handed to the shell and not completed yet.
    public var passwordChecksInFlight: Int { passwordWorkInFlight }
    public var channelCount: Int { channels.count }

    func fold(_ text: String) -> String { configuration.caseMapping.fold(text) }

    mutating func timeTag(_ now: Timestamp) -> String {
        if cachedTimeTag.time != now { cachedTimeTag = (now, now.iso8601) }
        return cachedTimeTag.text
    }

    // MARK: - Connection lifecycle

    public mutating func connectionOpened(_ connection: ConnectionID, host: String, isSecure: Bool, now: Timestamp) {
        sessions[connection] = Session(id: connection, host: host, isSecure: isSecure, connectedAt: now)
    }

    /// Handles one message from a client.
    public mutating func receive(_ message: IRCMessage, from connection: ConnectionID, now: Timestamp, into outbox: inout Outbox) {
        guard let session = sessions[connection] else { return }
        session.lastActivity = now
        session.pingSentAt = nil
        if session.pendingTickets > 0 || !session.heldCommands.isEmpty {
            hold(.message(message), for: session, now: now, into: &outbox)
            return
        }
        process(message, session: session, now: now, into: &outbox)
    }

    /// Runs one command whose turn has come.
    mutating func process(_ message: IRCMessage, session: Session, now: Timestamp, into outbox: inout Outbox) {
        let connection = session.id
        let label = session.has(.labeledResponse) ? validLabel(message.tagValue("label")) : nil

        var context = CommandContext(connection: connection, now: now, label: label, session: session)
        // Commands nearly always arrive in upper case already; only fold the others.
        let verb = message.command.utf8Contains(where: { $0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z") }) ? message.command.uppercased() : message.command
        context.verb = verb
        let deliveriesBefore = outbox.deliveries.count
        do throws(CommandError) {
            // The message path's own verb skips hashing it (the parser gives it as a literal).
            guard let command = verb == "PRIVMSG" ? Self.privmsgCommand : Self.commandTable[verb] else {
                throw .numeric(.errUnknownCommand, message.command, "Unknown command")
            }
            if !command.allowedBeforeRegistration && !session.isRegistered {
                throw .numeric(.errNotRegistered, "You have not registered")
            }
            if message.parameters.count < command.minimumParameters {
                throw .needMoreParameters(verb)
            }
            try command.handler(&self, message, &context, &outbox)
        } catch {
            render(error, in: &context)
        }
        if isClustered, publishCommand(message, verb: verb, session: session, replicationTags: context.replicationTags,
                                       replicatedParameters: context.replicatedParameters, now: now, into: &outbox) {
            leaveLinesToTheirNodes(queuedSince: deliveriesBefore, in: &outbox)
        }
        if !context.pendingStores.isEmpty {
            finishDurably(&context, into: &outbox)
        } else if session.storesInFlight > 0 {
            finishBehindStores(&context, into: &outbox)
        } else {
            finish(&context, into: &outbox)
        }
    }

    /// A line that could not be parsed: too long, or not UTF-8. `command` and `label` are taken
    /// from a lossy reading of the line so the reply can name what was refused.
    public mutating func receiveInvalidLine(_ problem: InvalidLine, command: String?, label: String?, from connection: ConnectionID, now: Timestamp, into outbox: inout Outbox) {
        guard let session = sessions[connection] else { return }
        if session.pendingTickets > 0 || !session.heldCommands.isEmpty {
            hold(.invalid(problem, command: command, label: label), for: session, now: now, into: &outbox)
            return
        }
        processInvalidLine(problem, command: command, label: label, session: session, now: now, into: &outbox)
    }

    mutating func processInvalidLine(_ problem: InvalidLine, command: String?, label: String?, session: Session, now: Timestamp, into outbox: inout Outbox) {
        let connection = session.id
        let effectiveLabel = session.has(.labeledResponse) ? validLabel(label) : nil
        var context = CommandContext(connection: connection, now: now, label: effectiveLabel)
        switch problem {
        case .tooLong:
            render(.numeric(.errInputTooLong, "Input line was too long"), in: &context)
        case .invalidUTF8:
            render(.fail(command ?? "*", "INVALID_UTF8", description: "Message rejected because it was not valid UTF-8"), in: &context)
        case .malformed:
            render(.fail(command ?? "*", "INVALID_MESSAGE", description: "Malformed message"), in: &context)
        }
        if session.storesInFlight > 0 {
            finishBehindStores(&context, into: &outbox)
        } else {
            finish(&context, into: &outbox)
        }
    }

    public enum InvalidLine: Sendable {
        case tooLong, invalidUTF8, malformed
    }

    /// Keeps a command until the connection's password check has completed. Past the bound the
    /// connection is closed, as the shell's flood queue does.
    mutating func hold(_ command: HeldCommand, for session: Session, now: Timestamp, into outbox: inout Outbox) {
        if session.heldCommands.count >= configuration.maxHeldCommands {
            disconnect(session.id, reason: "Excess Flood", now: now, into: &outbox)
            return
        }
        session.heldCommands.append(command)
    }

    /// Runs the commands a connection sent while its password check was in flight, until they
    /// are done or one of them starts another check.
    mutating func releaseHeldCommands(_ connection: ConnectionID, now: Timestamp, into outbox: inout Outbox) {
        while let session = sessions[connection], session.pendingTickets == 0, !session.heldCommands.isEmpty {
            switch session.heldCommands.removeFirst() {
            case .message(let message):
                process(message, session: session, now: now, into: &outbox)
            case .invalid(let problem, let command, let label):
                processInvalidLine(problem, command: command, label: label, session: session, now: now, into: &outbox)
            }
        }
    }

    /// The socket closed (or the shell decided to close it): forget the connection.
    public mutating func connectionClosed(_ connection: ConnectionID, reason: String, now: Timestamp, into outbox: inout Outbox) {
        guard sessions[connection] != nil else { return }
        removeSession(connection, quitMessage: reason, now: now, into: &outbox)
    }

    /// Closes a connection from the server side: `ERROR` to the client, then the socket.
    public mutating func disconnect(_ connection: ConnectionID, reason: String, now: Timestamp, into outbox: inout Outbox) {
        guard let session = sessions[connection] else { return }
        send(IRCMessage(command: "ERROR", parameters: ["Closing link: \(session.host) (\(reason))"]), to: connection, into: &outbox)
        outbox.actions.append(.close(connection))
        removeSession(connection, quitMessage: reason, now: now, into: &outbox)
    }

    /// Periodic housekeeping: PINGs to quiet clients, and timeouts.
    public mutating func tick(now: Timestamp, into outbox: inout Outbox) {
        var timedOut: [(ConnectionID, String)] = []
        for session in sessions.values where isLocal(session.id) {
            let id = session.id
            if !session.isRegistered, now.milliseconds(since: session.connectedAt) > configuration.registrationTimeoutMilliseconds {
                timedOut.append((id, "Registration timed out"))
            } else if let pingSent = session.pingSentAt {
                if now.milliseconds(since: pingSent) > configuration.pingTimeoutMilliseconds {
                    timedOut.append((id, "Ping timeout: \(now.milliseconds(since: session.lastActivity) / 1000) seconds"))
                }
            } else if now.milliseconds(since: session.lastActivity) > configuration.pingIntervalMilliseconds {
                session.pingSentAt = now
                send(IRCMessage(command: "PING", parameters: [configuration.serverName]), to: id, into: &outbox)
            }
        }
        for (id, reason) in timedOut {
            disconnect(id, reason: reason, now: now, into: &outbox)
        }
        forgetRecentSendsOfLoggedOutAccounts(now: now)
        pruneHistoryIfDue(now: now, into: &outbox)
    }

    /// Tells every client the server is going away and closes them all.
    public mutating func shutdown(reason: String, now: Timestamp, into outbox: inout Outbox) {
        for id in sessions.keys.sorted() where isLocal(id) {
            disconnect(id, reason: reason, now: now, into: &outbox)
        }
    }

    mutating func removeSession(_ connection: ConnectionID, quitMessage: String, now: Timestamp, into outbox: inout Outbox) {
        guard let session = sessions[connection] else { return }
        let publishesClose = isClustered && isLocal(connection) && session.isRegistered
        if publishesClose {
            outbox.clusterEvents.append(.closed(connection, reason: quitMessage, at: now))
        }
        let deliveriesBefore = outbox.deliveries.count
        leaveChannelsOnQuit(session, reason: quitMessage, into: &outbox)
        if publishesClose { leaveLinesToTheirNodes(queuedSince: deliveriesBefore, in: &outbox) }
        sessions[connection] = nil
        if session.accountKey == nil {
            forgetTransientMarkers(of: guestIdentity(of: connection))
            readMarkers[guestIdentity(of: connection)] = nil
            userMetadata[guestIdentity(of: connection)] = nil
        }
        if session.isRegistered { registeredSessionCount -= 1 }
        visibleUsers.remove(connection)
        operators.remove(connection)
        for nick in session.monitoredNicks { stopWatching(nick, by: session) }
        guard session.isRegistered, let nick = session.nick else { return }
        recordWhowas(session, now: now)
        guard var holder = nickIndex[nick.folded] else { return }
        holder.connections.removeAll { $0 == connection }
        if holder.connections.isEmpty {
            nickIndex[nick.folded] = nil
            if let key = session.accountKey {
                forgetTransientMarkers(of: key)
                recentSends[key]?.forgetAt = now.adding(milliseconds: Self.resendWindowMilliseconds)
                accounts[key]?.lastSeen = now.date
                outbox.actions.append(.recordLastSeen(accountKey: key, at: now))
            }
            notifyMonitors(nick: nick, online: false, session: session, into: &outbox)
        } else {
            nickIndex[nick.folded] = holder
        }
    }

    mutating func recordWhowas(_ session: Session, now: Timestamp) {
        if let entry = whowasEntry(session, now: now) { recordWhowas(entry) }
    }

    /// What WHOWAS will say of this session as it is now (taken before a nick change).
    func whowasEntry(_ session: Session, now: Timestamp) -> WhowasEntry? {
        guard let nick = session.nick else { return nil }
        return WhowasEntry(
            nick: nick.name, folded: nick.folded, username: session.displayUsername, host: session.host,
            realname: session.realname, accountName: session.accountName, leftAt: now)
    }

    mutating func recordWhowas(_ entry: WhowasEntry) {
        guard configuration.whowasLength > 0 else { return }
        if whowas.count >= configuration.whowasLength { whowas.removeFirst(whowas.count - configuration.whowasLength + 1) }
        whowas.append(entry)
    }

    // MARK: - Rendering replies

    /// Labels must be short opaque tokens; anything else is ignored rather than echoed back.
    func validLabel(_ label: String?) -> String? {
        guard let label, !label.isEmpty, label.utf8.count <= 64 else { return nil }
        return label
    }

    func render(_ error: CommandError, in context: inout CommandContext) {
        guard sessions[context.connection] != nil else { return }
        switch error.reply {
        case .numeric(let numeric, let parameters):
            numericReply(numeric, parameters, in: &context)
        case .standard(let verb, let command, let code, let contextParameters, let description):
            context.replies.append(standardLine(verb, command, code, contextParameters, description))
        }
    }

    func numericReply(_ numeric: Numeric, _ parameters: [String], in context: inout CommandContext) {
        context.replies.append(self.numeric(numeric, parameters, for: context.connection))
    }

    /// A numeric addressed to a connection (by its nick, or `*` before it has one).
    func numeric(_ numeric: Numeric, _ parameters: [String], for connection: ConnectionID) -> IRCMessage {
        IRCMessage(source: configuration.serverName, command: numeric.rawValue,
                   parameters: [sessions[connection]?.replyName ?? "*"] + parameters)
    }

    /// An IRCv3 standard reply: `FAIL|WARN|NOTE <command> <code> [context...] :description`.
    func standardLine(_ verb: String, _ command: String, _ code: String, _ contextParameters: [String], _ description: String) -> IRCMessage {
        IRCMessage(source: configuration.serverName, command: verb, parameters: [command, code] + contextParameters + [description])
    }

    /// Sends the collected replies of one command, applying labeled-response: no reply becomes
    /// `ACK`, one reply carries the label, several are wrapped in a `labeled-response` batch.
    mutating func finish(_ context: inout CommandContext, into outbox: inout Outbox) {
        // Most messages have nothing to reply: no session lookup for them.
        if context.replies.isEmpty && context.label == nil { return }
        guard !context.connectionClosed, !context.repliesDeferred, let session = sessions[context.connection] else { return }
        guard let label = context.label else {
            for reply in context.replies { send(reply, to: context.connection, session: session, into: &outbox) }
            return
        }
        switch context.replies.count {
        case 0:
            send(IRCMessage(tags: [IRCTag("label", label)], source: configuration.serverName, command: "ACK"),
                 to: context.connection, session: session, into: &outbox)
        case 1:
            var reply = context.replies[0]
            reply.tags.insert(IRCTag("label", label), at: 0)
            send(reply, to: context.connection, session: session, into: &outbox)
        default:
            guard session.has(.batch) else {
                var first = context.replies[0]
                first.tags.insert(IRCTag("label", label), at: 0)
                send(first, to: context.connection, session: session, into: &outbox)
                for reply in context.replies.dropFirst() { send(reply, to: context.connection, session: session, into: &outbox) }
                return
            }
            let reference = makeBatchReference()
            send(IRCMessage(tags: [IRCTag("label", label)], source: configuration.serverName, command: "BATCH",
                            parameters: ["+" + reference, "labeled-response"]),
                 to: context.connection, session: session, into: &outbox)
            for var reply in context.replies {
                // A line inside a nested batch (chat history) already names its batch.
                if !reply.tags.contains(where: { $0.key == "batch" }) {
                    reply.tags.insert(IRCTag("batch", reference), at: 0)
                }
                send(reply, to: context.connection, session: session, into: &outbox)
            }
            send(IRCMessage(source: configuration.serverName, command: "BATCH", parameters: ["-" + reference]),
                 to: context.connection, session: session, into: &outbox)
        }
    }

    mutating func makeBatchReference() -> String {
        defer { nextBatchNumber += 1 }
        return "b" + String(nextBatchNumber, radix: 36)
    }

    /// Encodes and queues one line, dropping tags the receiving client has not asked for.
    func send(_ message: IRCMessage, to connection: ConnectionID, into outbox: inout Outbox) {
        guard let session = sessions[connection] else { return }
        send(message, to: connection, session: session, into: &outbox)
    }

    func send(_ message: IRCMessage, to connection: ConnectionID, session: Session, into outbox: inout Outbox) {
        outbox.write(to: connection, allocator: allocator) { buffer in
            if message.tags.isEmpty {
                message.write(to: &buffer)
            } else {
                message.write(to: &buffer, includingTag: { Self.tagAllowed($0.key, session) })
            }
        }
    }

    /// Tags tied to a capability go only to clients that asked for it; the rest need message-tags.
    static func tagAllowed(_ key: String, _ session: Session) -> Bool {
        switch key {
        case "time": session.has(.serverTime)
        case "label": session.has(.labeledResponse)
        case "batch": session.has(.batch)
        case "account": session.has(.accountTag)
        default: session.has(.messageTags)
        }
    }
}

extension Timestamp {
    public init(_ date: Date) {
        self.init(millisecondsSince1970: Int64((date.timeIntervalSince1970 * 1000).rounded()))
    }

    public var date: Date { Date(timeIntervalSince1970: Double(millisecondsSince1970) / 1000) }
}


