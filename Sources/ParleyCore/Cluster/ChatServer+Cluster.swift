import IRCWire
import NIOCore

/// The cluster side of the domain: what a node publishes about its own users, and how it applies
/// what the other nodes publish (see `ClusterEvent` for who decides what).
extension ChatServer {
    var isClustered: Bool { configuration.clusterNode != 0 }

    /// Whether a connection is on this node (every connection, when the server runs alone).
    public func isLocal(_ connection: ConnectionID) -> Bool { connection.node == configuration.clusterNode }

    /// A connection id that names no session, for contexts that answer nobody directly.
    static let nobody = ConnectionID(0)

    // MARK: Channel lines, per node

    /// Whether this node writes a channel's line to `member` itself: its own connections, and
    /// those of a node that does not write channel lines to its members (an earlier version).
    /// The other nodes' members get the line from their own node (`fanOut`).
    @inline(__always)
    func addressesDirectly(_ member: ConnectionID) -> Bool {
        isLocal(member) || !channelLineNodes.contains(member.node)
    }

    /// Hands a channel's line to the nodes in `channelLineNodes`, each of which writes it to its
    /// own members of the channel (`deliverChannelLine`). Their member lists, not this node's
    /// copy of them, say who gets it: someone who has just joined there, before this node heard
    /// of it, gets it too, and each gets the tags of their capabilities as that node knows them.
    func fanOut(_ line: IRCMessage, channel key: String, statusPrefix: Character?, into outbox: inout Outbox) {
        guard !channelLineNodes.isEmpty else { return }
        var encoded = allocator.buffer(capacity: 128 + (line.parameters.last?.utf8.count ?? 0))
        line.write(to: &encoded)
        outbox.channelLines.append(Outbox.ChannelLine(channel: key, statusPrefix: statusPrefix?.asciiValue, line: encoded,
                                                      afterDeliveries: outbox.deliveries.count))
    }

    /// Another node's line for a channel's members (its `Outbox.channelLines`): written to this
    /// node's members of the channel, as that node wrote it to its own (the sender's node left out
    /// its sender). A channel this node does not know has no members here.
    public mutating func deliverChannelLine(_ encoded: ByteBuffer, channel key: String, statusPrefix: UInt8?, into outbox: inout Outbox) {
        guard let channel = channels[key], channel.joined.contains(where: isLocal),
              let body = encoded.getSlice(at: encoded.readerIndex, length: max(0, encoded.readableBytes - 2)),
              let line = try? IRCMessage(parsing: body, maxTagsBytes: .max, maxBodyBytes: .max) else { return }
        // What the sender's node asks of a receiver for these lines (`relayToChannel`, `redactInChannel`).
        let required: Capability? = switch line.command {
        case "TAGMSG": .messageTags
        case "REDACT": .messageRedaction
        default: nil
        }
        let status = statusPrefix.map { Character(Unicode.Scalar($0)) }
        var encodings = EncodingCache()
        for (member, session) in zip(channel.joined, channel.joinedSessions) where isLocal(member) {
            if let required, !session.has(required) { continue }
            guard Self.hasStatus(status, member, session, in: channel) else { continue }
            outbox.send(encodings.line(line, for: session, allocator: allocator), to: member)
            if line.command != "REDACT" { counters.deliveries &+= 1 }
        }
    }

    /// Whether a member is reached by a STATUSMSG with this prefix (`@`: operators and up; `+`:
    /// voiced and up); every member when there is none.
    static func hasStatus(_ statusPrefix: Character?, _ member: ConnectionID, _ session: Session, in channel: ChatChannel) -> Bool {
        guard let statusPrefix else { return true }
        if statusPrefix == "@" { return channel.role(of: member, account: session.accountKey) >= .op }
        return channel.maySpeakAsPrivileged(member, account: session.accountKey)
    }

    /// Another node writes channel lines to its own members (it said so after its hello, or in
    /// answer to this node's): from now on it is sent one line per channel message, not one per
    /// member. Forgotten when it goes away or starts again (`remoteNodeGone`).
    public mutating func peerWritesChannelLines(_ node: UInt16) {
        guard isClustered, node != configuration.clusterNode else { return }
        channelLineNodes.insert(node)
    }

    /// Another node said its name (`ClusterRecord.nodeName`).
    public mutating func peerNamed(_ node: UInt16, _ name: String) {
        guard isClustered, node != configuration.clusterNode else { return }
        peerNames[node] = name
    }

