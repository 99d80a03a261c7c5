import IRCWire
import NIOCore

/// Channels and groups: JOIN, PART, TOPIC, NAMES, LIST, INVITE, KICK, RENAME, channel MODE,
/// ChanServ, and the fan-out of messages to members.
///
/// Rules for persistent groups (channels created by a logged-in user): the owner alone manages
/// the member list (INVITE adds an account, KICK removes it), the modes i k l o q, renames and
/// deletion; operators may set the topic, voice and bans; members may talk and leave.
extension ChatServer {
    // MARK: Helpers

    func validChannelName(_ raw: String) throws(CommandError) -> ChannelName {
        do {
            return try ChannelName(raw, caseMapping: configuration.caseMapping, maxLength: configuration.channelLength)
        } catch {
            throw .numeric(.errNoSuchChannel, raw, "Invalid channel name")
        }
    }

    /// A reply for the connection running the command goes into its context (so labels apply);
    /// anything for another connection goes straight to the outbox.
    func emit(_ message: IRCMessage, to connection: ConnectionID, _ context: inout CommandContext, _ outbox: inout Outbox) {
        if connection == context.connection {
            context.replies.append(message)
        } else {
            send(message, to: connection, into: &outbox)
        }
    }

    func role(of connection: ConnectionID, in channel: ChatChannel) -> ChannelRole {
        channel.role(of: connection, account: sessions[connection]?.accountKey)
    }

    /// The connections in `channel` that share `connection`'s nick (its account's other devices).
    func sameNickConnections(_ connection: ConnectionID, in channel: ChatChannel) -> [ConnectionID] {
        guard let folded = sessions[connection]?.nick?.folded, let holder = nickIndex[folded] else { return [connection] }
        return holder.connections.filter { channel.contains($0) }
    }

    func existingChannel(_ name: String) throws(CommandError) -> ChatChannel {
        guard let channel = channels[fold(name)] else { throw .numeric(.errNoSuchChannel, name, "No such channel") }
        return channel
    }

    func requireMembership(_ channel: ChatChannel, _ connection: ConnectionID) throws(CommandError) {
        if !channel.contains(connection) {
            throw .numeric(.errNotOnChannel, channel.name, "You're not on that channel")
        }
    }

    /// Whether `channel` is closed to `connection`: invite-only (every new group is) and
    /// `connection` is not in it. A closed channel shows outsiders nothing but that it exists
    /// (JOIN says 473): not its topic, names, modes, key, limit, creation time or bans, not in
    /// LIST, WHO, WHOIS or ChanServ INFO. Public channels and open groups keep IRC's usual view.
    func isClosed(_ channel: ChatChannel, to connection: ConnectionID) -> Bool {
        (channel.inviteOnly || channel.secret) && !channel.contains(connection)
    }

    func requireRole(_ needed: ChannelRole, _ channel: ChatChannel, _ connection: ConnectionID) throws(CommandError) {
        if role(of: connection, in: channel) < needed {
            let reason = needed == .owner ? "Only the group's owner can do that" : "You're not a channel operator"
            throw .numeric(.errChanOPrivsNeeded, channel.name, reason)
        }
    }

    /// Someone named in KICK or MODE: their connections in the channel, and (for a group) their
    /// account if it is on the member list. Nil if they are neither present nor listed.
    struct ChannelTarget {
        var connections: [ConnectionID]
        var memberAccount: String?
        var role: ChannelRole
        var voiced: Bool
        var name: String
    }

    func channelTarget(_ nick: String, in channel: ChatChannel) -> ChannelTarget? {
        let folded = fold(nick)
        let present = channel.joined.filter { sessions[$0]?.nick?.folded == folded }
        let account = present.first.flatMap { sessions[$0]?.accountKey } ?? folded
        let memberAccount = channel.accountRoles[account] != nil ? account : nil
        guard !present.isEmpty || memberAccount != nil else { return nil }
        let role = present.first.map { self.role(of: $0, in: channel) } ?? memberAccount.flatMap { channel.accountRoles[$0] } ?? .member
        let voiced = memberAccount.map { channel.voicedAccounts.contains($0) } ?? present.contains { channel.voicedGuests.contains($0) }
        let name = present.first.flatMap { sessions[$0]?.nick?.name } ?? accounts[account]?.name ?? nick
        return ChannelTarget(connections: present, memberAccount: memberAccount, role: role, voiced: voiced, name: name)
    }

    /// Puts an account on a group's member list with a role, or takes it off (nil), keeping the
    /// login index (`groupsOfAccount`) in step.
    mutating func setMembership(_ account: String, _ role: ChannelRole?, in channel: inout ChatChannel) {
        channel.accountRoles[account] = role
        if role == nil {
            channel.voicedAccounts.remove(account)
            groupsOfAccount[account]?.remove(channel.key)
        } else {
            groupsOfAccount[account, default: []].insert(channel.key)
        }
    }

    /// RPL_TOPIC and RPL_TOPICWHOTIME, or nothing when no topic is set.
    func topicReplies(_ channel: ChatChannel, for connection: ConnectionID) -> [IRCMessage] {
        guard !channel.topic.isEmpty else { return [] }
        return [
            numeric(.rplTopic, [channel.name, channel.topic], for: connection),
            numeric(.rplTopicWhoTime, [channel.name, channel.topicSetBy, String((channel.topicSetAt ?? channel.createdAt).millisecondsSince1970 / 1000)], for: connection),
        ]
    }

    // MARK: Ban masks and extended bans (ISUPPORT EXTBAN=,am and ACCOUNTEXTBAN=a)

    /// `a:<account mask>` matches logged-in users by account (IRCv3 account-extban), never a guest
    /// whose nick looks like it; `m:<nick!user@host>` mutes (they may join but not speak); anything
    /// else is an ordinary `nick!user@host` ban. Nicks cannot contain `:`, so nothing is ambiguous.
    static func normalizedBanMask(_ raw: String, caseMapping: IRCCaseMapping) -> String {
        if raw.hasPrefix("a:") { return "a:" + caseMapping.fold(String(raw.dropFirst(2))) }
        if raw.hasPrefix("m:") { return "m:" + IRCMask.normalized(String(raw.dropFirst(2))) }
        return IRCMask.normalized(raw)
    }

    /// The channel modes that hold lists of masks: where the entries live and the numerics that
    /// list them (`MODE #chan +b`, `+e`, `+I` with no mask).
    struct ListMode: Sendable {
        let entries: any WritableKeyPath<ChatChannel, [BanEntry]> & Sendable
        let name: String
        let item: Numeric
        let end: Numeric
        let endText: String
    }

    static let listModes: [Character: ListMode] = [
        "b": ListMode(entries: \.bans, name: "ban", item: .rplBanList, end: .rplEndOfBanList, endText: "End of channel ban list"),
        "e": ListMode(entries: \.banExceptions, name: "ban exception", item: .rplExceptList, end: .rplEndOfExceptList,
                      endText: "End of channel exception list"),
        "I": ListMode(entries: \.inviteExceptions, name: "invite exception", item: .rplInvExList, end: .rplEndOfInvExList,
                      endText: "End of channel invite exception list"),
    ]

    /// Whether this user is kept out of the channel by a ban (+b) that no exception (+e) lifts.
    func isBanned(_ session: Session, from channel: ChatChannel) -> Bool {
        channel.bans.contains { banEntry($0.mask, keepsOut: session) }
            && !channel.banExceptions.contains { banEntry($0.mask, keepsOut: session) }
    }

