import IRCWire
import NIOCore

extension ChatServer {
    /// PRIVMSG, NOTICE and TAGMSG: the hot path. Each target gets its own reply on failure, so
    /// one bad target never hides the outcome of the others.
    mutating func handleMessage(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let verb = context.verb
        counters.messagesReceived &+= 1
        guard let targetList = message.parameters.first, !targetList.isEmpty else {
            throw .numeric(.errNoRecipient, "No recipient given (\(verb))")
        }
        let isTagMessage = verb == "TAGMSG"
        let text = message.parameters.count > 1 ? message.parameters[1] : ""
        if !isTagMessage && text.isEmpty {
            throw .numeric(.errNoTextToSend, "No text to send")
        }
        var clientTags: [IRCTag] = []
        var clientTagBytes = 0
        for tag in message.tags where tag.key.hasPrefix("+") {
            clientTags.append(tag)
            clientTagBytes += tag.key.utf8.count + tag.value.utf8.count + 2
        }
        if clientTagBytes > Self.maximumClientTagBytes {
            throw .numeric(.errInputTooLong, "Client tags exceed \(Self.maximumClientTagBytes) bytes")
        }
        if isTagMessage && clientTags.isEmpty { return }
        let clientMessageID = clientTags.first { $0.key == Self.clientMessageIDTag }?.value
        if let clientMessageID, let account = context.session?.accountKey,
           let earlier = recentSends[account]?.relayed[clientMessageID] {
            // A resend of something already accepted: answer as the first time, deliver nothing.
            if context.session?.has(.echoMessage) == true { context.replies.append(contentsOf: earlier) }
            return
        }

        if !targetList.utf8Contains(where: { $0 == UInt8(ascii: ",") }) {
            try deliver(verb, to: targetList, text: text, clientTags: clientTags, &context, &outbox)
            return
        }
        let targets = targetList.split(separator: ",", omittingEmptySubsequences: true)
        if targets.count > configuration.maxMessageTargets {
            throw .numeric(.errTooManyTargets, targetList, "Too many targets; the limit is \(configuration.maxMessageTargets)")
        }
        for target in targets {
            do {
                try deliver(verb, to: String(target), text: text, clientTags: clientTags, &context, &outbox)
            } catch {
                render(error, in: &context)
            }
        }
    }

    /// A message that would not fit the relayed line is refused, never cut. Clients that know
    /// standard replies learn the target and the excess; others get the classic numeric.
    func messageTooLong(_ verb: String, target: String, excess: Int, sender: Session) -> CommandError {
        let description = "Message too long by \(excess) bytes once your prefix is added"
        if sender.has(.standardReplies) {
            return .fail(verb, "MESSAGE_TOO_LONG", target, description: description)
        }
        return .numeric(.errInputTooLong, description)
    }

    /// The IRCv3 limit on client-only tags a client may send.
    static let maximumClientTagBytes = 4094
    /// A client-chosen id that makes sending idempotent (docs/delivery-and-receipts.md).
    static let clientMessageIDTag = "+parley.chat/cid"
    /// Sends remembered per account for resends: at most this many, and at most
    /// `recentSendsBytesPerAccount` of text and tags (client tags alone may be 4 kB a message).
    static let recentSendsPerAccount = 200
    static let recentSendsBytesPerAccount = 256 * 1024
    /// How long an account's sends are remembered once its last connection has closed.
    static let resendWindowMilliseconds: Int64 = 120_000