    /// Whether a message id names no node that is up: neither this one nor another live node,
    /// when every other node this one knows of has said its name (one of an earlier version
    /// does not, and may be the one the id names).
    func namesNoLiveNode(_ messageID: String) -> Bool {
        guard let dot = messageID.firstIndex(of: ".") else { return true }
        let node = String(messageID[..<dot])
        if node == configuration.clusterNodeName || peerNames.values.contains(node) { return false }
        let knownNodes = channelLineNodes.union(sessions.keys.lazy.map(\.node).filter { $0 != configuration.clusterNode })
        return knownNodes.allSatisfy { peerNames[$0] != nil }
    }

    /// Of another node's command run here, only the lines for this node's users count: its
    /// actions, events and replies are that node's.
    func keepLinesForLocalUsers(of effects: Outbox, into outbox: inout Outbox) {
        for delivery in effects.deliveries where isLocal(delivery.connection) { outbox.deliveries.append(delivery) }
    }

    // MARK: Publishing

    /// After a local command: the others run it too when it changes shared state. True when
    /// it was published.
    mutating func publishCommand(_ message: IRCMessage, verb: String, session: Session, replicationTags: [IRCTag],
                                 replicatedParameters: [String]?, now: Timestamp, into outbox: inout Outbox) -> Bool {
        guard isClustered, session.isRegistered, isLocal(session.id), sessions[session.id] != nil else { return false }
        let changesSharedState = Self.replicatedCommands.contains(verb)
            || ((verb == "PRIVMSG" || verb == "NOTICE") && message.parameters.first.map(fold) == "chanserv")
            || (verb == "METADATA" && message.parameters.count > 1 && Self.replicatedMetadataSubcommands.contains(message.parameters[1].uppercased()))
        guard changesSharedState, replicatedParameters?.isEmpty != true else { return false }
        // What this node decided travels with the command; a client's own tags under the
        // nodes' prefix are never passed on as if a node had set them.
        var replicated = message
        if let replicatedParameters { replicated.parameters = replicatedParameters }
        replicated.tags.removeAll { $0.key.hasPrefix(Self.replicationTagPrefix) }
        replicated.tags += replicationTags
        outbox.clusterEvents.append(.command(session.id, replicated, at: now))
        return true
    }

    /// Tags that nodes add to a replicated command, which a client's command never carries on.
    static let replicationTagPrefix = "parley/"
    /// The msgid the deciding node gave the line a command sent (TOPIC), so that every node's
    /// copy of that line has it.
    static let eventMessageIDTag = "parley/event-msgid"
    /// The channels (keys, comma-separated) a JOIN made on its node: a node that already has
    /// one of them (made for its own user in the same instant) makes this joiner an operator
    /// too, as that node did, so that both nodes agree on who leads the channel.
    static let createdChannelsTag = "parley/created"

    /// A channel this node had when another node's JOIN said that node made it (`createdChannelsTag`):
    /// both made it in the same instant, each for its own user, and this was this node's claim.
    struct ChannelClaim {
        let key: String
        /// The owning account when this node's channel is a group.
        let owner: String?
        let createdAt: Timestamp
    }

    /// Of the channels another node's JOIN made there, those this node already has.
    func channelsMadeHereToo(by message: IRCMessage) -> [ChannelClaim] {
        guard message.command == "JOIN", let made = message.tagValue(Self.createdChannelsTag) else { return [] }
        return made.split(separator: ",").compactMap { key in
            channels[String(key)].map { ChannelClaim(key: $0.key, owner: $0.owner, createdAt: $0.createdAt) }
        }
    }

