import IRCWire

/// IRCv3 `draft/chathistory`: stored conversations, for their participants only, and the recent
/// messages of transient channels (in memory) for the people in them.
extension ChatServer {
    mutating func handleChatHistory(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        let parameters = message.parameters
        let subcommand = parameters[0].uppercased()
        // A transient channel the asker is in (others are answered as for any channel they are not in).
        let transientChannel = parameters.count > 1 && parameters[1].hasPrefix("#")
            ? channels[fold(parameters[1])].flatMap { !$0.isGroup && $0.contains(id) ? $0 : nil } : nil
        // Stored history belongs to accounts; a transient channel's recent messages to whoever is in it.
        func requireAccount() throws(CommandError) -> String {
            guard let account = sessions[id]?.accountKey else {
                throw .fail("CHATHISTORY", "INVALID_TARGET", subcommand, parameters.count > 1 ? parameters[1] : "*",
                            description: "Log in to an account to read history")
            }
            return account
        }
        if transientChannel == nil { _ = try requireAccount() }
        func limit(_ text: String) throws(CommandError) -> Int {
            guard let value = Int(text), value > 0 else {
                throw .fail("CHATHISTORY", "INVALID_PARAMS", subcommand, text, description: "The limit must be a positive number")
            }
            return min(value, configuration.chathistoryLimit)
        }
        func reference(_ text: String, allowStar: Bool = false) throws(CommandError) -> HistoryQuery.Reference? {
            if allowStar && text == "*" { return nil }
            if text.hasPrefix("timestamp="), let time = Timestamp(iso8601: String(text.dropFirst(10))) { return .timestamp(time) }
            if text.hasPrefix("msgid="), text.count > 6 { return .msgid(String(text.dropFirst(6))) }
            throw .fail("CHATHISTORY", "INVALID_PARAMS", subcommand, text, description: "Use timestamp=YYYY-MM-DDThh:mm:ss.sssZ or msgid=<id>")
        }

        if subcommand == "TARGETS" {
            guard parameters.count >= 4,
                  case .timestamp(let first)? = try reference(parameters[1]),
                  case .timestamp(let second)? = try reference(parameters[2]) else {
                throw .fail("CHATHISTORY", "INVALID_PARAMS", subcommand, description: "Usage: CHATHISTORY TARGETS timestamp=<from> timestamp=<to> <limit>")
            }
            let account = try requireAccount()
            let groups = (groupsOfAccount[account] ?? []).sorted()
            let query = HistoryQuery(conversation: .everything(account: account, groups: groups),
                                     kind: .targets(min(first, second), max(first, second)), limit: try limit(parameters[3]))
            startHistory(query, target: "*", subcommand: subcommand, &context, &outbox)
            return
        }

        guard parameters.count >= 4 else {
            throw .fail("CHATHISTORY", "NEED_MORE_PARAMS", subcommand, description: "Missing parameters")
        }
        let target = parameters[1]
        let conversation: HistoryQuery.Conversation?
        if transientChannel != nil {
            conversation = nil
        } else if target.hasPrefix("#") {
            let account = try requireAccount()
            guard let channel = channels[fold(target)], channel.isGroup, channel.accountRoles[account] != nil else {
                // Not a member (or no such group): nothing to read, and no hint whether it exists.
                throw .fail("CHATHISTORY", "INVALID_TARGET", subcommand, target, description: "You are not a member of \(target)")
            }
            conversation = .group(channel.key)
        } else if let other = identity(named: target) {
            conversation = .direct(try requireAccount(), other)
        } else {
            // Nobody holds that name now: there is no conversation to read (a guest's conversation
            // belonged to the guest's connection, not to the nick).
            conversation = nil
        }
        let kind: HistoryQuery.Kind
        let count: Int
        switch subcommand {
        case "LATEST":
            kind = .latest(after: try reference(parameters[2], allowStar: true))
            count = try limit(parameters[3])
        case "BEFORE", "AFTER", "AROUND":
            guard let point = try reference(parameters[2]) else { throw .needMoreParameters("CHATHISTORY") }
            kind = subcommand == "BEFORE" ? .before(point) : subcommand == "AFTER" ? .after(point) : .around(point)
            count = try limit(parameters[3])
        case "BETWEEN":
            guard parameters.count >= 5, let first = try reference(parameters[2]), let second = try reference(parameters[3]) else {
                throw .fail("CHATHISTORY", "NEED_MORE_PARAMS", subcommand, description: "Usage: CHATHISTORY BETWEEN <target> <from> <to> <limit>")
            }
            kind = .between(first, second)
            count = try limit(parameters[4])
        default:
            throw .fail("CHATHISTORY", "INVALID_PARAMS", subcommand, description: "Unknown subcommand; use LATEST, BEFORE, AFTER, AROUND, BETWEEN or TARGETS")
        }
        if let transientChannel {
            // Answered at once from memory: nothing to wait for.
            let events = sessions[id]?.has(.eventPlayback) == true
            let history = events ? transientChannel.recentHistory : transientChannel.recentHistory.hidingEvents()
            let found = (try? history.messages(kind, limit: count)) ?? []
            if let session = sessions[id] { context.replies.append(contentsOf: historyReplies(found, target: target, for: session)) }
            return
        }
        guard let conversation else {
            if let session = sessions[id] { context.replies.append(contentsOf: batched([], type: "chathistory", parameters: [target], for: session)) }
            return
        }
        let query = HistoryQuery(conversation: conversation, kind: kind, limit: count, includesEvents: sessions[id]?.has(.eventPlayback) == true)
        startHistory(query, target: target, subcommand: subcommand, &context, &outbox)
    }

