import IRCWire

extension ChatServer {
    // MARK: AWAY / SETNAME / MODE

    mutating func handleAway(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        let text = message.parameters.first.map { String($0.prefix(configuration.awayLength)) } ?? ""
        sessions[id]?.awayMessage = text.isEmpty ? nil : text
        if text.isEmpty {
            numericReply(.rplUnAway, ["You are no longer marked as being away"], in: &context)
        } else {
            numericReply(.rplNowAway, ["You have been marked as being away"], in: &context)
        }
        guard let session = sessions[id], let nick = session.nick else { return }
        let notice = IRCMessage(source: session.prefix, command: "AWAY", parameters: text.isEmpty ? [] : [text])
        notifyObservers(of: nick, notice, requiring: .awayNotify, except: id, into: &outbox)
    }

    mutating func handleSetname(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let realname = message.parameters[0]
        guard !realname.isEmpty, realname.utf8.count <= configuration.realnameLength else {
            throw .fail("SETNAME", "INVALID_REALNAME", description: "Realname must be 1 to \(configuration.realnameLength) bytes")
        }
        let id = context.connection
        sessions[id]?.realname = realname
        guard let session = sessions[id], let nick = session.nick else { return }
        let change = IRCMessage(source: session.prefix, command: "SETNAME", parameters: [realname])
        if session.has(.setname) { context.replies.append(change) }
        notifyObservers(of: nick, change, requiring: .setname, except: id, into: &outbox)
    }

    mutating func handleMode(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let target = message.parameters[0]
        let id = context.connection
        guard let session = sessions[id], let nick = session.nick else { return }
        if target.hasPrefix("#") {
            try handleChannelMode(message, &context, &outbox)
            return
        }
        guard fold(target) == nick.folded else {
            if nickIndex[fold(target)] == nil { throw .numeric(.errNoSuchNick, target, "No such nick/channel") }
            throw .numeric(.errUsersDontMatch, "Can't change mode for other users")
        }
        guard message.parameters.count > 1 else {
            numericReply(.rplUModeIs, [userModes(session)], in: &context)
            return
        }
        var adding = true
        var applied = ""
        var appliedSign: Character?
        var unknown = false
        for character in message.parameters[1] {
            switch character {
            case "+": adding = true
            case "-": adding = false
            case "i":
                guard sessions[id]?.isInvisible != adding else { continue }
                sessions[id]?.isInvisible = adding
                if adding { visibleUsers.remove(id) } else { visibleUsers.insert(id) }
                if appliedSign != (adding ? "+" : "-") { applied.append(adding ? "+" : "-"); appliedSign = adding ? "+" : "-" }
                applied.append("i")
            case "o":
                // Operator status is granted by OPER only; it can be dropped.
                guard !adding, sessions[id]?.isOperator == true else { continue }
                sessions[id]?.isOperator = false
                operators.remove(id)
                if appliedSign != "-" { applied.append("-"); appliedSign = "-" }
                applied.append("o")
            case "B":
                guard sessions[id]?.isBot != adding else { continue }
                sessions[id]?.isBot = adding
                if appliedSign != (adding ? "+" : "-") { applied.append(adding ? "+" : "-"); appliedSign = adding ? "+" : "-" }
                applied.append("B")
            case "w":
                guard sessions[id]?.receivesWallops != adding else { continue }
                sessions[id]?.receivesWallops = adding
                if appliedSign != (adding ? "+" : "-") { applied.append(adding ? "+" : "-"); appliedSign = adding ? "+" : "-" }
                applied.append("w")
            case "r":
                continue
            default:
                unknown = true
            }
        }
        if !applied.isEmpty {
            context.replies.append(IRCMessage(source: session.prefix, command: "MODE", parameters: [nick.name, applied]))
        }
        if unknown { throw .numeric(.errUModeUnknownFlag, "Unknown MODE flag") }
    }

