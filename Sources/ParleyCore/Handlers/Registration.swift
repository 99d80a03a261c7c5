import IRCWire
import NIOCore

extension ChatServer {
    // MARK: CAP

    mutating func handleCap(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let subcommand = message.parameters[0].uppercased()
        let id = context.connection
        switch subcommand {
        case "LS":
            let version = Int(message.parameters.count > 1 ? message.parameters[1] : "") ?? 0
            let knownVersion = sessions[id]?.capVersion ?? 0
            sessions[id]?.capVersion = max(knownVersion, Int16(clamping: version))
            if sessions[id]?.isRegistered == false { sessions[id]?.capNegotiationInProgress = true }
            // Clients that speak 302 get values and implicitly enable cap-notify.
            if version >= 302 { sessions[id]?.capabilities.insert(.capNotify) }
            let tokens = Capability.allCases.map { capability -> String in
                if version >= 302, let value = capability.value(saslMechanisms: Self.saslMechanisms,
                                                                registrationBeforeConnect: configuration.accountRegistrationBeforeConnect) {
                    return capability.name + "=" + value
                }
                return capability.name
            }
            capReplies("LS", tokens, multiline: version >= 302, in: &context)
        case "LIST":
            capReplies("LIST", sessions[id]?.capabilities.names ?? [], multiline: (sessions[id]?.capVersion ?? 0) >= 302, in: &context)
        case "REQ":
            if sessions[id]?.isRegistered == false { sessions[id]?.capNegotiationInProgress = true }
            let requested = message.parameters.count > 1 ? message.parameters[1] : ""
            var updated = sessions[id]?.capabilities ?? CapabilitySet()
            var acceptable = !requested.isEmpty
            for token in requested.split(separator: " ") {
                let removing = token.hasPrefix("-")
                guard let capability = Capability(name: String(removing ? token.dropFirst() : token[...])) else {
                    acceptable = false
                    break
                }
                if removing {
                    // cap-notify cannot be disabled by 302 clients; the spec makes it sticky.
                    if capability == .capNotify && (sessions[id]?.capVersion ?? 0) >= 302 { acceptable = false; break }
                    updated.remove(capability)
                } else {
                    updated.insert(capability)
                }
            }
            if acceptable { sessions[id]?.capabilities = updated }
            context.replies.append(IRCMessage(
                source: configuration.serverName, command: "CAP",
                parameters: [sessions[id]?.replyName ?? "*", acceptable ? "ACK" : "NAK", requested]))
        case "END":
            guard let session = sessions[id], !session.isRegistered else { return }
            sessions[id]?.capNegotiationInProgress = false
            if case .idle = session.sasl {} else { sessions[id]?.sasl = .idle }
            completeRegistrationIfReady(id, &context, &outbox)
        default:
            throw .numeric(.errInvalidCapCmd, subcommand, "Invalid CAP command")
        }
    }

    static let saslMechanisms = ["PLAIN", "SCRAM-SHA-256"]

    /// Splits a CAP LS/LIST answer so that no line exceeds the 512-byte limit; 302 clients get `*`
    /// on every line but the last.
    func capReplies(_ subcommand: String, _ tokens: [String], multiline: Bool, in context: inout CommandContext) {
        let name = sessions[context.connection]?.replyName ?? "*"
        var lines: [[String]] = [[]]
        var length = 0
        for token in tokens {
            if length + token.utf8.count + 1 > 400, !lines[lines.count - 1].isEmpty {
                lines.append([])
                length = 0
            }
            lines[lines.count - 1].append(token)
            length += token.utf8.count + 1
        }
        if !multiline { lines = [lines.flatMap { $0 }] }
        for (index, line) in lines.enumerated() {
            var parameters = [name, subcommand]
            if index < lines.count - 1 { parameters.append("*") }
            parameters.append(line.joined(separator: " "))
            context.replies.append(IRCMessage(source: configuration.serverName, command: "CAP", parameters: parameters))
        }
    }

    // MARK: NICK / USER / PASS

