import Foundation
import IRCWire

extension ChatServer {
    // MARK: SASL (IRCv3 sasl 3.1/3.2: AUTHENTICATE with 400-byte base64 chunks)

    mutating func handleAuthenticate(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        let argument = message.parameters[0]
        if argument == "*" {
            if case .idle = session.sasl { throw .numeric(.errSaslAborted, "SASL authentication aborted") }
            sessions[id]?.sasl = .idle
            throw .numeric(.errSaslAborted, "SASL authentication aborted")
        }
        if argument.utf8.count > 400 {
            sessions[id]?.sasl = .idle
            throw .numeric(.errSaslTooLong, "SASL message too long")
        }
        if session.sasl.bufferedBytes + argument.utf8.count > Self.maximumSASLMessageBytes {
            // 905 is for one AUTHENTICATE over 400 bytes (sasl-3.1); a message whose chunks add
            // up to too much ends the exchange as a failed authentication.
            sessions[id]?.sasl = .idle
            throw .numeric(.errSaslFail, "SASL authentication failed: the message is over \(Self.maximumSASLMessageBytes) bytes of base64")
        }
        switch session.sasl {
        case .idle:
            if session.accountKey != nil { throw .numeric(.errSaslAlready, "You have already authenticated using SASL") }
            switch argument.uppercased() {
            case "PLAIN":
                sessions[id]?.sasl = .awaitingPlain(buffer: "")
            case "SCRAM-SHA-256":
                sessions[id]?.sasl = .scram(exchange: ScramSHA256ServerExchange(), step: .awaitingClientFirst, buffer: "", username: nil)
            default:
                numericReply(.rplSaslMechs, [Self.saslMechanisms.joined(separator: ","), "are available SASL mechanisms"], in: &context)
                throw .numeric(.errSaslFail, "SASL authentication failed")
            }
            context.replies.append(IRCMessage(command: "AUTHENTICATE", parameters: ["+"]))
        case .checking:
            throw .numeric(.errSaslFail, "SASL authentication failed: a check is already in progress")
        case .awaitingPlain(let buffer):
            guard let payload = collectChunk(buffer, argument) else {
                sessions[id]?.sasl = .awaitingPlain(buffer: buffer + argument)
                return
            }
            try continuePlain(payload, &context, &outbox)
        case .scram(let exchange, let step, let buffer, let username):
            guard let payload = collectChunk(buffer, argument) else {
                sessions[id]?.sasl = .scram(exchange: exchange, step: step, buffer: buffer + argument, username: username)
                return
            }
            try continueScram(exchange, step, username, payload, &context, &outbox)
        }
    }

    /// The most base64 one SASL message may take, over all its 400-byte chunks. PLAIN with a
    /// 300-byte password and two 30-byte names needs under 500; SCRAM's client messages are
    /// smaller still.
    static let maximumSASLMessageBytes = 4096

    /// Returns the decoded payload once the last chunk (shorter than 400 bytes, or `+`) arrived.
    private func collectChunk(_ buffer: String, _ chunk: String) -> [UInt8]? {
        if chunk.utf8.count == 400 { return nil }
        let base64 = chunk == "+" ? buffer : buffer + chunk
        if base64.isEmpty { return [] }
        guard let data = Data(base64Encoded: base64) else { return [0xFF, 0xFF] }
        return [UInt8](data)
    }

    private mutating func continuePlain(_ payload: [UInt8], _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        sessions[id]?.sasl = .idle
        guard let session = sessions[id], let plain = SASLPlain.decode(payload) else {
            throw .numeric(.errSaslFail, "SASL authentication failed: malformed PLAIN payload")
        }
        if !plain.authorizationID.isEmpty && fold(plain.authorizationID) != fold(plain.authenticationID) {
            throw .numeric(.errSaslFail, "SASL authentication failed: authorization identity must match")
        }
        let key = fold(plain.authenticationID)
        if let refusal = startPasswordCheck(.saslPlain(id, accountKey: key), throttleKey: key, credential: accounts[key]?.credential,
                                            password: plain.password, session: session, now: context.now, into: &outbox) {
            throw .numeric(.errSaslFail, refusal.text)
        }
        sessions[id]?.sasl = .checking
        context.deferReplies()
    }