    func userModes(_ session: Session) -> String {
        var modes = "+"
        if session.isBot { modes.append("B") }
        if session.isInvisible { modes.append("i") }
        if session.isOperator { modes.append("o") }
        if session.accountKey != nil { modes.append("r") }
        if session.receivesWallops { modes.append("w") }
        return modes
    }

    // MARK: MONITOR (IRCv3 monitor, extended-monitor)

    mutating func handleMonitor(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        let subcommand = message.parameters[0]
        let targets = message.parameters.count > 1
            ? message.parameters[1].split(separator: ",", omittingEmptySubsequences: true).map(String.init) : []
        switch subcommand {
        case "+":
            guard !targets.isEmpty else { throw .needMoreParameters("MONITOR") }
            var added: [String] = []
            var refused: [String] = []
            for target in targets {
                let folded = fold(target)
                if !session.monitoredNicks.contains(folded) {
                    guard session.monitoredNicks.count < configuration.monitorLimit else {
                        refused.append(target)
                        continue
                    }
                    session.monitoredNicks.insert(folded)
                    monitorWatchers[folded, default: []].insert(id)
                }
                added.append(target)
            }
            reportMonitorStatus(added, in: &context)
            if !refused.isEmpty {
                numericReply(.errMonListFull, [String(configuration.monitorLimit), refused.joined(separator: ","), "Monitor list is full."], in: &context)
            }
        case "-":
            for target in targets { stopWatching(fold(target), by: session) }
        case "C", "c":
            for folded in session.monitoredNicks { stopWatching(folded, by: session) }
        case "L", "l":
            let names = session.monitoredNicks.sorted()
            for chunk in stride(from: 0, to: names.count, by: 20) {
                numericReply(.rplMonList, [names[chunk..<min(chunk + 20, names.count)].joined(separator: ",")], in: &context)
            }
            numericReply(.rplEndOfMonList, ["End of MONITOR list"], in: &context)
        case "S", "s":
            reportMonitorStatus(session.monitoredNicks.sorted(), in: &context)
        default:
            throw .numeric(.errUnknownCommand, "MONITOR", "Unknown MONITOR subcommand")
        }
    }

    /// RPL_MONONLINE (with full prefixes) and RPL_MONOFFLINE for these nicks.
    func reportMonitorStatus(_ nicks: [String], in context: inout CommandContext) {
        var online: [String] = []
        var offline: [String] = []
        for nick in nicks {
            if let first = nickIndex[fold(nick)]?.connections.first, let watched = sessions[first] {
                online.append(watched.prefix)
            } else {
                offline.append(nick)
            }
        }
        if !online.isEmpty { numericReply(.rplMonOnline, [online.joined(separator: ",")], in: &context) }
        if !offline.isEmpty { numericReply(.rplMonOffline, [offline.joined(separator: ",")], in: &context) }
    }

    mutating func stopWatching(_ folded: String, by session: Session) {
        session.monitoredNicks.remove(folded)
        monitorWatchers[folded]?.remove(session.id)
        if monitorWatchers[folded]?.isEmpty == true { monitorWatchers[folded] = nil }
    }

    /// Tells MONITOR watchers that a nick came online or went offline. In a cluster each node
    /// tells its own watchers (when it learns of the change), so that a watch and a change that
    /// cross between nodes are neither missed nor told twice.
    func notifyMonitors(nick: Nickname, online: Bool, session: Session, into outbox: inout Outbox) {
        guard let watchers = monitorWatchers[nick.folded] else { return }
        for watcher in watchers where isLocal(watcher) {
            guard let watching = sessions[watcher], watching.isRegistered else { continue }
            let message = IRCMessage(
                source: configuration.serverName, command: online ? Numeric.rplMonOnline.rawValue : Numeric.rplMonOffline.rawValue,
                parameters: [watching.replyName, online ? session.prefix : nick.name])
            send(message, to: watcher, into: &outbox)
        }
    }