    mutating func handleNick(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let raw = message.parameters.first, !raw.isEmpty else {
            throw .numeric(.errNoNicknameGiven, "No nickname given")
        }
        let nick: Nickname
        do {
            nick = try Nickname(raw, caseMapping: configuration.caseMapping, maxLength: configuration.nickLength)
        } catch {
            throw .numeric(.errErroneusNickname, raw, "Erroneous nickname")
        }
        let id = context.connection
        guard let session = sessions[id] else { return }
        if Self.serviceNicks.contains(nick.folded) {
            throw .numeric(.errErroneusNickname, raw, "That nickname is reserved for services")
        }
        if !session.isRegistered {
            // Uniqueness is checked when registration completes, so a NICK/USER pair can be sent
            // in any order; an early answer still helps clients that pick another nick at once.
            // A nick held by an account stays possible: the account's other devices log in
            // with it, and completion refuses it to anyone who does not.
            let heldByGuest = nickIndex[nick.folded].map { $0.accountKey == nil } ?? false
            if heldByGuest || pendingAccountKeys.contains(nick.folded) {
                sessions[id]?.refusedNick = nick.name
                throw .numeric(.errNicknameInUse, raw, "Nickname is already in use")
            }
            sessions[id]?.refusedNick = nil
            sessions[id]?.nick = nick
            completeRegistrationIfReady(id, &context, &outbox)
            return
        }
        guard let current = session.nick else { return }
        if let accountName = session.accountName, fold(accountName) != nick.folded {
            throw .numeric(.errNickLocked, "You are logged in as \(accountName); your nick is your account name")
        }
        if current.name == nick.name { return }
        if current.folded != nick.folded {
            if nickIndex[nick.folded] != nil || pendingAccountKeys.contains(nick.folded) {
                throw .numeric(.errNicknameInUse, raw, "Nickname is already in use")
            }
            if session.accountKey == nil, accounts[nick.folded] != nil {
                throw .numeric(.errNicknameInUse, raw, "Nickname is reserved by a registered account; log in to use it")
            }
        }
        changeNick(of: id, to: nick, context: &context, outbox: &outbox)
    }

    static let serviceNicks: Set<String> = ["nickserv", "chanserv", "parley", "histserv"]

    /// Renames a registered guest (or all sessions of an account) and tells those who see it.
    mutating func changeNick(of connection: ConnectionID, to nick: Nickname, context: inout CommandContext, outbox: inout Outbox) {
        guard let session = sessions[connection], let old = session.nick else { return }
        let oldPrefix = session.prefix
        // Sessions are shared references: keep what the old nick looked like before renaming.
        let departed = whowasEntry(session, now: context.now)
        let oldSession = Session(snapshotOf: session)
        // The connection is in its nick's entry, except a remote one that lost a collision
        // (ChatServer+Cluster): that entry is someone else's and stays.
        let members: [ConnectionID]
        if let holder = nickIndex[old.folded], holder.connections.contains(connection) {
            members = Array(holder.connections)
            nickIndex[old.folded] = nil
        } else {
            members = [connection]
        }
        var holder = nickIndex[nick.folded] ?? NickHolder(connections: [], accountKey: session.accountKey)
        for member in members where !holder.connections.contains(member) {
            holder.connections.append(member)
            sessions[member]?.nick = nick
        }
        nickIndex[nick.folded] = holder
        let change = IRCMessage(source: oldPrefix, command: "NICK", parameters: [nick.name])
        for member in members {
            if member == connection { context.replies.append(change) } else { send(change, to: member, into: &outbox) }
        }
        for neighbour in channelNeighbours(of: members) { send(change, to: neighbour, into: &outbox) }
        if old.folded != nick.folded {
            if let departed { recordWhowas(departed) }
            notifyMonitors(nick: old, online: false, session: oldSession, into: &outbox)
            if let updated = sessions[connection] { notifyMonitors(nick: nick, online: true, session: updated, into: &outbox) }
        }
    }