    /// Two nodes made one channel in the same instant, each for its own user, before either
    /// heard of the other's: every node must end with the same channel, whichever claim it heard
    /// first. A group beats a guests' channel; of two groups the one made first wins (the
    /// account key that sorts first on a tie), as IRC servers settle a channel made on both
    /// sides of a split by its creation time; two guests' channels are one led by both guests
    /// (`join`). The losing creator stays as a plain member, with a MODE line and a NOTICE that
    /// say why. Called after the joiner's JOIN ran here, when this node's claim was the other;
    /// a node that settles two groups stores the result, whichever won.
    mutating func settleChannelsMadeTwice(_ claims: [ChannelClaim], joiner: ConnectionID, at time: Timestamp, into outbox: inout Outbox) {
        guard let joinerSession = sessions[joiner], let winner = joinerSession.accountKey else { return }
        var context = CommandContext(connection: Self.nobody, now: time, label: nil)
        for claim in claims {
            if let owner = claim.owner {
                guard owner != winner else { continue }
                if (claim.createdAt, owner) < (time, winner) {
                    // This node's group stands (made first); the JOIN made the other creator a
                    // member. Stored as settled here too: the other node may die before it
                    // rewrites the group.
                    if let channel = channels[claim.key] { persist(channel, into: &outbox) }
                    continue
                }
            }
            guard var channel = channels.removeValue(forKey: claim.key) else { continue }
            var changes: [(sign: Character, mode: Character, argument: String?)] = []
            func nick(ofAccount account: String) -> String? {
                channel.joinedSessions.first { $0.accountKey == account }?.nick?.name
            }
            if let loser = claim.owner {
                setMembership(loser, .member, in: &channel)
                if let loserNick = nick(ofAccount: loser) { changes.append(("-", "q", loserNick)) }
            } else {
                // A guests' channel becomes the group: its guests keep their seats, not their ranks.
                for (connection, role) in channel.guestRoles where role >= .op {
                    if let guestNick = sessions[connection]?.nick?.name { changes.append(("-", "o", guestNick)) }
                }
                channel.guestRoles = [:]
                channel.voicedGuests = []
                if !channel.inviteOnly { changes.insert(("+", "i", nil), at: 0) }
                channel.inviteOnly = true
                forgetReadMarkers(ofTransientChannel: channel.key)
            }
            channel.owner = winner
            channel.createdAt = min(channel.createdAt, time)
            setMembership(winner, .owner, in: &channel)
            if let winnerNick = joinerSession.nick?.name { changes.insert(("+", "q", winnerNick), at: 0) }
            channels[channel.key] = channel
            // The losing group's rows are rewritten as the winner's.
            if claim.owner != nil { persist(channel, into: &outbox) }

            let winnerName = accounts[winner]?.name ?? joinerSession.nick?.name ?? winner
            let mode = IRCMessage(source: Self.chanServPrefix, command: "MODE", parameters: [channel.name] + Self.modeParameters(changes))
            let why = "\(channel.name) was also made by \(winnerName) on another server at the same moment; \(winnerName) made it first and owns it"
            for member in channel.joined where isLocal(member) {
                emit(mode, to: member, &context, &outbox)
                // The losing side: the losing group's owner, or the guests of a guests' channel.
                guard let memberSession = sessions[member], memberSession.id != joiner, memberSession.accountKey == claim.owner else { continue }
                emit(IRCMessage(source: Self.chanServPrefix, command: "NOTICE", parameters: [memberSession.nick?.name ?? "*", why]),
                     to: member, &context, &outbox)
            }
        }
    }

    /// After a local command or close the other nodes run too: what it queued for the users of
    /// nodes that write their own users' lines is dropped, since those nodes write it when they
    /// run the command, from what they know (a member who joined there a moment before this
    /// node heard of it included).
    func leaveLinesToTheirNodes(queuedSince start: Int, in outbox: inout Outbox) {
        guard !channelLineNodes.isEmpty, outbox.deliveries.count > start else { return }
        var kept = start
        for position in start..<outbox.deliveries.count {
            let delivery = outbox.deliveries[position]
            if !isLocal(delivery.connection) && channelLineNodes.contains(delivery.connection.node) { continue }
            outbox.deliveries[kept] = delivery
            kept += 1
        }
        let removed = outbox.deliveries.count - kept
        outbox.deliveries.removeLast(removed)
        // Channel lines queued after those keep their place among what is left.
        for index in outbox.channelLines.indices where outbox.channelLines[index].afterDeliveries > start {
            outbox.channelLines[index].afterDeliveries = max(start, outbox.channelLines[index].afterDeliveries - removed)
        }
    }

    /// A local connection registered, or its account changed after registration.
    func publishSession(_ connection: ConnectionID, into outbox: inout Outbox) {
        guard isClustered, isLocal(connection), let snapshot = snapshot(of: connection) else { return }
        outbox.clusterEvents.append(.session(snapshot))
    }

    func publishAccount(_ key: String, into outbox: inout Outbox) {
        guard isClustered, let record = accounts[key] else { return }
        outbox.clusterEvents.append(.account(record))
    }

