import IRCWire

/// IRCv3 message redaction (`draft/message-redaction`): `REDACT <target> <msgid> [:reason]`.
///
/// What can be redacted is what Parley still knows the author of: a transient channel's recent
/// history (in memory), and messages between accounts and in groups that are still followed for
/// receipts (`tracked`, `deliveredDirect`). A message's author may redact it; in a channel, so may its operators.
/// A redacted message leaves history: from memory at once, from storage through an ordered
/// delete (so a later CHATHISTORY never sees it), and from the inbox of an offline recipient.
/// Clients with the capability see `REDACT` from the redactor; others see nothing.
extension ChatServer {
    /// A REDACT waiting for the store to say who wrote the message (in a cluster, only the node
    /// its author was on follows it for receipts).
    struct RedactRequest: Sendable {
        let target: String
        let messageID: String
        let reason: String?
        let label: String?
    }

    mutating func handleRedact(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let session = sessions[context.connection] else { return }
        let rawTarget = message.parameters[0]
        let id = message.parameters[1]
        let reason = message.parameters.count > 2 ? String(message.parameters[2].prefix(configuration.kickLength)) : nil
        let request = RedactRequest(target: rawTarget, messageID: id, reason: reason, label: context.label)

        if rawTarget.hasPrefix("#") {
            guard let channel = channels[fold(rawTarget)], channel.contains(session.id) else {
                throw .fail("REDACT", "INVALID_TARGET", rawTarget, description: "You are not in that channel")
            }
            let author: String?
            if channel.isGroup {
                guard let tracked = tracked[id] else {
                    guard isClustered else { throw unknownMessage(rawTarget, id) }
                    return lookUpForRedaction(request, in: .group(channel.key), &context, &outbox)
                }
                guard tracked.groupKey == channel.key else { throw unknownMessage(rawTarget, id) }
                author = tracked.author
            } else {
                guard let kept = channel.recentHistory.messages.first(where: { $0.id == id }), !channel.recentHistory.redacted.contains(id) else {
                    // Every node keeps a transient channel's history, and a node that starts gets
                    // it from the others; should this one still lack the message, the node its
                    // author used decides, and answers (the ids of this node's messages start
                    // with its name, and this node would know them). An id that names no node,
                    // or none that is up, is nobody's.
                    guard isClustered, let node = configuration.clusterNodeName, !id.hasPrefix(node + "."),
                          Self.isClusterMessageID(id), !namesNoLiveNode(id) else {
                        throw unknownMessage(rawTarget, id)
                    }
                    outbox.clusterEvents.append(.redactRequest(session.id, channel: channel.key, messageID: id, reason: reason))
                    return
                }
                author = kept.senderAccount ?? kept.senderGuest
            }
            try redactInChannel(request, channel: channel, author: author, session: session, &context, &outbox)
            return
        }

        // A direct message: only its author, an account, may take it back.
        guard let recipient = identity(named: rawTarget) else {
            throw .fail("REDACT", "INVALID_TARGET", rawTarget, description: "No such nick")
        }
        if let tracked = tracked[id] {
            guard tracked.groupKey == nil, tracked.recipients[recipient] != nil || tracked.author == recipient else {
                throw unknownMessage(rawTarget, id)
            }
            return try redactDirect(request, author: tracked.author, session: session, &context, &outbox)
        }
        guard let delivered = deliveredDirect.find(id) else {
            guard isClustered, let me = session.accountKey else { throw unknownMessage(rawTarget, id) }
            return lookUpForRedaction(request, in: .direct(me, recipient), &context, &outbox)
        }
        guard delivered.reader == recipient || delivered.author == recipient else { throw unknownMessage(rawTarget, id) }
        try redactDirect(request, author: delivered.author, session: session, &context, &outbox)
    }

    /// Asks the store for the message in that conversation; `completeRedaction` goes on.
    private mutating func lookUpForRedaction(_ request: RedactRequest, in conversation: HistoryQuery.Conversation,
                                             _ context: inout CommandContext, _ outbox: inout Outbox) {
        let ticket = nextTicket
        nextTicket += 1
        pendingWork[ticket] = .redaction(context.connection, request)
        sessions[context.connection]?.pendingTickets += 1
        outbox.actions.append(.loadHistory(ticket: ticket, query: HistoryQuery(conversation: conversation, kind: .around(.msgid(request.messageID)),
                                                                               limit: 1, includesEvents: true)))
        context.deferReplies()
    }

    /// The store answered a REDACT's question: who wrote the message, if it is in that
    /// conversation at all.
    mutating func completeRedaction(_ connection: ConnectionID, _ request: RedactRequest, result: HistoryResult, now: Timestamp, into outbox: inout Outbox) {
        guard let session = sessions[connection] else { return }
        session.pendingTickets -= 1
        defer { releaseHeldCommands(connection, now: now, into: &outbox) }
        var context = CommandContext(connection: connection, now: now, label: request.label)
        context.verb = "REDACT"
        do throws(CommandError) {
            guard case .messages(let found) = result, let stored = found.first(where: { $0.id == request.messageID }) else {
                throw unknownMessage(request.target, request.messageID)
            }
            if request.target.hasPrefix("#") {
                guard stored.targetKind == .group, let channel = channels[stored.target], channel.contains(connection) else {
                    throw unknownMessage(request.target, request.messageID)
                }
                try redactInChannel(request, channel: channel, author: stored.senderAccount ?? stored.senderGuest, session: session, &context, &outbox)
            } else {
                try redactDirect(request, author: stored.senderAccount, session: session, &context, &outbox)
            }
        } catch {
            render(error, in: &context)
        }
        finish(&context, into: &outbox)
    }

