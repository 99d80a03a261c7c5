import IRCWire

/// IRCv3 message redaction (`draft/message-redaction`): `REDACT <target> <msgid> [:reason]`.
///
/// What can be redacted is what Parley still knows the author of: a transient channel's recent
/// history (in memory), and messages between accounts and in groups that are still followed for
/// receipts (`tracked`). A message's author may redact it; in a channel, so may its operators.
/// A redacted message leaves history: from memory at once, from storage through an ordered
/// delete (so a later CHATHISTORY never sees it), and from the inbox of an offline recipient.
/// Clients with the capability see `REDACT` from the redactor; others see nothing.
extension ChatServer {
    mutating func handleRedact(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let session = sessions[context.connection] else { return }
        let rawTarget = message.parameters[0]
        let id = message.parameters[1]
        let reason = message.parameters.count > 2 ? String(message.parameters[2].prefix(configuration.kickLength)) : nil
        let line = IRCMessage(source: session.prefix, command: "REDACT", parameters: [rawTarget, id] + (reason.map { [$0] } ?? []))

        if rawTarget.hasPrefix("#") {
            guard let channel = channels[fold(rawTarget)], channel.contains(session.id) else {
                throw .fail("REDACT", "INVALID_TARGET", rawTarget, description: "You are not in that channel")
            }
            var shown = line
            shown.parameters[0] = channel.name
            let author: String?
            if channel.isGroup {
                guard let tracked = tracked[id], tracked.groupKey == channel.key else { throw unknownMessage(rawTarget, id) }
                author = tracked.author
            } else {
                guard let kept = channel.recentHistory.messages.first(where: { $0.id == id }), !channel.recentHistory.redacted.contains(id) else {
                    throw unknownMessage(rawTarget, id)
                }
                author = kept.senderAccount ?? kept.senderGuest
            }
            let isAuthor = author == (session.accountKey ?? guestIdentity(of: session.id))
            guard isAuthor || role(of: session.id, in: channel) >= .op else {
                throw .fail("REDACT", "REDACT_FORBIDDEN", channel.name, id, description: "You may only redact your own messages")
            }
            if channel.isGroup {
                forgetRedacted(id, into: &outbox)
            } else {
                channels[channel.key]?.recentHistory.redact(id)
            }
            for member in channel.joined {
                guard let receiver = sessions[member], receiver.has(.messageRedaction) else { continue }
                emit(shown, to: member, &context, &outbox)
            }
            return
        }

        // A direct message: only its author, an account, may take it back.
        guard let recipient = identity(named: rawTarget) else {
            throw .fail("REDACT", "INVALID_TARGET", rawTarget, description: "No such nick")
        }
        guard let tracked = tracked[id], tracked.groupKey == nil, tracked.recipients[recipient] != nil || tracked.author == recipient else {
            throw unknownMessage(rawTarget, id)
        }
        guard tracked.author == session.accountKey else {
            throw .fail("REDACT", "REDACT_FORBIDDEN", rawTarget, id, description: "You may only redact your own messages")
        }
        forgetRedacted(id, into: &outbox)
        var audience = sameNickOnline(session.id)
        for connection in nickIndex[fold(rawTarget)]?.connections ?? [] where !audience.contains(connection) { audience.append(connection) }
        for connection in audience {
            guard let receiver = sessions[connection], receiver.has(.messageRedaction) else { continue }
            emit(line, to: connection, &context, &outbox)
        }
    }

    func unknownMessage(_ target: String, _ id: String) -> CommandError {
        .fail("REDACT", "UNKNOWN_MSGID", target, id, description: "No message with that id can be redacted here")
    }

    /// A stored message is redacted: it is deleted from storage (with its recipients' rows), no
    /// longer followed for receipts, and taken out of offline recipients' inboxes.
    mutating func forgetRedacted(_ id: String, into outbox: inout Outbox) {
        for account in undelivered.keys where undelivered[account]?.contains(where: { $0.id == id }) == true {
            undelivered[account]?.removeAll { $0.id == id }
        }
        forgetTracked(id)
        outbox.actions.append(.deleteMessage(id: id))
    }
}