    func snapshot(of connection: ConnectionID) -> SessionSnapshot? {
        guard let session = sessions[connection], session.isRegistered, let nick = session.nick else { return nil }
        let transient = session.channels.compactMap { key in channels[key].flatMap { $0.isGroup ? nil : $0.name } }.sorted()
        return SessionSnapshot(
            connection: connection, host: session.host, isSecure: session.isSecure, connectedAt: session.connectedAt,
            nick: nick.name, username: session.displayUsername, realname: session.realname, accountKey: session.accountKey,
            awayMessage: session.awayMessage, isOperator: session.isOperator, isInvisible: session.isInvisible,
            capabilityBits: session.capabilities.bits, channels: transient, monitoredNicks: session.monitoredNicks.sorted(),
            metadataSubscriptions: session.metadataSubscriptions.sorted(), metadata: userMetadata[metadataOwner(of: session)] ?? [:],
            guestIdentityPrefix: guestIdentityPrefix)
    }

    /// Every registered connection of this node, for a node that has just (re)started.
    public func localSessionSnapshots() -> [SessionSnapshot] {
        sessions.keys.filter(isLocal).sorted().compactMap(snapshot(of:))
    }

    /// What a node that has just (re)started learns of this node's users: the accounts they
    /// are logged in to, then the connections. (An account made here just before this node
    /// heard of that node was announced to the others only, and a login to it there would fail.)
    public func localSessionAnnouncements() -> [ClusterEvent] {
        let snapshots = localSessionSnapshots()
        var announced: Set<String> = []
        var events: [ClusterEvent] = []
        for snapshot in snapshots {
            guard let key = snapshot.accountKey, announced.insert(key).inserted, let record = accounts[key] else { continue }
            events.append(.account(record))
        }
        return events + snapshots.map { .session($0) }
    }

    /// What a node that has just (re)started, or is back after losing the database, needs to
    /// see transient channels as the others do: the settings and recent history of the channels
    /// this node's users are in (their snapshots, sent before, make the channels there). Each
    /// node with members sends it; the receiver keeps each message once.
    public func transientChannelAnnouncements() -> [ClusterEvent] {
        var events: [ClusterEvent] = []
        for key in channels.keys.sorted() {
            guard let channel = channels[key], !channel.isGroup, channel.joined.contains(where: isLocal) else { continue }
            events.append(.channelState(Self.state(of: channel)))
            for message in channel.recentHistory.messages where !channel.recentHistory.redacted.contains(message.id) {
                events.append(.recentMessage(message))
            }
        }
        return events
    }

    static func state(of channel: ChatChannel) -> TransientChannelState {
        func entries(_ list: [BanEntry]) -> [TransientChannelState.ListEntry] {
            list.map { .init(mask: $0.mask, setBy: $0.setBy, setAt: $0.setAt.millisecondsSince1970) }
        }
        return TransientChannelState(
            name: channel.name, createdAt: channel.createdAt.millisecondsSince1970, topic: channel.topic, topicSetBy: channel.topicSetBy,
            topicSetAt: channel.topicSetAt?.millisecondsSince1970, modes: channel.flagModes, key: channel.password, limit: channel.userLimit,
            bans: entries(channel.bans), banExceptions: entries(channel.banExceptions), inviteExceptions: entries(channel.inviteExceptions),
            invitedNicks: channel.invitedNicks.sorted(),
            ranks: Dictionary(uniqueKeysWithValues: channel.guestRoles.filter { $0.value != .member }.map { ($0.key.rawValue, $0.value.rawValue) }),
            voiced: channel.voicedGuests.map(\.rawValue).sorted(), metadata: channel.metadata)
    }