    mutating func rememberSend(_ relayed: IRCMessage, clientTags: [IRCTag], sender: Session) {
        guard let account = sender.accountKey,
              let id = clientTags.first(where: { $0.key == Self.clientMessageIDTag })?.value, !id.isEmpty else { return }
        var recent = recentSends.removeValue(forKey: account) ?? RecentSends()
        if recent.relayed[id] == nil { recent.order.append(id) }
        recent.relayed[id, default: []].append(relayed)
        recent.bytes += (relayed.parameters.last?.utf8.count ?? 0) + clientTags.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count + 2 }
        recent.forgetAt = nil
        if recent.order.count > Self.recentSendsPerAccount || recent.bytes > Self.recentSendsBytesPerAccount {
            // Forget the older half at once (trimming one at a time would shift the array per send).
            let excess = max(recent.order.count - Self.recentSendsPerAccount / 2, recent.order.count / 2)
            for old in recent.order.prefix(excess) { recent.relayed[old] = nil }
            recent.order.removeFirst(excess)
            recent.bytes = recent.relayed.values.joined().reduce(0) { total, line in
                total + (line.parameters.last?.utf8.count ?? 0) + line.tags.reduce(0) { $0 + ($1.key.hasPrefix("+") ? $1.key.utf8.count + $1.value.utf8.count + 2 : 0) }
            }
        }
        recentSends[account] = recent
    }

    /// Runs from the periodic tick, once a minute (the window is counted in minutes).
    mutating func forgetRecentSendsOfLoggedOutAccounts(now: Timestamp) {
        if let last = lastRecentSendsSweep, now.milliseconds(since: last) < 60_000 { return }
        lastRecentSendsSweep = now
        for (account, recent) in recentSends {
            if let forgetAt = recent.forgetAt, now >= forgetAt { recentSends[account] = nil }
        }
    }

    private mutating func deliver(_ verb: String, to target: String, text: String, clientTags: [IRCTag], _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let sender = context.session else { return }
        if target.hasPrefix("#") {
            try deliverToChannel(verb, to: target, text: text, clientTags: clientTags, sender: sender, &context, &outbox)
            return
        }
        // STATUSMSG: `@#chan` reaches the channel's operators (and owner), `+#chan` also the voiced.
        // The first byte is tested before a Character is made of it: most targets are nicks.
        if let byte = target.utf8.first, byte == UInt8(ascii: "@") || byte == UInt8(ascii: "+"),
           let status = target.first, status == "@" || status == "+", target.dropFirst().hasPrefix("#") {
            try deliverToChannel(verb, to: String(target.dropFirst()), statusPrefix: status, text: text, clientTags: clientTags, sender: sender,
                                 &context, &outbox)
            return
        }
        let folded = fold(target)
        if folded == "nickserv" {
            if verb == "PRIVMSG" { try handleNickServ(text: text, &context, &outbox) }
            return
        }
        if folded == "chanserv" {
            if verb == "PRIVMSG" { try handleChanServ(text: text, &context, &outbox) }
            return
        }
        let holder = nickIndex[folded]
        // The recipient's account: its connections' account, or a registered account offline.
        let recipientAccount = holder.map { $0.accountKey } ?? (accounts[folded] != nil ? folded : nil)
        if holder == nil {
            guard let offlineAccount = recipientAccount else {
                throw .numeric(.errNoSuchNick, target, "No such nick/channel")
            }
            if verb == "TAGMSG" {
                throw .numeric(.errNoSuchNick, target, "\(target) is offline; tag messages are not kept")
            }
            if (undelivered[offlineAccount]?.count ?? 0) >= configuration.maxUndeliveredPerAccount {
                throw .fail(verb, "INBOX_FULL", accounts[offlineAccount]?.name ?? target,
                            description: "\(accounts[offlineAccount]?.name ?? target) has too many messages waiting; try again after they have read some")
            }
        }
        // The relayed line must fit the 512-byte limit with the sender's full prefix.
        let prefix = sender.prefix
        let overhead = 1 + prefix.utf8.count + 1 + verb.utf8.count + 1 + target.utf8.count + 2 + 2
        if overhead + text.utf8.count > 512 {
            throw messageTooLong(verb, target: target, excess: overhead + text.utf8.count - 512, sender: sender)
        }

        if sender.accountKey != nil || recipientAccount != nil {
            try chargeStorageQuota(of: sender, text: text, clientTags: clientTags, verb: verb, target: target, now: context.now)
        }

        // A guest's nick has one connection (only an account's nick is shared by several).
        if verb != "TAGMSG", sender.accountKey == nil, recipientAccount == nil, !sender.has(.echoMessage), let holder,
           holder.connections.count == 1, let receiver = sessions[holder.connections[0]], !receiver.takesTags {
            // Between guests whose connections take no tags, nothing keeps or shows the
            // message's id or time: relay the plain line, without building the tagged message.
            let length = 32 + prefix.utf8.count + target.utf8.count + text.utf8.count
            outbox.write(to: receiver.id, allocator: allocator, capacity: length) { line in
                IRCMessage.writeUntagged(source: prefix, command: verb, target: target, text: text, to: &line)
            }
            counters.deliveries &+= 1
            if verb == "PRIVMSG" { replyIfAway(receiver, target: target, &context) }
            return
        }

        let messageID = messageIDs.next()
        var tags = [IRCTag("time", timeTag(context.now)), IRCTag("msgid", messageID)]
        if let account = sender.accountName { tags.append(IRCTag("account", account)) }
        if sender.isBot { tags.append(IRCTag("bot")) }
        tags.append(contentsOf: clientTags)
        let relayed = IRCMessage(
            tags: tags, source: prefix, command: verb,
            parameters: verb == "TAGMSG" ? [target] : [target, text])

        var encodings = EncodingCache()
        let recipientConnections = holder?.connections ?? []
        for recipient in recipientConnections {
            guard let session = sessions[recipient] else { continue }
            if verb == "TAGMSG" && !session.has(.messageTags) { continue }
            outbox.send(encodings.line(relayed, for: session, allocator: allocator), to: recipient)
            counters.deliveries &+= 1
        }
        // The sender's other connections (same account) see what it said.
        if let account = sender.accountKey, let own = nickIndex[account] {
            for connection in own.connections where connection != context.connection && !recipientConnections.contains(connection) {
                guard let session = sessions[connection], verb != "TAGMSG" || session.has(.messageTags) else { continue }
                outbox.send(encodings.line(relayed, for: session, allocator: allocator), to: connection)
            }
        }
        if sender.has(.echoMessage) && (verb != "TAGMSG" || sender.has(.messageTags)) {
            context.replies.append(relayed)
        }
        rememberSend(relayed, clientTags: clientTags, sender: sender)
        let guestRecipient = recipientAccount == nil ? holder?.connections.first.map { (guestIdentity(of: $0), sessions[$0]?.nick?.name ?? target) } : nil
        if verb == "TAGMSG" {
            if sender.accountKey != nil || recipientAccount != nil, Self.keepsTagMessage(clientTags) {
                keepForHistoryOnly(relayed, id: messageID, sender: sender, kind: .direct, target: recipientAccount ?? guestRecipient?.0 ?? "",
                                   targetName: recipientAccount == nil ? guestRecipient?.1 : nil, clientTags: clientTags, &context)
            }
        } else {
            storeDirect(relayed, id: messageID, sender: sender, recipientKey: recipientAccount, guestRecipient: guestRecipient,
                        online: holder != nil, text: text, clientTags: clientTags, &context, &outbox)
        }
        if holder == nil, let offlineAccount = recipientAccount {
            context.replies.append(cachedOfflineNote(verb: verb, target: target, accountKey: offlineAccount, now: context.now))
        }
        if verb == "PRIVMSG" { replyIfAway(recipientConnections, target: target, &context) }
    }

    /// RPL_AWAY when every connection of the recipient is away.
    private func replyIfAway(_ connections: some Collection<ConnectionID>, target: String, _ context: inout CommandContext) {
        guard let first = connections.first, let receiver = sessions[first],
              connections.allSatisfy({ sessions[$0]?.awayMessage != nil }) else { return }
        replyIfAway(receiver, target: target, &context)
    }

    /// RPL_AWAY for a receiver with one connection (its session at hand: no lookup).
    private func replyIfAway(_ receiver: Session, target: String, _ context: inout CommandContext) {
        guard let away = receiver.awayMessage else { return }
        numericReply(.rplAway, [receiver.nick?.name ?? target, away], in: &context)
    }
}