    /// Whether a ban or a mute (+b m:) silences this user in the channel: an exception entry that
    /// matches them, as a mask or as a mute mask (+e m:), lifts it.
    func isSilenced(_ session: Session, in channel: ChatChannel) -> Bool {
        channel.bans.contains { banEntry($0.mask, keepsOut: session) || banEntry($0.mask, mutes: session) }
            && !channel.banExceptions.contains { banEntry($0.mask, keepsOut: session) || banEntry($0.mask, mutes: session) }
    }

    /// Whether a ban entry keeps this user out of the channel (and from speaking in it).
    func banEntry(_ mask: String, keepsOut session: Session) -> Bool {
        if mask.hasPrefix("m:") { return false }
        if mask.hasPrefix("a:") {
            guard let account = session.accountKey else { return false }
            return IRCMask(String(mask.dropFirst(2))).matches(account, caseMapping: configuration.caseMapping)
        }
        return IRCMask(mask).matches(session.prefix, caseMapping: configuration.caseMapping)
    }

    /// Whether a mute entry (`m:`) silences this user.
    func banEntry(_ mask: String, mutes session: Session) -> Bool {
        guard mask.hasPrefix("m:") else { return false }
        return IRCMask(String(mask.dropFirst(2))).matches(session.prefix, caseMapping: configuration.caseMapping)
    }

    /// Who may manage the member list and the access modes: the owner of a group, or any
    /// operator of a transient channel.
    func managerRole(for channel: ChatChannel) -> ChannelRole { channel.isGroup ? .owner : .op }

    func persist(_ channel: ChatChannel, previousKey: String? = nil, into outbox: inout Outbox) {
        if let record = channel.record {
            outbox.actions.append(.saveGroup(record, previousKey: previousKey))
        }
    }

    /// Persists a group's settings (topic, modes, bans, owner, name) but not its member list,
    /// which changes one row at a time (`persistMembership`).
    func persistSettings(of channel: ChatChannel, previousKey: String? = nil, into outbox: inout Outbox) {
        if let record = channel.settingsRecord {
            outbox.actions.append(.saveGroupSettings(record, previousKey: previousKey))
        }
    }

    /// Persists one account's membership of a group as it now is, after a join, a leave, an
    /// invitation or a kick: one row, where saving the group would rewrite its whole member list
    /// (and the record, still shared, would make the next change copy the member dictionary).
    func persistMembership(of account: String, in channel: ChatChannel, into outbox: inout Outbox) {
        guard channel.isGroup else { return }
        outbox.actions.append(.saveGroupMember(group: channel.key, account: account, role: channel.accountRoles[account],
                                               voiced: channel.voicedAccounts.contains(account)))
    }

    func joinMessage(for session: Session, channel: String, extended: Bool) -> IRCMessage {
        if extended {
            return IRCMessage(source: session.prefix, command: "JOIN",
                              parameters: [channel, session.accountName ?? "*", session.realname])
        }
        return IRCMessage(source: session.prefix, command: "JOIN", parameters: [channel])
    }

    // MARK: Joining and leaving

    mutating func handleJoin(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        if message.parameters[0] == "0" {
            for key in sessions[id]?.channels.sorted() ?? [] where channels[key] != nil {
                do {
                    try leave(key, reason: "Left all channels", &context, &outbox)
                } catch {
                    render(error, in: &context)
                }
            }
            return
        }
        let names = message.parameters[0].split(separator: ",").map(String.init)
        let keys = message.parameters.count > 1 ? message.parameters[1].split(separator: ",", omittingEmptySubsequences: false).map(String.init) : []
        // Another node's JOIN: the channels it made there (`createdChannelsTag`).
        let madeByItsNode = isLocal(id) ? [] : Set(message.tagValue(Self.createdChannelsTag)?.split(separator: ",").map(String.init) ?? [])
        var made: [String] = []
        var admitted: [String] = []
        for (index, raw) in names.enumerated() {
            do {
                if let key = try join(raw, key: index < keys.count ? keys[index] : nil, madeByItsNode: madeByItsNode, &context, &outbox) {
                    made.append(key)
                }
                admitted.append(raw)
            } catch {
                render(error, in: &context)
            }
        }
        guard isClustered, isLocal(id) else { return }
        if !made.isEmpty {
            context.replicationTags.append(IRCTag(Self.createdChannelsTag, made.joined(separator: ",")))
        }
        // The others let this user in without checking (keys, bans, invitations): only where
        // this node did.
        if admitted.count < names.count { context.replicatedParameters = admitted.isEmpty ? [] : [admitted.joined(separator: ",")] }
    }

    /// Joins one channel; returns its key when the JOIN made it.
    private mutating func join(_ raw: String, key password: String?, madeByItsNode: Set<String>,
                               _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) -> String? {
        let id = context.connection
        guard let session = sessions[id] else { return nil }
        let name = try validChannelName(raw)
        if channels[name.folded] == nil {
            if let renamed = renamedChannels[name.folded] {
                throw .fail("JOIN", "CHANNEL_RENAMED", raw, renamed.newName, description: "The channel has been renamed: \(renamed.reason.isEmpty ? "no reason given" : renamed.reason)")
            }
            if let limit = configuration.maxChannelsPerUser, session.channels.count >= limit {
                throw .numeric(.errTooManyChannels, raw, "You have joined too many channels")
            }
            var created = ChatChannel(name: name.name, key: name.folded, createdAt: context.now)
            if let account = session.accountKey {
                // A logged-in creator makes a persistent group that only its owner opens up.
                created.owner = account
                created.inviteOnly = true
                // Markers left from a transient channel of that name are not this group's.
                forgetReadMarkers(ofTransientChannel: created.key)
                setMembership(account, .owner, in: &created)
            } else {
                created.guestRoles[id] = .op
            }
            channels[created.key] = created
            if let record = created.record { outbox.actions.append(.createGroup(record)) }
            addConnections(sameNickOnline(id), to: created.key, &context, &outbox)
            return created.key
        }
        guard let (isListedMember, isGroup) = try admit(session, to: name.folded, key: password, raw: raw) else { return nil }
        let account = session.accountKey
        if !isListedMember {
            // The channel is changed in place, taken out of the dictionary meanwhile: a copy
            // would copy its member list (and sets) at every JOIN.
            guard var channel = channels.removeValue(forKey: name.folded) else { return nil }
            if !channel.invitedNicks.isEmpty { channel.invitedNicks.remove(session.nick?.folded ?? "") }
            if madeByItsNode.contains(channel.key), !channel.isGroup, account == nil {
                // Its node made the channel for this guest as this node made it for its own:
                // both lead it, on both nodes.
                channel.guestRoles[id] = .op
            }
            session.groupInvitations.remove(channel.key)
            if channel.isGroup, let account {
                // Joining an open group makes a logged-in user one of its members.
                setMembership(account, .member, in: &channel)
                persistMembership(of: account, in: channel, into: &outbox)
            }
            channels[channel.key] = channel
        }
        // An account joins with all of its connections, so its devices stay in step.
        addConnections(isListedMember || isGroup && account != nil ? sameNickOnline(id) : [id], to: name.folded, &context, &outbox)
        return nil
    }