    /// A started node's copy of a transient channel takes the settings the others keep. Ranks
    /// and voice are those of members this node knows to be in it (the snapshots came first).
    mutating func applyChannelState(_ state: TransientChannelState) {
        guard var channel = channels[fold(state.name)], !channel.isGroup else { return }
        func entries(_ list: [TransientChannelState.ListEntry]) -> [BanEntry] {
            list.map { BanEntry(mask: $0.mask, setBy: $0.setBy, setAt: Timestamp(millisecondsSince1970: $0.setAt)) }
        }
        channel.createdAt = Timestamp(millisecondsSince1970: state.createdAt)
        channel.topic = state.topic
        channel.topicSetBy = state.topicSetBy
        channel.topicSetAt = state.topicSetAt.map(Timestamp.init(millisecondsSince1970:))
        channel.inviteOnly = state.modes.contains("i")
        channel.topicProtected = state.modes.contains("t")
        channel.noOutsideMessages = state.modes.contains("n")
        channel.moderated = state.modes.contains("m")
        channel.secret = state.modes.contains("s")
        channel.noCTCP = state.modes.contains("C")
        channel.password = state.key
        channel.userLimit = state.limit
        channel.bans = entries(state.bans)
        channel.banExceptions = entries(state.banExceptions)
        channel.inviteExceptions = entries(state.inviteExceptions)
        channel.invitedNicks = Set(state.invitedNicks)
        channel.guestRoles = [:]
        for (raw, rank) in state.ranks {
            let connection = ConnectionID(raw)
            if channel.contains(connection), let role = ChannelRole(rawValue: rank) { channel.guestRoles[connection] = role }
        }
        channel.voicedGuests = Set(state.voiced.map(ConnectionID.init).filter(channel.contains))
        channel.metadata = state.metadata
        channels[channel.key] = channel
    }

    // MARK: Applying

    /// Applies one event from another node. Lines in `outbox` are only those this node owes:
    /// the messages it holds for an account that came online elsewhere, and receipts.
    public mutating func applyClusterEvent(_ event: ClusterEvent, now: Timestamp, into outbox: inout Outbox) {
        switch event {
        case .session(let snapshot):
            applyRemoteSession(snapshot, now: now, into: &outbox)
        case .command(let connection, let message, let time):
            guard !isLocal(connection), let session = sessions[connection] else { return }
            let before = Session(snapshotOf: session)
            let madeHereToo = channelsMadeHereToo(by: message)
            var effects = Outbox()
            process(message, session: session, now: time, into: &effects)
            forgetPendingWork(of: connection)
            if !madeHereToo.isEmpty { settleChannelsMadeTwice(madeHereToo, joiner: connection, at: time, into: &outbox) }
            if channelLineNodes.contains(connection.node) {
                // That node left this node's users' lines to it (`leaveLinesToTheirNodes`).
                keepLinesForLocalUsers(of: effects, into: &outbox)
            } else if let oldNick = before.nick, let newNick = sessions[connection]?.nick, oldNick.folded != newNick.folded {
                // A node of an earlier version wrote every line but MONITOR's, which is local.
                if nickIndex[oldNick.folded] == nil { notifyMonitors(nick: oldNick, online: false, session: before, into: &outbox) }
                notifyMonitors(nick: newNick, online: true, session: session, into: &outbox)
            }
        case .closed(let connection, let reason, let time):
            guard !isLocal(connection), let session = sessions[connection] else { return }
            var effects = Outbox()
            removeSession(connection, quitMessage: reason, now: time, into: &effects)
            if channelLineNodes.contains(connection.node) {
                keepLinesForLocalUsers(of: effects, into: &outbox)
            } else if let nick = session.nick, nickIndex[nick.folded] == nil {
                notifyMonitors(nick: nick, online: false, session: session, into: &outbox)
            }
        case .read(let account, let conversation, let time, let disclose):
            if readMarkers[account]?[conversation].map({ $0 < time }) ?? true {
                readMarkers[account, default: [:]][conversation] = time
            }
            if disclose { noteDisclosedRead(account: account, conversation: conversation, time: time, now: now) }
            var context = CommandContext(connection: Self.nobody, now: now, label: nil)
            sendReadReceipts(account: account, conversation: conversation, time: time, disclose: disclose, &context, &outbox)
        case .redacted(let id):
            forgetRedactedHere(id)
        case .redactRequest(let connection, let channel, let id, let reason):
            redactForAnotherNode(connection, channelKey: channel, messageID: id, reason: reason, now: now, into: &outbox)
        case .recentMessage(let message):
            guard channels[message.target]?.isGroup == false else { return }
            channels[message.target]?.recentHistory.append(message, capacity: configuration.transientChannelHistoryLength,
                                                           maxBytes: configuration.transientChannelHistoryBytes)
        case .recentRedacted(let channel, let id):
            guard channels[channel]?.isGroup == false else { return }
            channels[channel]?.recentHistory.redact(id)
        case .channelState(let state):
            applyChannelState(state)
        case .account(let record):
            let previous = accounts[record.key]
            accounts[record.key] = record
            // The last-seen time is this node's to keep up to date as well; a stale copy of the
            // record must not move it back.
            if let seen = previous?.lastSeen, (record.lastSeen ?? .distantPast) < seen { accounts[record.key]?.lastSeen = seen }
        }
    }