    mutating func handleUser(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        if session.isRegistered || session.username != nil {
            throw .numeric(.errAlreadyRegistered, "You may not reregister")
        }
        let requested = message.parameters[0]
        let cleaned = String(requested.unicodeScalars.filter { scalar in
            scalar.isASCII && scalar.value > 32 && scalar != "@" && scalar != "!" && scalar != ":"
        }.prefix(configuration.userLength - 1).map(Character.init))
        // An empty username or realname is a missing parameter (modern-irc USER).
        guard !requested.isEmpty, !message.parameters[3].isEmpty else { throw .needMoreParameters("USER") }
        // A username with nothing usable in a hostmask (emoji, say) still lets the user in.
        sessions[id]?.username = "~" + (cleaned.isEmpty ? "user" : cleaned)
        sessions[id]?.realname = String(message.parameters[3].prefix(configuration.realnameLength))
        completeRegistrationIfReady(id, &context, &outbox)
    }

    mutating func handlePass(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        if session.isRegistered { throw .numeric(.errAlreadyRegistered, "You may not reregister") }
        let value = message.parameters[0]
        if let required = configuration.serverPassword {
            // A server with a connection password takes only that in PASS (RFC 2812 3.1.1);
            // accounts log in with SASL or NickServ there. Checked when registration completes.
            sessions[id]?.gaveServerPassword = Self.constantTimeEqual(value, required)
            return
        }
        // PASS account:password logs in to an account; PASS password uses the nick as account.
        if let colon = value.firstIndex(of: ":"), colon != value.startIndex {
            sessions[id]?.passCredentials = (String(value[..<colon]), String(value[value.index(after: colon)...]))
        } else {
            sessions[id]?.passCredentials = ("", value)
        }
    }

    // MARK: Registration completion

    /// Finishes registration once NICK and USER are in, CAP negotiation has ended and no login is
    /// in flight. A pending `PASS` login is started here, when the nick is known.
    mutating func completeRegistrationIfReady(_ id: ConnectionID, _ context: inout CommandContext, _ outbox: inout Outbox) {
        guard let session = sessions[id], !session.isRegistered,
              let nick = session.nick, session.username != nil,
              !session.capNegotiationInProgress, session.pendingTickets == 0
        else { return }

        if configuration.serverPassword != nil && !session.gaveServerPassword {
            render(.numeric(.errPasswdMismatch, "Password incorrect: this server needs its connection password (PASS)"), in: &context)
            disconnect(id, reason: "Bad password", context: &context, outbox: &outbox)
            return
        }
        if let pass = session.passCredentials, session.accountKey == nil {
            sessions[id]?.passCredentials = nil
            let accountName = pass.account.isEmpty ? nick.name : pass.account
            let key = fold(accountName)
            // An unknown account is answered like a wrong password, after as long.
            switch startPasswordCheck(.passLogin(id, accountKey: key), throttleKey: key, credential: accounts[key]?.credential,
                                      password: pass.password, session: session, now: context.now, into: &outbox) {
            case nil:
                break
            case .throttled(let seconds)?:
                render(.numeric(.errPasswdMismatch, LoginRefusal.throttled(seconds: seconds).text), in: &context)
                disconnect(id, reason: "Too many failed logins", context: &context, outbox: &outbox)
            case .busy?:
                render(.fail("PASS", "TEMPORARILY_UNAVAILABLE", description: LoginRefusal.busy.text), in: &context)
                disconnect(id, reason: "Server busy; try again later", context: &context, outbox: &outbox)
            }
            return
        }

        var effectiveNick = nick
        if let accountName = session.accountName, let accountNick = try? Nickname(accountName, caseMapping: configuration.caseMapping, maxLength: configuration.nickLength) {
            effectiveNick = accountNick
            if let holder = nickIndex[accountNick.folded], holder.accountKey == nil {
                // A nick is held by one identity at a time: a guest who holds an account's nick
                // gives it back when the account connects.
                for squatter in holder.connections {
                    disconnect(squatter, reason: "Nickname reclaimed by its account", now: context.now, into: &outbox)
                }
            }
        } else {
            if accounts[nick.folded] != nil {
                sessions[id]?.nick = nil
                render(.numeric(.errNicknameInUse, nick.name, "Nickname is reserved by a registered account; log in with SASL or PASS \(nick.name):<password>, or pick another nick"), in: &context)
                return
            }
            if nickIndex[nick.folded] != nil || pendingAccountKeys.contains(nick.folded) {
                sessions[id]?.nick = nil
                render(.numeric(.errNicknameInUse, nick.name, "Nickname is already in use"), in: &context)
                return
            }
            if !configuration.allowGuests {
                render(.fail("*", "ACCOUNT_REQUIRED", description: "This server requires an account: log in with SASL or PASS, or register with REGISTER"), in: &context)
                disconnect(id, reason: "Account required", context: &context, outbox: &outbox)
                return
            }
        }

        sessions[id]?.nick = effectiveNick
        sessions[id]?.isRegistered = true
        registeredSessionCount += 1
        counters.connectionRegistrations &+= 1
        let wasOnline = nickIndex[effectiveNick.folded] != nil
        var holder = nickIndex[effectiveNick.folded] ?? NickHolder(connections: [], accountKey: session.accountKey)
        holder.connections.append(id)
        nickIndex[effectiveNick.folded] = holder
        maximumUsersSeen = max(maximumUsersSeen, registeredSessionCount)
        publishSession(id, into: &outbox)
        sendWelcome(to: id, &context, &outbox)
        joinGroupsOfAccount(id, &context, &outbox)
        deliverBacklog(to: id, &context, &outbox)
        if let registered = sessions[id], !wasOnline {
            notifyMonitors(nick: effectiveNick, online: true, session: registered, into: &outbox)
        }
    }