    private mutating func continueScram(_ exchange: ScramSHA256ServerExchange, _ step: ScramStep, _ requestedUsername: String?, _ payload: [UInt8], _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        var exchange = exchange
        sessions[id]?.sasl = .idle
        let text = String(decoding: payload, as: UTF8.self)
        switch step {
        case .awaitingClientFirst:
            let username: String
            do { username = try exchange.receiveClientFirst(text) } catch {
                throw .numeric(.errSaslFail, "SASL authentication failed: malformed SCRAM message")
            }
            let key = fold(username)
            if let wait = loginThrottle(key, network: SourceNetwork.key(forHost: session.host), now: context.now) {
                counters.loginFailures &+= 1
                throw .numeric(.errSaslFail, LoginRefusal.throttled(seconds: wait).text)
            }
            // An unknown account gets a made-up salt with the iterations new accounts get, so
            // the challenge does not tell whether the account exists.
            let serverFirst = exchange.serverFirst(credential: accounts[key]?.credential, decoyIterations: configuration.passwordIterations)
            sessions[id]?.sasl = .scram(exchange: exchange, step: .awaitingClientFinal, buffer: "", username: username)
            appendAuthenticateChunks(serverFirst, in: &context)
        case .awaitingClientFinal:
            // The proof is checked here, at once (no slow hash): the attempt counts now, and
            // other connections' attempts since the challenge count against it too.
            let key = fold(requestedUsername ?? "")
            let network = SourceNetwork.key(forHost: session.host)
            if let wait = loginThrottle(key, network: network, now: context.now) {
                counters.loginFailures &+= 1
                throw .numeric(.errSaslFail, LoginRefusal.throttled(seconds: wait).text)
            }
            let serverFinal: String
            do { serverFinal = try exchange.receiveClientFinal(text) } catch {
                recordLoginAttempt(key, network: network, now: context.now)
                counters.loginFailures &+= 1
                throw .numeric(.errSaslFail, "SASL authentication failed: invalid account name or password")
            }
            sessions[id]?.sasl = .scram(exchange: exchange, step: .awaitingFinalAck, buffer: "", username: requestedUsername)
            appendAuthenticateChunks(serverFinal, in: &context)
        case .awaitingFinalAck:
            guard let username = exchange.authenticatedUsername, let account = accounts[fold(username)] else {
                throw .numeric(.errSaslFail, "SASL authentication failed")
            }
            logIn(id, account: account, viaSASL: true, context: &context, outbox: &outbox)
        }
    }

    private func appendAuthenticateChunks(_ text: String, in context: inout CommandContext) {
        let encoded = Data(text.utf8).base64EncodedString()
        var start = encoded.startIndex
        while start < encoded.endIndex {
            let end = encoded.index(start, offsetBy: 400, limitedBy: encoded.endIndex) ?? encoded.endIndex
            context.replies.append(IRCMessage(command: "AUTHENTICATE", parameters: [String(encoded[start..<end])]))
            start = end
        }
        if encoded.utf8.count % 400 == 0 {
            context.replies.append(IRCMessage(command: "AUTHENTICATE", parameters: ["+"]))
        }
    }

    // MARK: Login throttling and password checks

    /// Why a password check was not started.
    enum LoginRefusal {
        /// Too many attempts on this account from this network, or from this network at all.
        case throttled(seconds: Int64)
        /// Too many password hashes queued server-wide; nothing was counted.
        case busy

        var text: String {
            switch self {
            case .throttled(let seconds): "Too many failed login attempts; try again in \(seconds) seconds"
            case .busy: "The server is busy checking other passwords; try again in a few seconds"
            }
        }
    }

    /// Seconds until `accountKey` may be tried again from `network`, or nil when it may now.
    /// Only attempts from the same network count, so guessing from one network never locks the
    /// owner out from another.
    func loginThrottle(_ accountKey: String, network: String, now: Timestamp) -> Int64? {
        let perAccount = loginAttemptsPerAccount.secondsUntilAllowed(Self.attemptKey(accountKey, network), now: now)
        let perNetwork = loginAttemptsPerNetwork.secondsUntilAllowed(network, now: now)
        switch (perAccount, perNetwork) {
        case (nil, nil): return nil
        case (let wait?, nil), (nil, let wait?): return wait
        case (let first?, let second?): return max(first, second)
        }
    }