/// Encodes one relayed message at most once per distinct tag profile of the receivers, so a
/// message to many connections shares a few buffers instead of being serialized per receiver.
struct EncodingCache {
    // Most messages reach receivers of one profile; the first needs no heap allocation (an
    // array of eight slots did, per message), an empty dictionary neither.
    private var first: (profile: Int, buffer: ByteBuffer)?
    private var others: [Int: ByteBuffer] = [:]

    mutating func line(_ message: IRCMessage, for session: Session, allocator: ByteBufferAllocator) -> ByteBuffer {
        // A relayed message has time, account and client tags; which of them a receiver gets
        // depends on these three capabilities (`ChatServer.tagAllowed`), so they key the cache.
        // The set read once: each read of a session's property is an exclusivity check.
        let capabilities = session.capabilities
        let profile = (capabilities.contains(.serverTime) ? 1 : 0) | (capabilities.contains(.accountTag) ? 2 : 0)
            | (capabilities.contains(.messageTags) ? 4 : 0)
        if let first, first.profile == profile { return first.buffer }
        if let buffer = others[profile] { return buffer }
        var buffer = allocator.buffer(capacity: 96 + (message.parameters.last?.utf8.count ?? 0))
        if profile == 7 {
            message.write(to: &buffer)
        } else {
            message.write(to: &buffer, includingTag: { ChatServer.tagAllowed($0.key, session) })
        }
        if first == nil { first = (profile, buffer) } else { others[profile] = buffer }
        return buffer
    }
}