    private mutating func redactInChannel(_ request: RedactRequest, channel: ChatChannel, author: String?, session: Session,
                                          _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let isAuthor = author == (session.accountKey ?? guestIdentity(of: session.id))
        guard isAuthor || role(of: session.id, in: channel) >= .op else {
            throw .fail("REDACT", "REDACT_FORBIDDEN", channel.name, request.messageID, description: "You may only redact your own messages")
        }
        if channel.isGroup {
            forgetRedacted(request.messageID, into: &outbox)
        } else {
            channels[channel.key]?.recentHistory.redact(request.messageID)
            if isClustered { outbox.clusterEvents.append(.recentRedacted(channel: channel.key, messageID: request.messageID)) }
        }
        let line = redactLine(request, target: channel.name, session: session)
        for member in channel.joined where addressesDirectly(member) {
            guard let receiver = sessions[member], receiver.has(.messageRedaction) else { continue }
            emit(line, to: member, &context, &outbox)
        }
        fanOut(line, channel: channel.key, statusPrefix: nil, into: &outbox)
    }

    private mutating func redactDirect(_ request: RedactRequest, author: String?, session: Session,
                                       _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard author == session.accountKey else {
            throw .fail("REDACT", "REDACT_FORBIDDEN", request.target, request.messageID, description: "You may only redact your own messages")
        }
        forgetRedacted(request.messageID, into: &outbox)
        let line = redactLine(request, target: request.target, session: session)
        var audience = sameNickOnline(session.id)
        for connection in nickIndex[fold(request.target)]?.connections ?? [] where !audience.contains(connection) { audience.append(connection) }
        for connection in audience {
            guard let receiver = sessions[connection], receiver.has(.messageRedaction) else { continue }
            emit(line, to: connection, &context, &outbox)
        }
    }

    /// A connection of another node asked to redact a message of a transient channel that node
    /// does not keep, and this node's user wrote: decided here as for a local connection,
    /// answered to it here. The other nodes, which may keep the message too, leave it to this one.
    mutating func redactForAnotherNode(_ connection: ConnectionID, channelKey: String, messageID: String, reason: String?,
                                       now: Timestamp, into outbox: inout Outbox) {
        guard let node = configuration.clusterNodeName, messageID.hasPrefix(node + "."),
              let session = sessions[connection], let channel = channels[channelKey], !channel.isGroup else { return }
        var context = CommandContext(connection: Self.nobody, now: now, label: nil)
        let request = RedactRequest(target: channel.name, messageID: messageID, reason: reason, label: nil)
        do throws(CommandError) {
            guard channel.contains(connection), !channel.recentHistory.redacted.contains(messageID),
                  let kept = channel.recentHistory.messages.first(where: { $0.id == messageID }) else {
                throw unknownMessage(channel.name, messageID)
            }
            try redactInChannel(request, channel: channel, author: kept.senderAccount ?? kept.senderGuest, session: session, &context, &outbox)
        } catch {
            var answer = CommandContext(connection: connection, now: now, label: nil)
            answer.verb = "REDACT"
            render(error, in: &answer)
            finish(&answer, into: &outbox)
        }
    }

    private func redactLine(_ request: RedactRequest, target: String, session: Session) -> IRCMessage {
        IRCMessage(source: session.prefix, command: "REDACT", parameters: [target, request.messageID] + (request.reason.map { [$0] } ?? []))
    }

    /// Whether `id` has the shape of a message id a node gave (`MessageIDGenerator`:
    /// `node.start-counter`, the last two in base 36).
    static func isClusterMessageID(_ id: String) -> Bool {
        guard let dot = id.lastIndex(of: "."), dot != id.startIndex else { return false }
        let parts = id[id.index(after: dot)...].split(separator: "-", omittingEmptySubsequences: false)
        return parts.count == 2 && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy { $0.isASCII && ($0.isNumber || $0.isLowercase) } }
    }

    func unknownMessage(_ target: String, _ id: String) -> CommandError {
        .fail("REDACT", "UNKNOWN_MSGID", target, id, description: "No message with that id can be redacted here")
    }

    /// A stored message is redacted: it is deleted from storage (with its recipients' rows), no
    /// longer followed for receipts, and taken out of offline recipients' inboxes, on every
    /// node (whichever holds it for an offline recipient).
    mutating func forgetRedacted(_ id: String, into outbox: inout Outbox) {
        forgetRedactedHere(id)
        outbox.actions.append(.deleteMessage(id: id))
        if isClustered { outbox.clusterEvents.append(.redacted(messageID: id)) }
    }

    /// Another node redacted a stored message (and deleted it from storage).
    mutating func forgetRedactedHere(_ id: String) {
        for account in undelivered.keys where undelivered[account]?.contains(where: { $0.id == id }) == true {
            undelivered[account]?.removeAll { $0.id == id }
            if undelivered[account]?.isEmpty == true { undelivered[account] = nil }
        }
        forgetTracked(id)
    }
}