    /// Names are free text (an OPER name may hold spaces); NUL never occurs in an IRC line.
    static func attemptKey(_ accountKey: String, _ network: String) -> String { accountKey + "\0" + network }

    mutating func recordLoginAttempt(_ accountKey: String, network: String, now: Timestamp) {
        loginAttemptsPerAccount.record(Self.attemptKey(accountKey, network), now: now)
        loginAttemptsPerNetwork.record(network, now: now)
    }

    /// The password was right: the attempt was no guess.
    mutating func refundLoginAttempt(_ accountKey: String, network: String, now: Timestamp) {
        loginAttemptsPerAccount.refund(Self.attemptKey(accountKey, network), now: now)
        loginAttemptsPerNetwork.refund(network, now: now)
    }

    var passwordWorkIsFull: Bool {
        configuration.maxPasswordChecksInFlight > 0 && passwordWorkInFlight >= configuration.maxPasswordChecksInFlight
    }

    /// Asks the shell to check `password` for `work`, unless the account is throttled from the
    /// session's network or too much password work is queued. The attempt counts from now, not
    /// from when the slow hash is done, so pipelined or parallel guesses are bounded too.
    /// Without a credential (no such account or operator) a decoy with the iterations of new
    /// accounts is checked: the answer takes as long and reads the same as a wrong password.
    mutating func startPasswordCheck(_ work: PendingWork, throttleKey accountKey: String, credential: PasswordCredential?, password: String,
                                     session: Session, now: Timestamp, into outbox: inout Outbox) -> LoginRefusal? {
        let network = SourceNetwork.key(forHost: session.host)
        if let wait = loginThrottle(accountKey, network: network, now: now) {
            if !work.isOper { counters.loginFailures &+= 1 }
            return .throttled(seconds: wait)
        }
        if passwordWorkIsFull { return .busy }
        recordLoginAttempt(accountKey, network: network, now: now)
        let ticket = nextTicket
        nextTicket += 1
        pendingWork[ticket] = work
        passwordWorkInFlight += 1
        session.pendingTickets += 1
        let checked = credential ?? ScramSHA256ServerExchange.decoyCredential(for: accountKey, iterations: configuration.passwordIterations)
        outbox.actions.append(.checkPassword(ticket: ticket, credential: checked, password: password))
        return nil
    }

    /// The connection waiting for the slow work of `ticket` (a password check, an account
    /// creation or a history read).
    public func connection(awaitingTicket ticket: UInt64) -> ConnectionID? {
        pendingWork[ticket]?.connection
    }

    /// The connection whose command asked for `action` (a password check or an account
    /// creation), so the shell can bring the result back where that connection's lines are read.
    public func connection(awaiting action: CoreAction) -> ConnectionID? {
        switch action {
        case .checkPassword(let ticket, _, _), .createAccount(let ticket, _, _, _, _, _), .loadHistory(let ticket, _): connection(awaitingTicket: ticket)
        default: nil
        }
    }