    /// Sends a state change (AWAY, SETNAME, ACCOUNT...) to the connections that watch this user
    /// and asked for it: its own other connections, and extended-monitor watchers.
    func notifyObservers(of nick: Nickname, _ message: IRCMessage, requiring capability: Capability, except: ConnectionID, into outbox: inout Outbox) {
        var notified: Set<ConnectionID> = [except]
        for connection in nickIndex[nick.folded]?.connections ?? [] where !notified.contains(connection) {
            notified.insert(connection)
            if sessions[connection]?.has(capability) == true { send(message, to: connection, into: &outbox) }
        }
        for neighbour in channelNeighbours(of: nickIndex[nick.folded]?.connections ?? []) where !notified.contains(neighbour) {
            notified.insert(neighbour)
            if sessions[neighbour]?.has(capability) == true { send(message, to: neighbour, into: &outbox) }
        }
        for watcher in monitorWatchers[nick.folded] ?? [] where !notified.contains(watcher) {
            notified.insert(watcher)
            guard let session = sessions[watcher], session.has(.extendedMonitor), session.has(capability) else { continue }
            send(message, to: watcher, into: &outbox)
        }
    }

    // MARK: WHOIS / WHO / WHOWAS / ISON / USERHOST

    mutating func handleWhois(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        // `WHOIS server nick` asks a specific server; with one server the last parameter is the nick.
        let target = message.parameters[message.parameters.count - 1]
        let nickParameter = target.split(separator: ",").first.map(String.init) ?? target
        guard let holder = nickIndex[fold(nickParameter)], let first = holder.connections.first, let user = sessions[first], let nick = user.nick else {
            if let account = accounts[fold(nickParameter)] {
                numericReply(.errNoSuchNick, [nickParameter, "\(account.name) is offline"], in: &context)
                let lastSeen = account.lastSeen.map { Timestamp($0) }
                context.replies.append(standardLine(
                    "NOTE", "WHOIS", "LAST_SEEN", [account.name, lastSeen?.iso8601 ?? "never"],
                    lastSeen.map { "\(account.name) was last online \(Self.humanTime($0, now: context.now))" } ?? "\(account.name) has never been online"))
            } else {
                numericReply(.errNoSuchNick, [nickParameter, "No such nick/channel"], in: &context)
            }
            numericReply(.rplEndOfWhois, [nickParameter, "End of /WHOIS list"], in: &context)
            return
        }
        let asker = sessions[context.connection]
        numericReply(.rplWhoisUser, [nick.name, user.displayUsername, user.host, "*", user.realname], in: &context)
        numericReply(.rplWhoisServer, [nick.name, configuration.serverName, configuration.networkName], in: &context)
        // Channels the asker may know about: open ones, and closed groups the asker is in too.
        var visible: [String] = []
        for key in Set(holder.connections.flatMap { sessions[$0]?.channels ?? [] }).sorted() {
            guard let channel = channels[key] else { continue }
            if isClosed(channel, to: context.connection) { continue }
            visible.append(channel.prefixes(of: first, account: user.accountKey, all: asker?.has(.multiPrefix) == true) + channel.name)
        }
        if !visible.isEmpty {
            numericReply(.rplWhoisChannels, [nick.name, visible.joined(separator: " ")], in: &context)
        }
        if user.isOperator { numericReply(.rplWhoisOperator, [nick.name, "is an IRC operator"], in: &context) }
        if user.isBot { numericReply(.rplWhoisBot, [nick.name, "is a bot"], in: &context) }
        if let account = user.accountName {
            numericReply(.rplWhoisAccount, [nick.name, account, "is logged in as"], in: &context)
        }
        if holder.connections.allSatisfy({ sessions[$0]?.isSecure == true }) {
            numericReply(.rplWhoisSecure, [nick.name, "is using a secure connection"], in: &context)
        }
        if asker?.isOperator == true || context.connection == first {
            numericReply(.rplWhoisHost, [nick.name, "is connecting from *@\(user.host) \(user.host)"], in: &context)
        }
        if holder.connections.count > 1 {
            numericReply(.rplWhoisSpecial, [nick.name, "is connected \(holder.connections.count) times"], in: &context)
        }
        if holder.connections.allSatisfy({ sessions[$0]?.awayMessage != nil }), let away = user.awayMessage {
            numericReply(.rplAway, [nick.name, away], in: &context)
        }
        let lastActive = holder.connections.compactMap { sessions[$0]?.lastActivity }.max() ?? user.lastActivity
        numericReply(.rplWhoisIdle, [nick.name, String(max(0, context.now.milliseconds(since: lastActive) / 1000)),
                                     String(user.connectedAt.secondsSince1970), "seconds idle, signon time"], in: &context)
        context.replies += whoisMetadataLines(of: user, nick: nick.name, for: context.connection)
        numericReply(.rplEndOfWhois, [nick.name, "End of /WHOIS list"], in: &context)
    }