    private mutating func startHistory(_ query: HistoryQuery, target: String, subcommand: String, _ context: inout CommandContext, _ outbox: inout Outbox) {
        let ticket = nextTicket
        nextTicket += 1
        pendingWork[ticket] = .history(context.connection, target: target, label: context.label, subcommand: subcommand)
        // The connection's later commands wait for the read, as for a password check: every
        // reply to a command comes before any reply to a later one.
        sessions[context.connection]?.pendingTickets += 1
        counters.historyQueries &+= 1
        outbox.actions.append(.loadHistory(ticket: ticket, query: query))
        context.deferReplies()
    }

    /// The store has answered a CHATHISTORY request.
    public mutating func completeHistory(ticket: UInt64, result: HistoryResult, now: Timestamp, into outbox: inout Outbox) {
        if case .redaction(let connection, let request)? = pendingWork[ticket] {
            pendingWork[ticket] = nil
            return completeRedaction(connection, request, result: result, now: now, into: &outbox)
        }
        guard case .history(let id, let target, let label, let subcommand)? = pendingWork.removeValue(forKey: ticket),
              let session = sessions[id] else { return }
        session.pendingTickets -= 1
        defer { releaseHeldCommands(id, now: now, into: &outbox) }
        var context = CommandContext(connection: id, now: now, label: label)
        switch result {
        case .failed(let reason):
            render(.fail("CHATHISTORY", "MESSAGE_ERROR", subcommand, target, description: "History could not be read: \(reason)"), in: &context)
        case .targets(let targets):
            let lines = targets.compactMap { entry -> IRCMessage? in
                let name: String
                if entry.isGroup {
                    name = channels[entry.key]?.name ?? entry.key
                } else if let account = accounts[entry.key] {
                    name = account.name
                } else if let guest = guestSession(identity: entry.key)?.nick {
                    name = guest.name
                } else {
                    return nil  // a guest who has left: no name reaches that conversation any more
                }
                return IRCMessage(source: configuration.serverName, command: "CHATHISTORY", parameters: ["TARGETS", name, "timestamp=\(entry.latest.iso8601)"])
            }
            context.replies.append(contentsOf: batched(lines, type: "draft/chathistory-targets", parameters: [], for: session))
        case .messages(let messages) where subcommand == "RECEIPTS":
            receiptStatusReplies(requested: target.split(separator: ",").map(String.init), found: messages, into: &context)
        case .messages(let messages):
            context.replies.append(contentsOf: historyReplies(messages, target: target, for: session))
        }
        finish(&context, into: &outbox)
    }

    /// A CHATHISTORY answer: the messages, in a `chathistory` batch for clients with batches.
    /// Events other than messages (a transient channel's TOPIC changes) only go to clients with
    /// draft/event-playback.
    mutating func historyReplies(_ messages: [StoredMessage], target: String, for session: Session) -> [IRCMessage] {
        let replayed = session.has(.eventPlayback) ? messages : messages.filter { $0.command == "PRIVMSG" || $0.command == "NOTICE" }
        let lines = replayed.map { stored in
            storedLine(stored, target: stored.targetKind == .group
                ? (channels[stored.target]?.name ?? target)
                : displayName(ofParty: stored.target, storedNick: stored.targetName))
        }
        return batched(lines, type: "chathistory", parameters: [target], for: session)
    }
}