    /// The shell finished a password check it was asked for with `.checkPassword`.
    public mutating func completePasswordCheck(ticket: UInt64, succeeded: Bool, now: Timestamp, into outbox: inout Outbox) {
        guard let work = pendingWork[ticket], work.isPasswordCheck else { return }
        pendingWork[ticket] = nil
        passwordWorkInFlight -= 1
        guard let id = work.connection, let session = sessions[id] else { return }
        sessions[id]?.pendingTickets -= 1
        let network = SourceNetwork.key(forHost: session.host)
        let wasRegistered = session.isRegistered
        defer {
            // A login after registration changes what the other nodes know of the connection.
            if wasRegistered, isClustered { publishSession(id, into: &outbox) }
            releaseHeldCommands(id, now: now, into: &outbox)
        }
        switch work {
        case .passLogin(_, let key):
            var context = CommandContext(connection: id, now: now, label: nil)
            if succeeded, let account = accounts[key] {
                refundLoginAttempt(key, network: network, now: now)
                logIn(id, account: account, context: &context, outbox: &outbox)
                completeRegistrationIfReady(id, &context, &outbox)
            } else {
                counters.loginFailures &+= 1
                render(.numeric(.errPasswdMismatch, "Password incorrect"), in: &context)
                disconnect(id, reason: "Bad password", context: &context, outbox: &outbox)
            }
            finish(&context, into: &outbox)
        case .saslPlain(_, let key):
            var context = CommandContext(connection: id, now: now, label: nil)
            sessions[id]?.sasl = .idle
            if succeeded, let account = accounts[key] {
                refundLoginAttempt(key, network: network, now: now)
                logIn(id, account: account, viaSASL: true, context: &context, outbox: &outbox)
            } else {
                counters.loginFailures &+= 1
                render(.numeric(.errSaslFail, "SASL authentication failed: invalid account name or password"), in: &context)
            }
            finish(&context, into: &outbox)
            completeRegistrationAfterAsyncWork(id, now: now, into: &outbox)
        case .identify(_, let key, let label):
            var context = CommandContext(connection: id, now: now, label: label)
            if succeeded, let account = accounts[key] {
                refundLoginAttempt(key, network: network, now: now)
                logIn(id, account: account, context: &context, outbox: &outbox)
                nickServNotice("You are now identified as \(account.name).", in: &context)
            } else {
                counters.loginFailures &+= 1
                nickServNotice("Invalid account name or password.", in: &context)
            }
            finish(&context, into: &outbox)
            completeRegistrationAfterAsyncWork(id, now: now, into: &outbox)
        case .oper(_, let name, let label):
            var context = CommandContext(connection: id, now: now, label: label)
            if succeeded, let nick = session.nick {
                refundLoginAttempt("oper:" + name, network: network, now: now)
                sessions[id]?.isOperator = true
                operators.insert(id)
                numericReply(.rplYoureOper, ["You are now an IRC operator (\(name))"], in: &context)
                context.replies.append(IRCMessage(source: nick.name, command: "MODE", parameters: [nick.name, "+o"]))
            } else {
                render(.numeric(.errPasswdMismatch, "Password incorrect"), in: &context)
            }
            finish(&context, into: &outbox)
        case .registerAccount, .history, .redaction:
            break
        }
    }

    mutating func completeRegistrationAfterAsyncWork(_ id: ConnectionID, now: Timestamp, into outbox: inout Outbox) {
        var context = CommandContext(connection: id, now: now, label: nil)
        completeRegistrationIfReady(id, &context, &outbox)
        finish(&context, into: &outbox)
    }

    /// Attaches a connection to an account. A registered guest takes the account's name as nick.
    /// `900` (and for SASL `903`) come first, as clients expect right after authenticating; the
    /// change of nick follows them.
    mutating func logIn(_ id: ConnectionID, account: AccountRecord, viaSASL: Bool = false, context: inout CommandContext, outbox: inout Outbox) {
        guard let session = sessions[id] else { return }
        counters.logins &+= 1
        sessions[id]?.accountKey = account.key
        sessions[id]?.accountName = account.name
        let shownNick = session.isRegistered && session.nick?.folded != account.key ? account.name : session.nick?.name ?? "*"
        let loggedInPrefix = "\(shownNick)!\(session.displayUsername)@\(session.host)"
        numericReply(.rplLoggedIn, [loggedInPrefix, account.name, "You are now logged in as \(account.name)"], in: &context)
        if viaSASL { numericReply(.rplSaslSuccess, ["SASL authentication successful"], in: &context) }
        if session.isRegistered, let nick = session.nick {
            if nick.folded != account.key,
               let accountNick = try? Nickname(account.name, caseMapping: configuration.caseMapping, maxLength: max(configuration.nickLength, account.name.utf8.count)) {
                if let holder = nickIndex[account.key], holder.accountKey == nil, let squatter = holder.connections.first {
                    // A guest cannot hold an account's nick while it is in use; this only
                    // happens if the account was created while the guest had the nick.
                    disconnect(squatter, reason: "Nickname reclaimed by its account", now: context.now, into: &outbox)
                }
                nickIndex[nick.folded]?.accountKey = nil
                changeNick(of: id, to: accountNick, context: &context, outbox: &outbox)
            }
            nickIndex[account.key]?.accountKey = account.key
        }
        if session.isRegistered {
            joinGroupsOfAccount(id, &context, &outbox)
            deliverBacklog(to: id, &context, &outbox)
        }
    }