    /// A remote connection is known from now on (or its account changed): it is listed, its nick
    /// is taken, it is in its account's groups. Then this node hands over what it holds for the
    /// account, as it would to one of its own connections logging in.
    mutating func applyRemoteSession(_ snapshot: SessionSnapshot, now: Timestamp, into outbox: inout Outbox) {
        let id = snapshot.connection
        guard !isLocal(id), let nick = try? Nickname(snapshot.nick, caseMapping: configuration.caseMapping, maxLength: 64) else { return }
        // Before anything names its guests. A node that restarted said hello first, so its earlier
        // run's users are gone by now, and its earlier prefix with them.
        if let prefix = snapshot.guestIdentityPrefix { remoteGuestIdentityPrefixes[id.node] = prefix }
        var silent = Outbox()
        var silentContext = CommandContext(connection: id, now: now, label: nil)
        let session: Session
        let accountChanged: Bool
        let wasOnline = nickIndex[nick.folded] != nil
        if let existing = sessions[id] {
            session = existing
            accountChanged = existing.accountKey != snapshot.accountKey
            if let old = existing.nick, old.folded != nick.folded || accountChanged {
                detachFromNick(id, folded: old.folded)
            }
        } else {
            session = Session(id: id, host: snapshot.host, isSecure: snapshot.isSecure, connectedAt: snapshot.connectedAt)
            sessions[id] = session
            session.isRegistered = true
            registeredSessionCount += 1
            maximumUsersSeen = max(maximumUsersSeen, registeredSessionCount)
            accountChanged = snapshot.accountKey != nil
        }
        let needsIndex = session.nick?.folded != nick.folded || accountChanged || nickIndex[nick.folded]?.connections.contains(id) != true
        session.nick = nick
        session.username = snapshot.username
        session.realname = snapshot.realname
        session.accountKey = snapshot.accountKey
        session.accountName = snapshot.accountKey.flatMap { accounts[$0]?.name } ?? snapshot.accountKey
        session.awayMessage = snapshot.awayMessage
        session.isOperator = snapshot.isOperator
        session.isInvisible = snapshot.isInvisible
        session.capabilities = CapabilitySet(bits: snapshot.capabilityBits)
        if snapshot.isInvisible { visibleUsers.remove(id) } else { visibleUsers.insert(id) }
        if snapshot.isOperator { operators.insert(id) } else { operators.remove(id) }
        session.metadataSubscriptions = Set(snapshot.metadataSubscriptions)
        // A node that starts learns the metadata users set before (it is kept in memory only).
        if !snapshot.metadata.isEmpty, userMetadata[metadataOwner(of: session)] == nil {
            userMetadata[metadataOwner(of: session)] = snapshot.metadata
        }
        if needsIndex, let holder = nickIndex[nick.folded], holder.accountKey == nil || holder.accountKey != snapshot.accountKey,
           let local = holder.connections.first(where: isLocal).flatMap({ sessions[$0] }) {
            // Two nodes gave one nick to two people at the same moment. Both nodes settle it the
            // same way: the one that loses renames its own user, and the other nodes follow
            // that NICK; until then the loser is known here but does not hold the nick.
            if Self.remoteWinsNick(local: local, remote: snapshot) {
                yieldNick(holder.connections.filter(isLocal), to: snapshot.nick, now: now, into: &outbox)
            } else {
                return finishApplying(snapshot, session: session, nick: nick, wasOnline: true, accountChanged: accountChanged,
                                      silent: &silent, silentContext: &silentContext, now: now, into: &outbox)
            }
        }
        if needsIndex {
            var holder = nickIndex[nick.folded] ?? NickHolder(connections: [], accountKey: snapshot.accountKey)
            if !holder.connections.contains(id) { holder.connections.append(id) }
            nickIndex[nick.folded] = holder
        }
        finishApplying(snapshot, session: session, nick: nick, wasOnline: wasOnline, accountChanged: accountChanged,
                       silent: &silent, silentContext: &silentContext, now: now, into: &outbox)
    }