    /// Whether a user may join an existing channel (nil if already in it), and whether the user
    /// is on its member list; the refusal otherwise. Reads a copy of the channel that ends here,
    /// before the caller changes the channel in place.
    private func admit(_ session: Session, to key: String, key password: String?, raw: String) throws(CommandError) -> (isListedMember: Bool, isGroup: Bool)? {
        guard let channel = channels[key], !channel.contains(session.id) else { return nil }
        let account = session.accountKey
        let isListedMember = account.map { channel.accountRoles[$0] != nil } ?? false
        // Another node's user was let in by that node, which decided it on what it knew; a node
        // that has just started learns members before the channel's modes.
        if !isListedMember, isLocal(session.id) {
            if let limit = configuration.maxChannelsPerUser, session.channels.count >= limit {
                throw .numeric(.errTooManyChannels, raw, "You have joined too many channels")
            }
            let invited = channel.invitedNicks.contains(session.nick?.folded ?? "")
                || channel.isGroup && account == nil && session.groupInvitations.contains(channel.key)
            if isBanned(session, from: channel) && !invited {
                throw .numeric(.errBannedFromChan, channel.name, "Cannot join channel (+b): you are banned")
            }
            let inviteExcepted = channel.inviteExceptions.contains { banEntry($0.mask, keepsOut: session) }
            if channel.inviteOnly && !invited && !inviteExcepted {
                let how = channel.isGroup ? "ask the group's owner to add you (INVITE)" : "you need an invitation"
                throw .numeric(.errInviteOnlyChan, channel.name, "Cannot join channel (+i): \(how)")
            }
            if let required = channel.password, password != required {
                throw .numeric(.errBadChannelKey, channel.name, "Cannot join channel (+k): wrong or missing key")
            }
            // An invitation is an operator's decision to let this user in: it passes the limit too.
            if let limit = channel.userLimit, uniqueNickCount(channel) >= limit, !invited {
                throw .numeric(.errChannelIsFull, channel.name, "Cannot join channel (+l): the channel is full")
            }
        }
        return (isListedMember, channel.isGroup)
    }

    /// The connections of this user: all devices of its account, or just itself for a guest.
    func sameNickOnline(_ id: ConnectionID) -> [ConnectionID] {
        guard let session = sessions[id], session.accountKey != nil, let nick = session.nick,
              let holder = nickIndex[nick.folded] else { return [id] }
        return Array(holder.connections)
    }

    func uniqueNickCount(_ channel: ChatChannel) -> Int {
        Set(channel.joined.compactMap { sessions[$0]?.nick?.folded }).count
    }

    /// Puts connections into a channel: members see one JOIN per newly present nick, and each
    /// joining connection gets the JOIN, topic and names as after a JOIN of its own.
    mutating func addConnections(_ connections: [ConnectionID], to key: String, _ context: inout CommandContext, _ outbox: inout Outbox) {
        let newcomers: [ConnectionID], nickWasPresent: Bool, existingCount: Int
        do {
            // A copy for reading only, ended before the channel is changed in place.
            guard let before = channels[key] else { return }
            newcomers = connections.filter { !before.contains($0) && sessions[$0]?.isRegistered == true }
            guard let first = newcomers.first else { return }
            nickWasPresent = !sameNickConnections(first, in: before).isEmpty
            existingCount = before.joined.count
        }
        guard let session = sessions[newcomers[0]] else { return }
        for connection in newcomers {
            guard let newcomer = sessions[connection] else { continue }
            channels[key]?.add(newcomer)
            newcomer.channels.insert(key)
        }
        guard let channel = channels[key] else { return }
        if !nickWasPresent {
            // The same JOIN (and AWAY) lines for every member, each encoded once.
            let plain = joinMessage(for: session, channel: channel.name, extended: false)
            let extended = joinMessage(for: session, channel: channel.name, extended: true)
            let away = session.awayMessage.map { IRCMessage(source: session.prefix, command: "AWAY", parameters: [$0]) }
            var encoded: (plain: ByteBuffer?, extended: ByteBuffer?, away: ByteBuffer?) = (nil, nil, nil)
            for memberSession in channel.joinedSessions.prefix(existingCount) {
                let member = memberSession.id
                let wantsExtended = memberSession.has(.extendedJoin)
                // away-notify: a user who joins while away is announced as away.
                let wantsAway = away != nil && memberSession.has(.awayNotify)
                if member == context.connection {
                    emit(wantsExtended ? extended : plain, to: member, &context, &outbox)
                    if wantsAway, let away { emit(away, to: member, &context, &outbox) }
                    continue
                }
                if wantsExtended {
                    outbox.send(encoded.extended ?? encode(extended, into: &encoded.extended), to: member)
                } else {
                    outbox.send(encoded.plain ?? encode(plain, into: &encoded.plain), to: member)
                }
                if wantsAway, let away {
                    outbox.send(encoded.away ?? encode(away, into: &encoded.away), to: member)
                }
            }
        }
        for connection in newcomers {
            guard let joiner = sessions[connection] else { continue }
            emit(joinMessage(for: joiner, channel: channel.name, extended: joiner.has(.extendedJoin)), to: connection, &context, &outbox)
            sendTopicAndNames(channel, to: connection, &context, &outbox)
            sendMetadataOnJoin(channel, joiner: connection, announceJoiner: !nickWasPresent && connection == newcomers[0], &context, &outbox)
        }
    }