    // MARK: REGISTER (IRCv3 draft/account-registration)

    mutating func handleRegister(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let parameters = message.parameters
        // The draft's form is `REGISTER <account> <email|*> <password>`; some clients leave out
        // the account and send `REGISTER <email|*> <password>`.
        if parameters.count > 3 {
            throw .fail("REGISTER", "UNACCEPTABLE_PASSWORD", sessions[context.connection]?.nick?.name ?? "*", description: "Passwords cannot contain spaces")
        }
        let email = parameters.count >= 3 ? parameters[1] : parameters[0]
        let password = parameters.count >= 3 ? parameters[2] : parameters[1]
        if parameters.count >= 3, parameters[0] != "*",
           let nick = sessions[context.connection]?.nick, fold(parameters[0]) != nick.folded {
            // Accounts are named after nicks (custom-account-name is not offered).
            let requested = parameters[0]
            if accounts[fold(requested)] != nil {
                throw .fail("REGISTER", "ACCOUNT_EXISTS", requested, description: "An account with that name already exists")
            }
            throw .fail("REGISTER", "ACCOUNT_NAME_MUST_BE_NICK", requested, description: "Change your nick to \(requested) first: accounts are named after nicks")
        }
        try beginAccountRegistration(email: email, password: password, viaNickServ: false, &context, &outbox)
    }

    mutating func handleVerify(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        throw .fail("VERIFY", "INVALID_CODE", message.parameters[0], description: "This server does not require verification codes")
    }

    mutating func beginAccountRegistration(email: String, password: String, viaNickServ: Bool, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        guard let session = sessions[id] else { return }
        func failure(_ code: String, _ account: String, _ description: String) -> CommandError {
            .fail("REGISTER", code, account, description: description)
        }
        if !session.isRegistered && !configuration.accountRegistrationBeforeConnect {
            throw .fail("REGISTER", "COMPLETE_CONNECTION_REQUIRED", session.nick?.name ?? "*",
                        description: "Finish connecting (NICK, USER, CAP END) before creating an account")
        }
        guard let nick = session.nick else {
            if let refused = session.refusedNick {
                throw .fail("REGISTER", "ACCOUNT_EXISTS", refused, description: "\(refused) is in use; choose another nick with NICK first")
            }
            throw .fail("REGISTER", "NEED_NICK", "*", description: "Send NICK first: the account is named after your nick")
        }
        if !configuration.allowAccountRegistration {
            throw failure("TEMPORARILY_UNAVAILABLE", nick.name, "Account registration is disabled on this server")
        }
        if let accountName = session.accountName {
            throw failure("ALREADY_REGISTERED", accountName, "You are already logged in to an account")
        }
        if session.hasCreatedAccount {
            throw failure("ALREADY_REGISTERED", nick.name, "This connection has already created an account")
        }
        if accounts[nick.folded] != nil || pendingAccountKeys.contains(nick.folded) {
            throw failure("ACCOUNT_EXISTS", nick.name, "An account with that name already exists")
        }
        if let holder = nickIndex[nick.folded], !holder.connections.contains(id) {
            // Someone else took the nick while this connection was still registering: an account
            // made now would give two identities one nick.
            throw failure("ACCOUNT_EXISTS", nick.name, "Someone else is using the nick \(nick.name); pick another nick to register")
        }
        if password.utf8.count < configuration.minimumPasswordLength {
            throw failure("WEAK_PASSWORD", nick.name, "Passwords must be at least \(configuration.minimumPasswordLength) bytes long")
        }
        if password.utf8.count > configuration.maximumPasswordLength || password.contains(" ") {
            throw failure("UNACCEPTABLE_PASSWORD", nick.name, "Passwords must be at most \(configuration.maximumPasswordLength) bytes and contain no spaces")
        }
        let cleanedEmail: String? = (email == "*" || email.isEmpty) ? nil : email
        if let cleanedEmail, !cleanedEmail.contains("@") {
            throw failure("INVALID_EMAIL", nick.name, "That is not an email address")
        }
        let network = SourceNetwork.key(forHost: session.host)
        if let wait = registrationsPerNetwork.secondsUntilAllowed(network, now: context.now) {
            throw failure("TEMPORARILY_UNAVAILABLE", nick.name, "Too many accounts were registered from your network recently; try again in \((wait + 59) / 60) minutes")
        }
        if passwordWorkIsFull {
            throw failure("TEMPORARILY_UNAVAILABLE", nick.name, LoginRefusal.busy.text)
        }
        registrationsPerNetwork.record(network, now: context.now)
        let ticket = nextTicket
        nextTicket += 1
        pendingWork[ticket] = .registerAccount(id, key: nick.folded, viaNickServ: viaNickServ, label: context.label)
        pendingAccountKeys.insert(nick.folded)
        passwordWorkInFlight += 1
        session.pendingTickets += 1
        outbox.actions.append(.createAccount(
            ticket: ticket, name: nick.name, key: nick.folded, password: password,
            email: cleanedEmail, iterations: configuration.passwordIterations))
        // The reply comes when storage has the account; keep the label for it.
        context.deferReplies()
    }