    mutating func handleWho(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let mask = message.parameters[0]
        // `WHO <mask> [o][%<fields>[,<token>]]`: the WHOX fields (IRCv3 whox) follow the `%`.
        let options = message.parameters.count > 1 ? message.parameters[1] : ""
        let flagPart = options.split(separator: "%", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let operatorsOnly = flagPart.contains("o")
        let whox = options.firstIndex(of: "%").map { WhoxRequest(String(options[options.index(after: $0)...])) }
        let asker = context.connection
        var matches: [Session] = []
        var channelForWho: ChatChannel?
        var scanStopped = false
        if mask.hasPrefix("#") {
            if let channel = channels[fold(mask)], !isClosed(channel, to: asker) {
                channelForWho = channel
                matches = channel.joined.compactMap { sessions[$0] }
            }
        } else if !mask.contains("*") && !mask.contains("?"), let holder = nickIndex[fold(mask)] {
            matches = holder.connections.compactMap { sessions[$0] }
        } else {
            // A scan of users: it stops once one more user than the bound has matched, or once
            // `maxWhoScanned` users have been looked at (a mask matching few users on a big
            // server would otherwise cost a pass over everyone under the lock, per WHO).
            let pattern = IRCMask(mask)
            var matchedNicks: Set<String> = []
            var scanned = 0
            for session in sessions.values where session.isRegistered && (!operatorsOnly || session.isOperator) {
                scanned += 1
                if scanned > configuration.maxWhoScanned {
                    scanStopped = true
                    break
                }
                // Invisible users are listed to themselves, operators, and people who share a channel with them.
                guard !session.isInvisible || session.id == asker || sessions[asker]?.isOperator == true
                        || !session.channels.isDisjoint(with: sessions[asker]?.channels ?? []) else { continue }
                if mask == "*" || mask == "0" || pattern.matches(session.nick?.name ?? "", caseMapping: configuration.caseMapping)
                    || pattern.matches(session.host, caseMapping: configuration.caseMapping)
                    || pattern.matches(session.realname, caseMapping: configuration.caseMapping) {
                    matches.append(session)
                    if let nick = session.nick, matchedNicks.insert(nick.folded).inserted, matchedNicks.count > configuration.maxWhoReplies { break }
                }
            }
        }
        var shown: Set<String> = []
        for session in matches where !operatorsOnly || session.isOperator {
            guard let nick = session.nick, !shown.contains(nick.folded) else { continue }
            if channelForWho == nil && shown.count == configuration.maxWhoReplies {
                context.replies.append(standardLine("NOTE", "WHO", "TRUNCATED", [mask],
                                                    "Only the first \(configuration.maxWhoReplies) matches are shown; narrow the mask"))
                break
            }
            shown.insert(nick.folded)
            var flags = session.awayMessage == nil ? "H" : "G"
            if session.isBot { flags.append("B") }
            if session.isOperator { flags.append("*") }
            if let channelForWho {
                flags += channelForWho.prefixes(of: session.id, account: session.accountKey, all: sessions[asker]?.has(.multiPrefix) == true)
            }
            if let whox {
                numericReply(.rplWhoSpcRpl, whox.fields.compactMap { field -> String? in
                    switch field {
                    case "t": whox.token
                    case "c": channelForWho?.name ?? "*"
                    case "u": session.displayUsername
                    case "i", "h": session.host
                    case "s": configuration.serverName
                    case "n": nick.name
                    case "f": flags
                    case "d": "0"
                    case "l": String(max(0, context.now.milliseconds(since: session.lastActivity) / 1000))
                    case "a": session.accountName ?? "0"
                    case "o": "n/a"
                    case "r": session.realname
                    default: nil
                    }
                }, in: &context)
                continue
            }
            numericReply(.rplWhoReply, [channelForWho?.name ?? "*", session.displayUsername, session.host, configuration.serverName, nick.name, flags, "0 \(session.realname)"], in: &context)
        }
        if scanStopped && shown.count < configuration.maxWhoReplies {
            context.replies.append(standardLine("NOTE", "WHO", "TRUNCATED", [mask],
                                                "Only the first \(configuration.maxWhoScanned) users were searched; narrow the mask"))
        }
        numericReply(.rplEndOfWho, [mask, "End of /WHO list"], in: &context)
    }

    mutating func handleWhowas(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let nick = message.parameters[0]
        // A count that is not positive asks for every entry (RFC 2812 3.6.3).
        let requestedCount = message.parameters.count > 1 ? Int(message.parameters[1]) ?? 0 : 0
        let limit = requestedCount > 0 ? requestedCount : Int.max
        let folded = fold(nick)
        let entries = whowas.reversed().filter { $0.folded == folded }.prefix(limit)
        if entries.isEmpty {
            numericReply(.errWasNoSuchNick, [nick, "There was no such nickname"], in: &context)
        }
        for entry in entries {
            numericReply(.rplWhoWasUser, [entry.nick, entry.username, entry.host, "*", entry.realname], in: &context)
            numericReply(.rplWhoisServer, [entry.nick, configuration.serverName, "left at \(entry.leftAt.iso8601)"], in: &context)
            if let account = entry.accountName {
                numericReply(.rplWhoisAccount, [entry.nick, account, "was logged in as"], in: &context)
            }
        }
        numericReply(.rplEndOfWhoWas, [nick, "End of WHOWAS"], in: &context)
    }

    mutating func handleIson(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        var online: [String] = []
        for parameter in message.parameters {
            for nick in parameter.split(separator: " ") {
                if let holder = nickIndex[fold(String(nick))], let first = holder.connections.first, let name = sessions[first]?.nick?.name {
                    online.append(name)
                }
            }
        }
        numericReply(.rplIsOn, [online.joined(separator: " ")], in: &context)
    }

    mutating func handleUserhost(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        var replies: [String] = []
        for nick in message.parameters.prefix(5) {
            guard let holder = nickIndex[fold(nick)], let first = holder.connections.first, let session = sessions[first], let name = session.nick?.name else { continue }
            replies.append("\(name)\(session.isOperator ? "*" : "")=\(session.awayMessage == nil ? "+" : "-")\(session.displayUsername)@\(session.host)")
        }
        numericReply(.rplUserHost, [replies.joined(separator: " ")], in: &context)
    }

    // MARK: Server queries

    mutating func handleMotd(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        motdReplies(&context)
    }

    func motdReplies(_ context: inout CommandContext) {
        context.replies += Self.motdMessages(configuration, nick: sessions[context.connection]?.replyName ?? "*")
    }

    static func motdMessages(_ configuration: ChatConfiguration, nick: String) -> [IRCMessage] {
        let source = configuration.serverName
        guard !configuration.motd.isEmpty else {
            return [IRCMessage(source: source, command: Numeric.errNoMotd.rawValue, parameters: [nick, "MOTD File is missing"])]
        }
        return [IRCMessage(source: source, command: Numeric.rplMotdStart.rawValue, parameters: [nick, "- \(configuration.serverName) Message of the day - "])]
            + configuration.motd.map { IRCMessage(source: source, command: Numeric.rplMotd.rawValue, parameters: [nick, "- " + $0]) }
            + [IRCMessage(source: source, command: Numeric.rplEndOfMotd.rawValue, parameters: [nick, "End of /MOTD command."])]
    }

    mutating func handleLusers(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        context.replies += lusersMessages(for: context.connection)
    }

    func lusersMessages(for connection: ConnectionID) -> [IRCMessage] {
        Self.lusersMessages(source: configuration.serverName, nick: sessions[connection]?.replyName ?? "*", lusersCounts)
    }

    /// The LUSERS counts, as text. Counted as things change: every registration sends them,
    /// and counting the sessions each time made connecting slower the more users there were.
    var lusersCounts: LusersCounts {
        let visible = visibleUsers.count
        let total = registeredSessionCount
        return LusersCounts(visible: String(visible), invisible: String(total - visible), operators: String(operators.count),
                            unknown: String(sessions.count - registeredSessionCount), total: String(total), maximum: String(maximumUsersSeen))
    }

    struct LusersCounts {
        var visible, invisible, operators, unknown, total, maximum: String
    }

    static func lusersMessages(source: String, nick: String, _ counts: LusersCounts) -> [IRCMessage] {
        func numeric(_ numeric: Numeric, _ parameters: [String]) -> IRCMessage {
            IRCMessage(source: source, command: numeric.rawValue, parameters: [nick] + parameters)
        }
        return [
            numeric(.rplLUserClient, ["There are \(counts.visible) users and \(counts.invisible) invisible on 1 servers"]),
            numeric(.rplLUserOp, [counts.operators, "operator(s) online"]),
            numeric(.rplLUserUnknown, [counts.unknown, "unknown connection(s)"]),
            numeric(.rplLUserChannels, ["0", "channels formed"]),
            numeric(.rplLUserMe, ["I have \(counts.total) clients and 0 servers"]),
            numeric(.rplLocalUsers, [counts.total, counts.maximum, "Current local users \(counts.total), max \(counts.maximum)"]),
            numeric(.rplGlobalUsers, [counts.total, counts.maximum, "Current global users \(counts.total), max \(counts.maximum)"]),
        ]
    }

    mutating func handleVersion(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        numericReply(.rplVersion, [configuration.version, configuration.serverName, "Parley chat server"], in: &context)
        for line in isupportLines { numericReply(.rplISupport, line, in: &context) }
    }

    mutating func handleInfo(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        numericReply(.rplInfo, ["Parley \(configuration.version): an IRC chat server with accounts, groups, offline delivery and receipts"], in: &context)
        numericReply(.rplEndOfInfo, ["End of /INFO list"], in: &context)
    }

    mutating func handleTime(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        numericReply(.rplTime, [configuration.serverName, context.now.iso8601], in: &context)
    }
}

/// The fields a WHOX query asks for (IRCv3 whox): always answered in this fixed order, whatever
/// order they were asked in, with the query's token (up to 3 digits) for `t`.
struct WhoxRequest {
    static let order: [Character] = ["t", "c", "u", "i", "h", "s", "n", "f", "d", "l", "a", "o", "r"]
    let fields: [Character]
    let token: String

    init(_ text: String) {
        let parts = text.split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false)
        let asked = Set(parts.first ?? "")
        fields = Self.order.filter { asked.contains($0) }
        let given = parts.count > 1 ? String(parts[1].prefix(3)) : ""
        token = !given.isEmpty && given.allSatisfy(\.isASCII) && given.allSatisfy(\.isNumber) ? given : "0"
    }
}