    /// Encodes a line without tags once, keeping it in `slot` for the next receiver.
    private func encode(_ message: IRCMessage, into slot: inout ByteBuffer?) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 128)
        message.write(to: &buffer)
        slot = buffer
        return buffer
    }

    /// Sends a line without tags (PART, KICK) to channel members, encoded once and shared
    /// rather than once per member.
    func sendUntagged(_ message: IRCMessage, to members: [ConnectionID], skipping: ConnectionID, into outbox: inout Outbox) {
        var encoded: ByteBuffer?
        for member in members where member != skipping {
            outbox.send(encoded ?? encode(message, into: &encoded), to: member)
        }
    }

    mutating func sendTopicAndNames(_ channel: ChatChannel, to connection: ConnectionID, _ context: inout CommandContext, _ outbox: inout Outbox) {
        for line in topicReplies(channel, for: connection) { emit(line, to: connection, &context, &outbox) }
        if let session = sessions[connection], session.has(.readMarker) {
            let owner = session.accountKey ?? guestIdentity(of: connection)
            emit(markReadLine(target: channel.name, time: readMarkers[owner]?[channel.key]), to: connection, &context, &outbox)
        }
        for line in namesReplies(channel, for: connection) {
            emit(line, to: connection, &context, &outbox)
        }
    }

    /// RPL_NAMREPLY lines (split to fit a line) and RPL_ENDOFNAMES. An account with several
    /// connections is listed once.
    func namesReplies(_ channel: ChatChannel, for connection: ConnectionID) -> [IRCMessage] {
        guard let asker = sessions[connection] else { return [] }
        let allPrefixes = asker.has(.multiPrefix), userhosts = asker.has(.userhostInNames)
        var lines: [IRCMessage] = []
        // RFC 2812 RPL_NAMREPLY: "@" for a secret channel, "=" for others.
        let channelType = channel.secret ? "@" : "="
        let room = 510 - (configuration.serverName.utf8.count + asker.replyName.utf8.count + channel.name.utf8.count + 20)
        // Gathered as bytes, one String per line: appending to a String cost about three
        // hundred instructions a name, most of a JOIN's work in a large channel.
        var current: [UInt8] = []
        current.reserveCapacity(room)
        // Only an account can have several connections under one nick; guests need no check.
        var seenAccountNicks: Set<String> = []
        for session in channel.joinedSessions {
            guard let nick = session.nick else { continue }
            let member = session.id
            if session.accountKey != nil, !seenAccountNicks.insert(nick.folded).inserted { continue }
            let prefix = channel.prefixes(of: member, account: session.accountKey, all: allPrefixes)
            let name = userhosts ? session.prefix : nick.name
            let length = prefix.utf8.count + name.utf8.count
            if !current.isEmpty && current.count + 1 + length > room {
                lines.append(numeric(.rplNamReply, [channelType, channel.name, String(decoding: current, as: UTF8.self)], for: connection))
                current.removeAll(keepingCapacity: true)
            }
            if !current.isEmpty { current.append(UInt8(ascii: " ")) }
            if !prefix.isEmpty { current.append(contentsOf: prefix.utf8) }
            current.append(contentsOf: name.utf8)
        }
        if !current.isEmpty {
            lines.append(numeric(.rplNamReply, [channelType, channel.name, String(decoding: current, as: UTF8.self)], for: connection))
        }
        lines.append(numeric(.rplEndOfNames, [channel.name, "End of /NAMES list"], for: connection))
        return lines
    }

    mutating func handlePart(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let reason = message.parameters.count > 1 ? String(message.parameters[1].prefix(configuration.kickLength)) : ""
        for raw in message.parameters[0].split(separator: ",").map(String.init) {
            do throws(CommandError) {
                try leave(try existingChannel(raw).key, reason: reason, &context, &outbox)
            } catch {
                render(error, in: &context)
            }
        }
    }

    /// PART: a member of a group leaves it for good (all of its connections); the owner must
    /// hand the group over or delete it first.
    private mutating func leave(_ key: String, reason: String, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        var leaving = [id]
        var leavingAccount: String?
        let part: IRCMessage
        do {
            // A copy for reading only, ended before the channel is changed in place (while it
            // lived, each change would copy the member list).
            guard let channel = channels[key] else { return }
            try requireMembership(channel, id)
            if channel.isGroup, let account = session.accountKey, let role = channel.accountRoles[account] {
                if role == .owner {
                    throw .fail("PART", "OWNER_CANNOT_LEAVE", channel.name, description: "You own \(channel.name): hand it to another member first (MODE \(channel.name) +q <nick>) or delete it (PRIVMSG ChanServ :DROP \(channel.name))")
                }
                leaving = sameNickConnections(id, in: channel)
                leavingAccount = account
            }
            part = IRCMessage(source: session.prefix, command: "PART", parameters: reason.isEmpty ? [channel.name] : [channel.name, reason])
        }
        if let account = leavingAccount, var channel = channels.removeValue(forKey: key) {
            setMembership(account, nil, in: &channel)
            persistMembership(of: account, in: channel, into: &outbox)
            channels[key] = channel
        }
        emit(part, to: id, &context, &outbox)
        sendUntagged(part, to: channels[key]?.joined ?? [], skipping: id, into: &outbox)
        removeConnections(leaving, from: key)
    }

    /// Takes connections out of a channel's joined list; a transient channel left empty ends.
    mutating func removeConnections(_ connections: [ConnectionID], from key: String) {
        // Changed in place, out of the dictionary meanwhile: a copy would copy its member list.
        guard var channel = channels.removeValue(forKey: key) else { return }
        channel.remove(connections)
        for connection in connections {
            channel.guestRoles[connection] = nil
            channel.voicedGuests.remove(connection)
            sessions[connection]?.channels.remove(key)
        }
        if channel.isGroup || !channel.joined.isEmpty {
            channels[key] = channel
        }
    }

    /// A closing connection leaves its channels; members see QUIT once, when the last
    /// connection of that nick goes.
    mutating func leaveChannelsOnQuit(_ session: Session, reason: String, into outbox: inout Outbox) {
        guard !session.channels.isEmpty else { return }
        let quit = IRCMessage(source: session.prefix, command: "QUIT", parameters: [reason])
        var encoded: ByteBuffer?
        // Members of several of these channels are told once; with one channel there is no one
        // to tell twice, and no set to keep.
        var told: Set<ConnectionID> = []
        let dedupe = session.channels.count > 1
        for key in session.channels.sorted() {
            removeConnections([session.id], from: key)
            // Still there with another device of the account: nobody has quit this channel.
            guard session.nick != nil, let channel = channels[key], sameNickConnections(session.id, in: channel).isEmpty else { continue }
            for member in channel.joined where !dedupe || told.insert(member).inserted {
                outbox.send(encoded ?? encode(quit, into: &encoded), to: member)
            }
        }
    }

    /// Joins every connection of an account that has just logged in to the account's groups.
    mutating func joinGroupsOfAccount(_ id: ConnectionID, _ context: inout CommandContext, _ outbox: inout Outbox) {
        guard let account = sessions[id]?.accountKey else { return }
        for key in (groupsOfAccount[account] ?? []).sorted() where channels[key] != nil {
            addConnections([id], to: key, &context, &outbox)
        }
    }

    /// Connections sharing a channel with any of `connections` (excluding those connections).
    func channelNeighbours(of connections: some Sequence<ConnectionID>) -> Set<ConnectionID> {
        var result: Set<ConnectionID> = []
        for connection in connections {
            for key in sessions[connection]?.channels ?? [] {
                for member in channels[key]?.joined ?? [] { result.insert(member) }
            }
        }
        for connection in connections { result.remove(connection) }
        return result
    }

    // MARK: TOPIC, NAMES, LIST

    mutating func handleTopic(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        var channel = try existingChannel(message.parameters[0])
        guard message.parameters.count > 1 else {
            if isClosed(channel, to: id) { try requireMembership(channel, id) }
            let topic = topicReplies(channel, for: id)
            if topic.isEmpty {
                numericReply(.rplNoTopic, [channel.name, "No topic is set"], in: &context)
            } else {
                context.replies.append(contentsOf: topic)
            }
            return
        }
        try requireMembership(channel, id)
        if channel.topicProtected { try requireRole(.op, channel, id) }
        channel.topic = String(message.parameters[1].prefix(configuration.topicLength))
        channel.topicSetBy = session.prefix
        channel.topicSetAt = context.now
        channels[channel.key] = channel
        persistSettings(of: channel, into: &outbox)
        // A msgid and time, as on messages: with draft/event-playback, CHATHISTORY replays the
        // change, and a client matches the replayed line with the one it saw live.
        // The node that decided it gives the id; the others take it from the replicated command.
        let messageID = isLocal(session.id) ? messageIDs.next() : message.tagValue(Self.eventMessageIDTag) ?? messageIDs.next()
        if isLocal(session.id) { context.replicationTags.append(IRCTag(Self.eventMessageIDTag, messageID)) }
        let change = IRCMessage(tags: [IRCTag("time", timeTag(context.now)), IRCTag("msgid", messageID)],
                                source: session.prefix, command: "TOPIC", parameters: [channel.name, channel.topic])
        for member in channel.joined { emit(change, to: member, &context, &outbox) }
        // Kept by the node that decided it (the others run this TOPIC for its effect only, and
        // take the event with that node's id from it).
        if !channel.isGroup && isLocal(session.id) {
            keepRecent(storedMessage(change, id: messageID, sender: session, kind: .group, target: channel.key,
                                     text: channel.topic, clientTags: [], recipients: [], now: context.now), into: &outbox)
        }
    }

    mutating func handleNames(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let list = message.parameters.first else {
            numericReply(.rplEndOfNames, ["*", "End of /NAMES list"], in: &context)
            return
        }
        let names = list.split(separator: ",").map(String.init)
        guard names.count > 1 else {
            if let channel = channels[fold(list)], !isClosed(channel, to: context.connection) {
                context.replies.append(contentsOf: namesReplies(channel, for: context.connection))
            } else {
                numericReply(.rplEndOfNames, [list, "End of /NAMES list"], in: &context)
            }
            return
        }
        // Several channels (TARGMAX NAMES): their RPL_NAMREPLY lines, then one RPL_ENDOFNAMES
        // naming the whole list, so a client sees where the answer ends (Modern IRC).
        for raw in names.prefix(configuration.maxMessageTargets) {
            guard let channel = channels[fold(raw)], !isClosed(channel, to: context.connection) else { continue }
            context.replies.append(contentsOf: namesReplies(channel, for: context.connection).filter { $0.command != Numeric.rplEndOfNames.rawValue })
        }
        numericReply(.rplEndOfNames, [list, "End of /NAMES list"], in: &context)
    }

    // MARK: INVITE and KICK

    mutating func handleInvite(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        if message.parameters.isEmpty { return listInvitations(&context) }
        guard message.parameters.count >= 2 else { throw .needMoreParameters("INVITE") }
        let target = message.parameters[0]
        var channel = try existingChannel(message.parameters[1])
        try requireMembership(channel, id)
        let holder = nickIndex[fold(target)]
        if channel.isGroup {
            try requireRole(.owner, channel, id)
            // Group members are accounts: online or not, a registered account can be added.
            let accountKey: String
            if let online = holder?.accountKey {
                accountKey = online
            } else if accounts[fold(target)] != nil {
                accountKey = fold(target)
            } else if let holder, let guestNick = holder.connections.first.flatMap({ sessions[$0]?.nick }) {
                // A guest cannot be a member (membership outlives connections) but may be let in
                // for this connection, taking part as guests do in an open group.
                if holder.connections.contains(where: { channel.contains($0) }) {
                    throw .numeric(.errUserOnChannel, guestNick.name, channel.name, "is already on channel")
                }
                for connection in holder.connections { sessions[connection]?.groupInvitations.insert(channel.key) }
                numericReply(.rplInviting, [guestNick.name, channel.name], in: &context)
                sendInvite(from: session, to: holder.connections, nick: guestNick.name, channel: channel.name, &outbox)
                return
            } else {
                throw .numeric(.errNoSuchNick, target, "No such nick or account")
            }
            if channel.accountRoles[accountKey] != nil {
                throw .numeric(.errUserOnChannel, target, channel.name, "is already a member of the group")
            }
            let accountName = accounts[accountKey]?.name ?? target
            setMembership(accountKey, .member, in: &channel)
            channels[channel.key] = channel
            persistMembership(of: accountKey, in: channel, into: &outbox)
            numericReply(.rplInviting, [accountName, channel.name], in: &context)
            if let holder {
                addConnections(Array(holder.connections), to: channel.key, &context, &outbox)
            } else {
                context.replies.append(standardLine("NOTE", "INVITE", "MEMBER_OFFLINE", [accountName, channel.name],
                                                    "\(accountName) is offline and will be joined to \(channel.name) at their next login"))
            }
            return
        }
        if channel.inviteOnly { try requireRole(.op, channel, id) }
        guard let holder, let targetNick = holder.connections.first.flatMap({ sessions[$0]?.nick }) else {
            throw .numeric(.errNoSuchNick, target, "No such nick")
        }
        if holder.connections.contains(where: { channel.contains($0) }) {
            throw .numeric(.errUserOnChannel, targetNick.name, channel.name, "is already on channel")
        }
        channel.invitedNicks.insert(targetNick.folded)
        channels[channel.key] = channel
        numericReply(.rplInviting, [targetNick.name, channel.name], in: &context)
        sendInvite(from: session, to: holder.connections, nick: targetNick.name, channel: channel.name, &outbox)
    }

    func sendInvite(from session: Session, to connections: some Sequence<ConnectionID>, nick: String, channel: String, _ outbox: inout Outbox) {
        // account-tag: the invitee's client learns which account invites (sent only to clients with the capability).
        let invite = IRCMessage(tags: session.accountName.map { [IRCTag("account", $0)] } ?? [],
                                source: session.prefix, command: "INVITE", parameters: [nick, channel])
        for connection in connections { send(invite, to: connection, into: &outbox) }
    }

    /// `KICK #chan a,b` kicks each from one channel; `KICK #a,#b x,y` pairs them (TARGMAX KICK,
    /// at most `maxMessageTargets` kicks). A refused kick is answered and the others go on.
    mutating func handleKick(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let session = sessions[context.connection] else { return }
        let channelNames = message.parameters[0].split(separator: ",").map(String.init)
        let targets = message.parameters[1].split(separator: ",").map(String.init)
        guard !channelNames.isEmpty, !targets.isEmpty, channelNames.count == 1 || channelNames.count == targets.count else {
            throw .needMoreParameters("KICK")
        }
        if targets.count > configuration.maxMessageTargets {
            throw .numeric(.errTooManyTargets, message.parameters[1], "Too many targets: at most \(configuration.maxMessageTargets) per KICK")
        }
        let reason = message.parameters.count > 2 ? String(message.parameters[2].prefix(configuration.kickLength)) : session.nick?.name ?? ""
        for (index, target) in targets.enumerated() {
            do {
                try kick(target, from: channelNames.count == 1 ? channelNames[0] : channelNames[index], reason: reason, by: session, &context, &outbox)
            } catch {
                render(error, in: &context)
            }
        }
    }

    private mutating func kick(_ target: String, from channelName: String, reason: String, by session: Session,
                               _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        var channel = try existingChannel(channelName)
        try requireMembership(channel, id)
        guard let victim = channelTarget(target, in: channel) else {
            throw .numeric(.errUserNotInChannel, target, channel.name, "They aren't on that channel")
        }
        let kickerRole = role(of: id, in: channel)
        // Removing a group member changes the member list: the owner's decision. Operators
        // may remove guests and lower-ranked users from transient channels.
        if channel.isGroup && victim.memberAccount != nil {
            try requireRole(.owner, channel, id)
        } else {
            try requireRole(.op, channel, id)
        }
        // Operators may kick each other (RFC 2812 3.2.8); only a group's owner is out of reach.
        if victim.role == .owner || (victim.role > kickerRole && kickerRole != .owner) {
            throw .numeric(.errChanOPrivsNeeded, channel.name, "You cannot kick \(target)")
        }
        if let account = victim.memberAccount { setMembership(account, nil, in: &channel) }
        channels[channel.key] = channel
        if let account = victim.memberAccount { persistMembership(of: account, in: channel, into: &outbox) }
        let kick = IRCMessage(source: session.prefix, command: "KICK", parameters: [channel.name, victim.name, reason])
        emit(kick, to: id, &context, &outbox)
        sendUntagged(kick, to: channel.joined, skipping: id, into: &outbox)
        removeConnections(victim.connections, from: channel.key)
    }

    // MARK: RENAME (draft/channel-rename)

    mutating func handleRename(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        let oldRaw = message.parameters[0], newRaw = message.parameters[1]
        let reason = message.parameters.count > 2 ? String(message.parameters[2].prefix(configuration.kickLength)) : ""
        var channel = try existingChannel(oldRaw)
        try requireMembership(channel, id)
        try requireRole(managerRole(for: channel), channel, id)
        let newName: ChannelName
        do {
            newName = try ChannelName(newRaw, caseMapping: configuration.caseMapping, maxLength: configuration.channelLength)
        } catch {
            throw .fail("RENAME", "CANNOT_RENAME", channel.name, newRaw, description: "\(newRaw) is not a valid channel name")
        }
        let oldKey = channel.key, oldName = channel.name
        if newName.folded != oldKey && channels[newName.folded] != nil {
            throw .fail("RENAME", "CHANNEL_NAME_IN_USE", oldName, newName.name, description: "The channel name is already taken")
        }
        if newName.name == oldName { return }
        channel.name = newName.name
        channel.key = newName.folded
        channels[oldKey] = nil
        channels[newName.folded] = channel
        if oldKey != newName.folded {
            // A group's old name points to the new one (groups are identities people look for);
            // a transient channel's old name is free again, as in plain IRC.
            if channel.isGroup { renamedChannels[oldKey] = RenamedChannel(newName: newName.name, reason: reason) }
            renamedChannels[newName.folded] = nil
            for member in channel.joined {
                sessions[member]?.channels.remove(oldKey)
                sessions[member]?.channels.insert(newName.folded)
            }
            for account in channel.accountRoles.keys {
                groupsOfAccount[account]?.remove(oldKey)
                groupsOfAccount[account, default: []].insert(newName.folded)
            }
            rekeyDeliveryState(from: oldKey, to: newName.folded)
        }
        persistSettings(of: channel, previousKey: oldKey, into: &outbox)
        let rename = IRCMessage(source: session.prefix, command: "RENAME", parameters: [oldName, newName.name, reason])
        let caseOnly = oldKey == newName.folded
        for member in channel.joined {
            guard let memberSession = sessions[member] else { continue }
            if memberSession.has(.channelRename) {
                emit(rename, to: member, &context, &outbox)
            } else if !caseOnly {
                // The fallback the specification asks for: leave the old name, join the new one.
                let part = IRCMessage(source: memberSession.prefix, command: "PART", parameters: reason.isEmpty ? [oldName] : [oldName, reason])
                emit(part, to: member, &context, &outbox)
                emit(joinMessage(for: memberSession, channel: newName.name, extended: memberSession.has(.extendedJoin)), to: member, &context, &outbox)
                sendTopicAndNames(channel, to: member, &context, &outbox)
            }
        }
    }

    // MARK: Channel MODE

    mutating func handleChannelMode(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        var channel = try existingChannel(message.parameters[0])
        guard message.parameters.count > 1 else {
            if isClosed(channel, to: id) { try requireMembership(channel, id) }
            var modes = "+" + channel.flagModes
            var arguments: [String] = []
            if let limit = channel.userLimit { modes.append("l"); arguments.append(String(limit)) }
            if let password = channel.password {
                modes.append("k")
                arguments.append(channel.contains(id) ? password : "*")
            }
            numericReply(.rplChannelModeIs, [channel.name, modes] + arguments, in: &context)
            numericReply(.rplCreationTime, [channel.name, String(channel.createdAt.millisecondsSince1970 / 1000)], in: &context)
            return
        }
        let modeString = message.parameters[1]
        var arguments = Array(message.parameters.dropFirst(2))[...]
        // A bare list query (+b, +e, +I). Entries name who set them (nick!user@host): a group's
        // and a closed channel's are for their members only.
        if arguments.isEmpty, let letter = modeString.trimmingPrefix("+").first, modeString.trimmingPrefix("+").count == 1,
           let list = Self.listModes[letter] {
            if isClosed(channel, to: id) || channel.isGroup { try requireMembership(channel, id) }
            // The exception lists hold what lets people in: like bans, for operators only.
            if letter != "b" { try requireRole(.op, channel, id) }
            for entry in channel[keyPath: list.entries] {
                numericReply(list.item, [channel.name, entry.mask, entry.setBy, String(entry.setAt.millisecondsSince1970 / 1000)], in: &context)
            }
            numericReply(list.end, [channel.name, list.endText], in: &context)
            return
        }
        try requireMembership(channel, id)
        let myRole = role(of: id, in: channel)
        let manager = managerRole(for: channel)
        var adding = true
        var applied: [(sign: Character, mode: Character, argument: String?)] = []
        // Accounts whose role or voice in a group changed: their member rows are saved.
        var changedMembers: [String] = []
        for letter in modeString {
            switch letter {
            case "+": adding = true
            case "-": adding = false
            case "i", "k", "l":
                if myRole < manager { render(.numeric(.errChanOPrivsNeeded, channel.name, manager == .owner ? "Only the group's owner can change +\(letter)" : "You're not a channel operator"), in: &context); continue }
                if letter == "i" {
                    if channel.inviteOnly == adding { continue }
                    channel.inviteOnly = adding
                    applied.append((adding ? "+" : "-", "i", nil))
                } else if letter == "k" {
                    if adding {
                        guard let key = arguments.popFirst(), !key.isEmpty, !key.contains(" "), !key.contains(",") else {
                            render(.numeric(.errInvalidModeParam, channel.name, "k", "*", "Give a key without spaces or commas"), in: &context); continue
                        }
                        channel.password = key
                        applied.append(("+", "k", key))
                    } else {
                        _ = arguments.popFirst()
                        if channel.password == nil { continue }
                        channel.password = nil
                        applied.append(("-", "k", "*"))
                    }
                } else {
                    if adding {
                        guard let text = arguments.popFirst(), let limit = Int(text), limit > 0 else {
                            render(.numeric(.errInvalidModeParam, channel.name, "l", "*", "Give a positive number"), in: &context); continue
                        }
                        channel.userLimit = limit
                        applied.append(("+", "l", String(limit)))
                    } else {
                        if channel.userLimit == nil { continue }
                        channel.userLimit = nil
                        applied.append(("-", "l", nil))
                    }
                }
            case "t", "n", "m", "s", "C":
                if myRole < .op { render(.numeric(.errChanOPrivsNeeded, channel.name, "You're not a channel operator"), in: &context); continue }
                let flag: WritableKeyPath<ChatChannel, Bool> = switch letter {
                case "t": \.topicProtected
                case "n": \.noOutsideMessages
                case "m": \.moderated
                case "C": \.noCTCP
                default: \.secret
                }
                if channel[keyPath: flag] == adding { continue }
                channel[keyPath: flag] = adding
                applied.append((adding ? "+" : "-", letter, nil))
            case "b", "e", "I":
                guard let raw = arguments.popFirst(), let list = Self.listModes[letter] else { continue }
                if myRole < .op { render(.numeric(.errChanOPrivsNeeded, channel.name, "You're not a channel operator"), in: &context); continue }
                if letter != "b" && channel.isGroup {
                    render(.numeric(.errUnknownMode, String(letter), "is for channels of guests: a group admits its members, whom its owner adds with INVITE"), in: &context); continue
                }
                let mask = Self.normalizedBanMask(raw, caseMapping: configuration.caseMapping)
                if adding {
                    if channel[keyPath: list.entries].contains(where: { $0.mask == mask }) { continue }
                    if channel[keyPath: list.entries].count >= configuration.maxBansPerChannel {
                        render(.numeric(.errBanListFull, channel.name, String(letter), "Channel \(list.name) list is full"), in: &context); continue
                    }
                    channel[keyPath: list.entries].append(BanEntry(mask: mask, setBy: session.prefix, setAt: context.now))
                } else {
                    guard channel[keyPath: list.entries].contains(where: { $0.mask == mask }) else { continue }
                    channel[keyPath: list.entries].removeAll { $0.mask == mask }
                }
                applied.append((adding ? "+" : "-", letter, mask))
            case "o", "v", "q":
                guard let nick = arguments.popFirst() else {
                    render(.numeric(.errInvalidModeParam, channel.name, String(letter), "*", "Give a nick"), in: &context); continue
                }
                if letter == "q" && !channel.isGroup {
                    render(.numeric(.errUnknownMode, "q", "Only groups (channels created by a logged-in user) have owners"), in: &context); continue
                }
                let needed: ChannelRole = letter == "v" ? .op : manager
                if myRole < needed {
                    render(.numeric(.errChanOPrivsNeeded, channel.name, needed == .owner ? "Only the group's owner can change +\(letter)" : "You're not a channel operator"), in: &context); continue
                }
                guard let target = channelTarget(nick, in: channel) else {
                    if nickIndex[fold(nick)] == nil && accounts[fold(nick)] == nil {
                        render(.numeric(.errNoSuchNick, nick, "No such nick/channel"), in: &context); continue
                    }
                    render(.numeric(.errUserNotInChannel, nick, channel.name, "They aren't on that channel"), in: &context); continue
                }
                let current = target.role
                if letter == "v" {
                    // Voice is a mark beside the role: an operator can be voiced too.
                    if target.voiced == adding { continue }
                    if let account = target.memberAccount {
                        if adding { channel.voicedAccounts.insert(account) } else { channel.voicedAccounts.remove(account) }
                        changedMembers.append(account)
                    } else {
                        for connection in target.connections {
                            if adding { channel.voicedGuests.insert(connection) } else { channel.voicedGuests.remove(connection) }
                        }
                    }
                    applied.append((adding ? "+" : "-", letter, target.name))
                    continue
                }
                let wanted: ChannelRole = letter == "q" ? .owner : .op
                if letter == "q" {
                    guard adding else { continue }
                    guard let targetAccount = target.memberAccount else {
                        render(.fail("MODE", "ACCOUNT_REQUIRED", nick, channel.name, description: "Ownership goes to a member with an account"), in: &context); continue
                    }
                    if current == .owner { continue }
                    // Handing over: the new owner takes ~, the old one keeps @.
                    if let previous = channel.owner {
                        channel.accountRoles[previous] = .op
                        changedMembers.append(previous)
                    }
                    channel.owner = targetAccount
                    channel.accountRoles[targetAccount] = .owner
                    changedMembers.append(targetAccount)
                    applied.append(("+", "q", target.name))
                    applied.append(("-", "q", session.nick?.name ?? ""))
                    applied.append(("+", "o", session.nick?.name ?? ""))
                    continue
                }
                if current == .owner {
                    render(.numeric(.errChanOPrivsNeeded, channel.name, "The owner's rank changes only by handing over ownership (+q)"), in: &context); continue
                }
                let newRole: ChannelRole = adding ? max(current, wanted) : (current == wanted ? .member : current)
                if newRole == current { continue }
                if let account = target.memberAccount {
                    channel.accountRoles[account] = newRole
                    changedMembers.append(account)
                } else {
                    for connection in target.connections { channel.guestRoles[connection] = newRole == .member ? nil : newRole }
                }
                applied.append((adding ? "+" : "-", letter, target.name))
            default:
                render(.numeric(.errUnknownMode, String(letter), "is an unknown mode character to me for \(channel.name)"), in: &context)
            }
        }
        guard !applied.isEmpty else { return }
        channels[channel.key] = channel
        persistSettings(of: channel, into: &outbox)
        for account in changedMembers { persistMembership(of: account, in: channel, into: &outbox) }
        let announcement = IRCMessage(source: session.prefix, command: "MODE", parameters: [channel.name] + Self.modeParameters(applied))
        for member in channel.joined { emit(announcement, to: member, &context, &outbox) }
    }

    /// A MODE line's changes and their arguments (`+qi-o bob gus`): a sign written where it
    /// changes.
    static func modeParameters(_ changes: [(sign: Character, mode: Character, argument: String?)]) -> [String] {
        var modeText = ""
        var arguments: [String] = []
        var lastSign: Character?
        for change in changes {
            if change.sign != lastSign { modeText.append(change.sign); lastSign = change.sign }
            modeText.append(change.mode)
            if let argument = change.argument { arguments.append(argument) }
        }
        return [modeText] + arguments
    }

    // MARK: ChanServ: group administration for clients without special commands

    /// The text of one `ChanServ INFO` members line at most: with the NOTICE's prefix and target
    /// it stays within 512 bytes.
    static let chanServMembersLineBytes = 380

    mutating func handleChanServ(text: String, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        let words = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let command = words.first?.uppercased() ?? "HELP"
        func reply(_ line: String) {
            context.replies.append(IRCMessage(source: Self.chanServPrefix, command: "NOTICE", parameters: [sessions[id]?.replyName ?? "*", line]))
        }
        switch command {
        case "INFO":
            guard words.count >= 2, let channel = channels[fold(words[1])] else { reply("Usage: INFO #group"); return }
            if isClosed(channel, to: id) { reply("\(words[1]) is a closed group; only its members may see it"); return }
            guard channel.isGroup else { reply("\(channel.name) is a transient channel: it ends when its last user leaves"); return }
            reply("\(channel.name): owner \(accounts[channel.owner ?? ""]?.name ?? channel.owner ?? "?"), created \(channel.createdAt.iso8601), modes +\(channel.flagModes)")
            let members = channel.accountRoles.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.map { key, role in
                role.prefixes(voiced: channel.voicedAccounts.contains(key), all: false) + (accounts[key]?.name ?? key) + (nickIndex[key] == nil ? " (offline)" : "")
            }
            // As many lines as it takes: one line for a large group would pass the 512-byte limit.
            var line = "Members (\(members.count)):"
            var lineHasMember = false
            for member in members {
                if lineHasMember && line.utf8.count + 2 + member.utf8.count > Self.chanServMembersLineBytes {
                    reply(line)
                    line = "Members (\(members.count), continued): " + member
                } else {
                    line += (lineHasMember ? ", " : " ") + member
                }
                lineHasMember = true
            }
            reply(line)
        case "DROP":
            guard words.count >= 2, let channel = channels[fold(words[1])] else { reply("Usage: DROP #group"); return }
            guard channel.isGroup, role(of: id, in: channel) == .owner else {
                throw .numeric(.errChanOPrivsNeeded, channel.name, "Only the group's owner can delete it")
            }
            deleteGroup(channel, by: sessions[id]?.nick?.name ?? "the owner", &context, &outbox)
            reply("\(channel.name) has been deleted")
        default:
            reply("ChanServ manages groups. Commands: INFO #group (owner and members), DROP #group (owner only: delete it).")
            reply("Members are managed with INVITE (add) and KICK (remove); MODE #group +q nick hands over ownership; RENAME #old #new renames.")
        }
    }

    static let chanServPrefix = "ChanServ!ChanServ@services.parley"

    mutating func deleteGroup(_ channel: ChatChannel, by owner: String, _ context: inout CommandContext, _ outbox: inout Outbox) {
        for member in channel.joined {
            guard let nick = sessions[member]?.nick?.name else { continue }
            let kick = IRCMessage(source: Self.chanServPrefix, command: "KICK", parameters: [channel.name, nick, "Group deleted by \(owner)"])
            emit(kick, to: member, &context, &outbox)
            sessions[member]?.channels.remove(channel.key)
        }
        for account in channel.accountRoles.keys { groupsOfAccount[account]?.remove(channel.key) }
        channels[channel.key] = nil
        forgetDeliveryState(ofGroup: channel.key)
        outbox.actions.append(.deleteGroup(key: channel.key))
    }

    // MARK: Messages to channels

    /// A message to a channel, or (`statusPrefix` `@` or `+`, STATUSMSG) to its members of that
    /// status or higher only. Status messages are not kept: a group's history is every member's.
    mutating func deliverToChannel(_ verb: String, to target: String, statusPrefix: Character? = nil, text: String, clientTags: [IRCTag],
                                   sender: Session, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let relay = try relayToChannel(verb, to: target, statusPrefix: statusPrefix, text: text, clientTags: clientTags, sender: sender,
                                             &context, &outbox) else { return }
        let (relayed, messageID, key, isGroup) = (relay.message, relay.messageID, relay.channelKey, relay.isGroup)
        rememberSend(relayed, clientTags: clientTags, sender: sender)
        if !isGroup && (verb != "TAGMSG" || Self.keepsTagMessage(clientTags)) {
            // For CHATHISTORY while the channel lasts; never stored. TAGMSG is replayed only
            // to clients with draft/event-playback.
            keepRecent(storedMessage(relayed, id: messageID, sender: sender, kind: .group, target: key,
                                     text: text, clientTags: clientTags, recipients: [], now: context.now), into: &outbox)
        }
        if isGroup && verb == "TAGMSG" {
            if Self.keepsTagMessage(clientTags) {
                keepForHistoryOnly(relayed, id: messageID, sender: sender, kind: .group, target: key, targetName: nil, clientTags: clientTags, &context)
            }
        } else if isGroup, let channel = channels[key] {
            // Kept for history, and for members who are offline now until they return.
            storeGroupMessage(relayed, id: messageID, sender: sender, channel: channel, text: text, clientTags: clientTags, &context, &outbox)
        }
    }

    /// A channel message relayed to its members (and echoed), not yet kept.
    private struct ChannelRelay {
        var message: IRCMessage
        var messageID: String
        var channelKey: String
        var isGroup: Bool
    }

    /// Checks a message to a channel and relays it to the members; nil when nothing is to be
    /// kept (a status message, or a NOTICE to no channel). The copy of the channel read here ends
    /// with this call: alive while the message goes into the channel's recent history, it made
    /// that change copy the whole history (about a tenth of a 1,000-member fan-out's cost).
    private mutating func relayToChannel(_ verb: String, to target: String, statusPrefix: Character?, text: String, clientTags: [IRCTag],
                                         sender: Session, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) -> ChannelRelay? {
        let id = context.connection
        guard let channel = channels[fold(target)] else {
            // NOTICE never gets an automatic reply (RFC 2812 3.3.2), not even this error.
            if verb == "NOTICE" { return nil }
            throw .numeric(.errNoSuchChannel, target, "No such channel")
        }
        let isMember = channel.contains(id)
        if !isMember && (channel.noOutsideMessages || channel.isGroup) {
            throw .numeric(.errCannotSendToChan, channel.name, "Cannot send to channel: you are not a member")
        }
        let privileged = channel.maySpeakAsPrivileged(id, account: sender.accountKey)
        if channel.moderated && !privileged {
            throw .numeric(.errCannotSendToChan, channel.name, "Cannot send to channel (+m): you need voice")
        }
        if !privileged && isSilenced(sender, in: channel) {
            throw .numeric(.errCannotSendToChan, channel.name, "Cannot send to channel: you are banned")
        }
        if channel.noCTCP && verb != "TAGMSG" && text.hasPrefix("\u{01}")
            && text.dropFirst().prefix(while: { $0 != " " && $0 != "\u{01}" }) != "ACTION" {
            throw .numeric(.errCannotSendToChan, channel.name, "Cannot send to channel (+C): no CTCP here but ACTION")
        }
        let shownTarget = statusPrefix.map { String($0) + channel.name } ?? channel.name
        let overhead = 1 + sender.prefix.utf8.count + 1 + verb.utf8.count + 1 + shownTarget.utf8.count + 2 + 2
        if overhead + text.utf8.count > 512 {
            throw messageTooLong(verb, target: shownTarget, excess: overhead + text.utf8.count - 512, sender: sender)
        }
        if let statusPrefix {
            // Live only, to the members with that status; never stored.
            var tags = [IRCTag("time", timeTag(context.now)), IRCTag("msgid", messageIDs.next())]
            if let account = sender.accountName { tags.append(IRCTag("account", account)) }
            if sender.isBot { tags.append(IRCTag("bot")) }
            tags.append(contentsOf: clientTags)
            let relayed = IRCMessage(tags: tags, source: sender.prefix, command: verb,
                                     parameters: verb == "TAGMSG" ? [shownTarget] : [shownTarget, text])
            var encodings = EncodingCache()
            for member in channel.joined where member != id && addressesDirectly(member) {
                guard let session = sessions[member], verb != "TAGMSG" || session.has(.messageTags) else { continue }
                if Self.hasStatus(statusPrefix, member, session, in: channel) {
                    outbox.send(encodings.line(relayed, for: session, allocator: allocator), to: member)
                }
            }
            fanOut(relayed, channel: channel.key, statusPrefix: statusPrefix, into: &outbox)
            if sender.has(.echoMessage) && (verb != "TAGMSG" || sender.has(.messageTags)) { context.replies.append(relayed) }
            return nil
        }
        if channel.isGroup {
            try chargeStorageQuota(of: sender, text: text, clientTags: clientTags, verb: verb, target: channel.name, now: context.now)
        }
        let messageID = messageIDs.next()
        var tags = [IRCTag("time", timeTag(context.now)), IRCTag("msgid", messageID)]
        if let account = sender.accountName { tags.append(IRCTag("account", account)) }
        if sender.isBot { tags.append(IRCTag("bot")) }
        tags.append(contentsOf: clientTags)
        let relayed = IRCMessage(tags: tags, source: sender.prefix, command: verb,
                                 parameters: verb == "TAGMSG" ? [channel.name] : [channel.name, text])
        var encodings = EncodingCache()
        let isTagMessage = verb == "TAGMSG"
        // Each member's session from the channel's own list: no lookup by id per member.
        for (member, session) in zip(channel.joined, channel.joinedSessions) where member != id && addressesDirectly(member) {
            if isTagMessage && !session.has(.messageTags) { continue }
            outbox.send(encodings.line(relayed, for: session, allocator: allocator), to: member)
            counters.deliveries &+= 1
        }
        fanOut(relayed, channel: channel.key, statusPrefix: nil, into: &outbox)
        if sender.has(.echoMessage) && (verb != "TAGMSG" || sender.has(.messageTags)) {
            context.replies.append(relayed)
        }
        return ChannelRelay(message: relayed, messageID: messageID, channelKey: channel.key, isGroup: channel.isGroup)
    }
}

extension ChatServer {
    /// Keeps a transient channel's message or event in its recent history, on every node: the
    /// others keep the same copy (with this node's id and time), so that a member anywhere, or
    /// someone who joins later on any node, reads what they would read on one server.
    mutating func keepRecent(_ message: StoredMessage, into outbox: inout Outbox) {
        channels[message.target]?.recentHistory.append(message, capacity: configuration.transientChannelHistoryLength,
                                                       maxBytes: configuration.transientChannelHistoryBytes)
        if isClustered { outbox.clusterEvents.append(.recentMessage(message)) }
    }
}

struct RenamedChannel: Sendable {
    var newName: String
    var reason: String
}