    /// The shell finished creating an account it was asked for with `.createAccount`.
    public mutating func completeAccountCreation(ticket: UInt64, result: AccountCreationResult, now: Timestamp, into outbox: inout Outbox) {
        guard case .registerAccount(let id, let key, let viaNickServ, let label)? = pendingWork[ticket] else { return }
        pendingWork[ticket] = nil
        passwordWorkInFlight -= 1
        pendingAccountKeys.remove(key)
        if case .created(let record) = result {
            accounts[record.key] = record
            counters.accountRegistrations &+= 1
            publishAccount(record.key, into: &outbox)
        }
        guard let session = sessions[id] else { return }
        sessions[id]?.pendingTickets -= 1
        let wasRegistered = session.isRegistered
        defer {
            // REGISTER after registration logs the connection in: the other nodes must know.
            if wasRegistered, isClustered { publishSession(id, into: &outbox) }
            releaseHeldCommands(id, now: now, into: &outbox)
        }
        if case .created = result {
            session.hasCreatedAccount = true
        } else {
            registrationsPerNetwork.refund(SourceNetwork.key(forHost: session.host), now: now)
        }
        var context = CommandContext(connection: id, now: now, label: label)
        let name = session.nick?.name ?? key
        switch result {
        case .created(let record):
            logIn(id, account: record, context: &context, outbox: &outbox)
            if viaNickServ {
                nickServNotice("Account \(record.name) registered; you are now logged in.", in: &context)
            } else {
                context.replies.append(IRCMessage(source: configuration.serverName, command: "REGISTER",
                                                  parameters: ["SUCCESS", record.name, "Account created"]))
            }
        case .nameTaken:
            if viaNickServ { nickServNotice("An account named \(name) already exists.", in: &context) } else {
                render(.fail("REGISTER", "ACCOUNT_EXISTS", name, description: "An account with that name already exists"), in: &context)
            }
        case .failed(let reason):
            if viaNickServ { nickServNotice("Registration failed: \(reason)", in: &context) } else {
                render(.fail("REGISTER", "TEMPORARILY_UNAVAILABLE", name, description: "Registration failed: \(reason)"), in: &context)
            }
        }
        finish(&context, into: &outbox)
        completeRegistrationAfterAsyncWork(id, now: now, into: &outbox)
    }

    // MARK: NickServ, for clients without SASL or account-registration

    static let nickServPrefix = "NickServ!NickServ@services.parley"

    func nickServNotice(_ text: String, in context: inout CommandContext) {
        let name = sessions[context.connection]?.replyName ?? "*"
        context.replies.append(IRCMessage(source: Self.nickServPrefix, command: "NOTICE", parameters: [name, text]))
    }

    mutating func handleNickServCommand(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        try handleNickServ(text: message.parameters.joined(separator: " "), &context, &outbox)
    }