    /// Closes the connection handling the current command, after its replies.
    mutating func disconnect(_ id: ConnectionID, reason: String, context: inout CommandContext, outbox: inout Outbox) {
        guard sessions[id] != nil else { return }
        finish(&context, into: &outbox)
        context.replies.removeAll()
        context.connectionClosed = true
        disconnect(id, reason: reason, now: context.now, into: &outbox)
    }

    /// The welcome burst (RPL_WELCOME to the end of the MOTD, and the +i mode). Written straight
    /// into the outbox when nothing else is queued for the command's replies (nearly every
    /// registration), from `welcomeTemplate`: a registration costs a copy of the encoded lines
    /// with its nick and counts in place, not a message and an encoding per line. Otherwise (a
    /// label to apply, or replies already queued) the same bytes are read back as messages and
    /// join the replies.
    mutating func sendWelcome(to id: ConnectionID, _ context: inout CommandContext, _ outbox: inout Outbox) {
        guard let session = sessions[id], let nick = session.nick else { return }
        if context.label == nil, context.replies.isEmpty, context.pendingStores.isEmpty, session.storesInFlight == 0 {
            // About 1,600 bytes: one buffer of the right size, not three as it grows.
            let capacity = (welcomeTemplate?.byteCount ?? 2048) + 512
            outbox.write(to: id, allocator: allocator, capacity: capacity) { buffer in writeWelcome(session, nick: nick.name, to: &buffer) }
            return
        }
        var buffer = allocator.buffer(capacity: 2048)
        writeWelcome(session, nick: nick.name, to: &buffer)
        while let end = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = buffer.readSlice(length: end - buffer.readerIndex - 1)!
            buffer.moveReaderIndex(forwardBy: 2)
            if let message = try? IRCMessage(parsing: line, maxTagsBytes: .max, maxBodyBytes: .max) { context.replies.append(message) }
        }
    }

    private func writeWelcome(_ session: Session, nick: String, to buffer: inout ByteBuffer) {
        let counts = lusersCounts
        if let welcomeTemplate {
            welcomeTemplate.write(nick, session.prefixWithoutKeeping, counts.visible, counts.invisible, counts.operators, counts.unknown,
                                  counts.total, counts.maximum, to: &buffer)
        } else {
            for message in Self.welcomeMessages(configuration, isupportLines: isupportLines, createdText: createdText, nick: nick,
                                                prefix: session.prefixWithoutKeeping, lusers: counts) {
                message.write(to: &buffer)
            }
        }
        if session.isInvisible {
            IRCMessage(source: nick, command: "MODE", parameters: [nick, "+i"]).write(to: &buffer)
        }
    }

    /// RPL_WELCOME to the end of the MOTD, for any nick and counts (the template's lines).
    static func welcomeMessages(_ configuration: ChatConfiguration, isupportLines: [[String]], createdText: String, nick: String, prefix: String,
                                lusers: LusersCounts) -> [IRCMessage] {
        let source = configuration.serverName
        var messages = [
            IRCMessage(source: source, command: Numeric.rplWelcome.rawValue,
                       parameters: [nick, "Welcome to the \(configuration.networkName) IRC Network, \(prefix)"]),
            IRCMessage(source: source, command: Numeric.rplYourHost.rawValue,
                       parameters: [nick, "Your host is \(configuration.serverName), running version \(configuration.version)"]),
            IRCMessage(source: source, command: Numeric.rplCreated.rawValue, parameters: [nick, createdText]),
            IRCMessage(source: source, command: Numeric.rplMyInfo.rawValue,
                       parameters: [nick, configuration.serverName, configuration.version, "Biorw", "CIbeiklmnostv", "Ibeklov"]),
        ]
        for line in isupportLines { messages.append(IRCMessage(source: source, command: Numeric.rplISupport.rawValue, parameters: [nick] + line)) }
        messages += lusersMessages(source: source, nick: nick, lusers)
        messages += motdMessages(configuration, nick: nick)
        return messages
    }

    /// The template of `welcomeMessages`, with its values in `writeWelcome`'s order; nil when
    /// the server's own text holds a placeholder.
    static func makeWelcomeTemplate(_ configuration: ChatConfiguration, isupportLines: [[String]], createdText: String) -> ReplyTemplate? {
        ReplyTemplate { value in
            welcomeMessages(
                configuration, isupportLines: isupportLines, createdText: createdText, nick: value(0), prefix: value(1),
                lusers: LusersCounts(visible: value(2), invisible: value(3), operators: value(4), unknown: value(5), total: value(6), maximum: value(7)))
        }
    }

    /// Compares without stopping at the first difference, so timing tells nothing of the secret.
    static func constantTimeEqual(_ given: String, _ secret: String) -> Bool {
        let a = Array(given.utf8), b = Array(secret.utf8)
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for index in 0..<b.count { difference |= (index < a.count ? a[index] : 0) ^ b[index] }
        return difference == 0
    }

    static func makeISupportTokens(_ configuration: ChatConfiguration) -> [String] {
        let targets = configuration.maxMessageTargets
        return [
            "ACCOUNTEXTBAN=a",
            "AWAYLEN=\(configuration.awayLength)",
            "BOT=B",
            "CASEMAPPING=\(configuration.caseMapping.rawValue)",
            "CHATHISTORY=\(configuration.chathistoryLimit)",
            "CHANLIMIT=#:\(configuration.maxChannelsPerUser.map(String.init) ?? "")",
            "CHANMODES=Ibe,k,l,Cimnst",
            "CHANNELLEN=\(configuration.channelLength)",
            "CHANTYPES=#",
            "ELIST=MNU",
            "EXCEPTS=e",
            "EXTBAN=,am",
            "HOSTLEN=64",
            "INVEX=I",
            "KICKLEN=\(configuration.kickLength)",
            "LINELEN=512",
            "MAXLIST=b:\(configuration.maxBansPerChannel),e:\(configuration.maxBansPerChannel),I:\(configuration.maxBansPerChannel)",
            "MAXTARGETS=\(targets)",
            "MODES=4",
            "MONITOR=\(configuration.monitorLimit)",
            "MSGREFTYPES=timestamp,msgid",
            "NETWORK=\(configuration.networkName)",
            "NICKLEN=\(configuration.nickLength)",
            "PREFIX=(qov)~@+",
            "STATUSMSG=@+",
            "TARGMAX=PRIVMSG:\(targets),NOTICE:\(targets),TAGMSG:\(targets),WHOIS:1,JOIN:,PART:,KICK:\(targets),NAMES:\(targets),MONITOR:",
            "TOPICLEN=\(configuration.topicLength)",
            "USERLEN=\(configuration.userLength)",
            "UTF8ONLY",
            "WHOX",
        ]
    }

    // MARK: PING / QUIT

    mutating func handlePing(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        context.replies.append(IRCMessage(
            source: configuration.serverName, command: "PONG",
            parameters: [configuration.serverName, message.parameters[0]]))
    }

    mutating func handleQuit(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let reason = message.parameters.first.map { "Quit: " + $0 } ?? "Quit"
        disconnect(context.connection, reason: reason, context: &context, outbox: &outbox)
    }
}