    private mutating func finishApplying(_ snapshot: SessionSnapshot, session: Session, nick: Nickname, wasOnline: Bool, accountChanged: Bool,
                                         silent: inout Outbox, silentContext: inout CommandContext, now: Timestamp, into outbox: inout Outbox) {
        let id = snapshot.connection
        for watched in snapshot.monitoredNicks where !session.monitoredNicks.contains(watched) {
            session.monitoredNicks.insert(watched)
            monitorWatchers[watched, default: []].insert(id)
        }
        if accountChanged { joinGroupsOfAccount(id, &silentContext, &silent) }
        for name in snapshot.channels where !session.channels.contains(fold(name)) {
            process(IRCMessage(command: "JOIN", parameters: [name]), session: session, now: now, into: &silent)
        }
        forgetPendingWork(of: id)
        if !wasOnline { notifyMonitors(nick: nick, online: true, session: session, into: &outbox) }
        guard accountChanged, snapshot.accountKey != nil else { return }
        var context = CommandContext(connection: Self.nobody, now: now, label: nil)
        deliverBacklog(to: id, &context, &outbox)
    }

    /// Which of two people given the same nick on two nodes keeps it: an account over a guest,
    /// else whoever connected first, else the lower node number. Every node decides the same.
    static func remoteWinsNick(local: Session, remote: SessionSnapshot) -> Bool {
        if (local.accountKey != nil) != (remote.accountKey != nil) { return remote.accountKey != nil }
        if local.connectedAt != remote.connectedAt { return remote.connectedAt < local.connectedAt }
        return remote.connection.node < local.id.node
    }

    /// This node's guests holding `nick` give it up for a free `Guest` nick, and are told why.
    private mutating func yieldNick(_ connections: [ConnectionID], to nick: String, now: Timestamp, into outbox: inout Outbox) {
        for id in connections {
            guard let session = sessions[id], session.accountKey == nil else { continue }
            var number = id.rawValue % 100_000
            var fallback: Nickname?
            while fallback == nil {
                if let candidate = try? Nickname("Guest\(number)", caseMapping: configuration.caseMapping, maxLength: configuration.nickLength),
                   nickIndex[candidate.folded] == nil, accounts[candidate.folded] == nil {
                    fallback = candidate
                }
                number += 1
            }
            var context = CommandContext(connection: id, now: now, label: nil)
            context.replies.append(standardLine("NOTE", "NICK", "NICKNAME_COLLISION", [nick],
                                                "Someone on another server of this network took \(nick) at the same moment; you are now \(fallback!.name)"))
            changeNick(of: id, to: fallback!, context: &context, outbox: &outbox)
            finish(&context, into: &outbox)
            outbox.clusterEvents.append(.command(id, IRCMessage(command: "NICK", parameters: [fallback!.name]), at: now))
        }
    }

    /// Takes a connection out of the entry of the nick it held (before a nick or account change).
    private mutating func detachFromNick(_ id: ConnectionID, folded: String) {
        guard var holder = nickIndex[folded] else { return }
        holder.connections.removeAll { $0 == id }
        nickIndex[folded] = holder.connections.isEmpty ? nil : holder
    }

    /// A command run for a remote connection must not leave it waiting for work that only its
    /// own node does (a password check, a history read): later commands would be held forever.
    private mutating func forgetPendingWork(of connection: ConnectionID) {
        guard let session = sessions[connection], session.pendingTickets > 0 || !session.heldCommands.isEmpty else { return }
        for (ticket, work) in pendingWork where work.connection == connection {
            pendingWork[ticket] = nil
            if work.isPasswordCheck { passwordWorkInFlight -= 1 }
        }
        session.pendingTickets = 0
        session.heldCommands.removeAll()
    }

    /// Another node went away without closing its connections (it was killed, or lost the
    /// database): they are gone. Only this node's users are told here, since the node that
    /// went away cannot tell anyone; each node does the same for its own.
    public mutating func remoteNodeGone(_ node: UInt16, now: Timestamp, into outbox: inout Outbox) {
        guard node != configuration.clusterNode else { return }
        // It starts again (or died again): it follows its messages itself from the store.
        forgetFollowed(ofDeadNode: node)
        // Its next run says again whether it writes channel lines (it may be another version),
        // and its name.
        channelLineNodes.remove(node)
        peerNames[node] = nil
        var scratch = Outbox()
        for id in sessions.keys.filter({ $0.node == node }).sorted() {
            removeSession(id, quitMessage: "Server went away", now: now, into: &scratch)
        }
        for delivery in scratch.deliveries where isLocal(delivery.connection) {
            outbox.send(delivery.line, to: delivery.connection)
        }
        for action in scratch.actions {
            if case .recordLastSeen = action { outbox.actions.append(action) }
        }
    }
}