    /// `PRIVMSG NickServ :<command> ...`: REGISTER, IDENTIFY, HELP.
    mutating func handleNickServ(text: String, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let words = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let id = context.connection
        guard let session = sessions[id] else { return }
        switch words.first?.uppercased() ?? "HELP" {
        case "REGISTER":
            guard words.count >= 2 else {
                nickServNotice("Syntax: REGISTER <password> [email]", in: &context)
                return
            }
            do {
                try beginAccountRegistration(email: words.count >= 3 ? words[2] : "*", password: words[1], viaNickServ: true, &context, &outbox)
            } catch {
                if case .standard(_, _, _, _, let description) = error.reply { nickServNotice(description, in: &context) }
            }
        case "IDENTIFY", "LOGIN":
            guard words.count >= 2 else {
                nickServNotice("Syntax: IDENTIFY [account] <password>", in: &context)
                return
            }
            if session.accountName != nil {
                nickServNotice("You are already identified as \(session.accountName!).", in: &context)
                return
            }
            let accountName = words.count >= 3 ? words[1] : (session.nick?.name ?? "")
            let password = words.count >= 3 ? words[2] : words[1]
            let key = fold(accountName)
            if let refusal = startPasswordCheck(.identify(id, accountKey: key, label: context.label), throttleKey: key, credential: accounts[key]?.credential,
                                                password: password, session: session, now: context.now, into: &outbox) {
                nickServNotice(refusal.text + ".", in: &context)
                return
            }
            context.deferReplies()
        default:
            for line in [
                "NickServ keeps your nick for you. Commands:",
                "REGISTER <password> [email] - register your current nick as an account",
                "IDENTIFY [account] <password> - log in to your account",
                "Clients with SASL can log in when connecting; see the server's README.",
            ] { nickServNotice(line, in: &context) }
        }
    }

    // MARK: Operators

    mutating func handleOper(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let name = message.parameters[0]
        let id = context.connection
        guard let session = sessions[id] else { return }
        // An unknown name is checked against a decoy and answered like a wrong password, so
        // OPER does not tell which operator names exist.
        let oper = configuration.operators.first(where: { $0.name == name })
        switch startPasswordCheck(.oper(id, name: name, label: context.label), throttleKey: "oper:" + name, credential: oper?.credential,
                                  password: message.parameters[1], session: session, now: context.now, into: &outbox) {
        case nil: context.deferReplies()
        case .throttled(let seconds)?: throw .numeric(.errPasswdMismatch, LoginRefusal.throttled(seconds: seconds).text)
        case .busy?: throw .fail("OPER", "TEMPORARILY_UNAVAILABLE", description: LoginRefusal.busy.text)
        }
    }

    /// WALLOPS from an operator reaches everyone with user mode +w, and the sender.
    mutating func handleWallops(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let session = sessions[context.connection], session.isOperator else {
            throw .numeric(.errNoPrivileges, "Permission Denied- You're not an IRC operator")
        }
        let wallops = IRCMessage(source: session.prefix, command: "WALLOPS", parameters: [message.parameters[0]])
        for receiver in sessions.values where receiver.isRegistered && receiver.receivesWallops && receiver.id != context.connection {
            send(wallops, to: receiver.id, into: &outbox)
        }
        context.replies.append(wallops)
    }

    mutating func handleKill(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let session = sessions[context.connection], session.isOperator else {
            throw .numeric(.errNoPrivileges, "Permission Denied- You're not an IRC operator")
        }
        let target = message.parameters[0]
        guard let holder = nickIndex[fold(target)] else {
            throw .numeric(.errNoSuchNick, target, "No such nick/channel")
        }
        let reason = "Killed (\(session.nick?.name ?? "oper") (\(message.parameters[1])))"
        for victim in holder.connections {
            if victim == context.connection {
                disconnect(victim, reason: reason, context: &context, outbox: &outbox)
            } else {
                disconnect(victim, reason: reason, now: context.now, into: &outbox)
            }
        }
    }
}

extension ChatServer.PendingWork {
    /// Work answered by `completePasswordCheck`.
    var isPasswordCheck: Bool {
        switch self {
        case .passLogin, .saslPlain, .identify, .oper: true
        case .registerAccount, .history, .redaction: false
        }
    }

    /// An OPER password check: not a login to an account.
    var isOper: Bool {
        if case .oper = self { return true }
        return false
    }

    var connection: ConnectionID? {
        switch self {
        case .passLogin(let id, _), .saslPlain(let id, _), .identify(let id, _, _), .oper(let id, _, _), .registerAccount(let id, _, _, _),
             .history(let id, _, _, _), .redaction(let id, _):
            id
        }
    }
}
