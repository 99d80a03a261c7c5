import IRCWire

/// One command the server understands: the checks every handler shares (registration, parameter
/// count) are declared here and run once in `ChatServer.receive` before the handler is called.
struct CommandSpec: Sendable {
    typealias Handler = @Sendable (inout ChatServer, IRCMessage, inout CommandContext, inout Outbox) throws(CommandError) -> Void

    let minimumParameters: Int
    let allowedBeforeRegistration: Bool
    let handler: Handler

    init(minimumParameters: Int = 0, beforeRegistration: Bool = false, _ handler: @escaping Handler) {
        self.minimumParameters = minimumParameters
        self.allowedBeforeRegistration = beforeRegistration
        self.handler = handler
    }
}

extension ChatServer {
    static let privmsgCommand = commandTable["PRIVMSG"]
    static let commandTable: [String: CommandSpec] = [
        // Connection registration.
        "CAP": CommandSpec(minimumParameters: 1, beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handleCap(message, &context, &outbox) },
        "NICK": CommandSpec(beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handleNick(message, &context, &outbox) },
        "USER": CommandSpec(minimumParameters: 4, beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handleUser(message, &context, &outbox) },
        "PASS": CommandSpec(minimumParameters: 1, beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handlePass(message, &context, &outbox) },
        "AUTHENTICATE": CommandSpec(minimumParameters: 1, beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handleAuthenticate(message, &context, &outbox) },
        "REGISTER": CommandSpec(minimumParameters: 2, beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handleRegister(message, &context, &outbox) },
        "VERIFY": CommandSpec(minimumParameters: 2, beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handleVerify(message, &context, &outbox) },
        "PING": CommandSpec(minimumParameters: 1, beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handlePing(message, &context, &outbox) },
        "PONG": CommandSpec(beforeRegistration: true) { _, _, _, _ throws(CommandError) in },
        "QUIT": CommandSpec(beforeRegistration: true) { server, message, context, outbox throws(CommandError) in try server.handleQuit(message, &context, &outbox) },
        // Messaging.
        "PRIVMSG": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleMessage(message, &context, &outbox) },
        "NOTICE": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleMessage(message, &context, &outbox) },
        "REDACT": CommandSpec(minimumParameters: 2) { server, message, context, outbox throws(CommandError) in try server.handleRedact(message, &context, &outbox) },
        "TAGMSG": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleMessage(message, &context, &outbox) },
        // Channels and groups.
        "JOIN": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleJoin(message, &context, &outbox) },
        "PART": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handlePart(message, &context, &outbox) },
        "TOPIC": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleTopic(message, &context, &outbox) },
        "NAMES": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleNames(message, &context, &outbox) },
        "LIST": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleList(message, &context, &outbox) },
        "INVITE": CommandSpec(minimumParameters: 0) { server, message, context, outbox throws(CommandError) in try server.handleInvite(message, &context, &outbox) },
        "KICK": CommandSpec(minimumParameters: 2) { server, message, context, outbox throws(CommandError) in try server.handleKick(message, &context, &outbox) },
        "RENAME": CommandSpec(minimumParameters: 2) { server, message, context, outbox throws(CommandError) in try server.handleRename(message, &context, &outbox) },
        "CHANSERV": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleChanServ(text: message.parameters.joined(separator: " "), &context, &outbox) },
        "CS": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleChanServ(text: message.parameters.joined(separator: " "), &context, &outbox) },
        // Offline delivery, receipts, read markers, history.
        "MARKREAD": CommandSpec(minimumParameters: 0) { server, message, context, outbox throws(CommandError) in try server.handleMarkRead(message, &context, &outbox) },
        "RECEIPTS": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleReceipts(message, &context, &outbox) },
        "CHATHISTORY": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleChatHistory(message, &context, &outbox) },
        // Users.
        "AWAY": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleAway(message, &context, &outbox) },
        "SETNAME": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleSetname(message, &context, &outbox) },
        "MODE": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleMode(message, &context, &outbox) },
        "MONITOR": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleMonitor(message, &context, &outbox) },
        "WHOIS": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleWhois(message, &context, &outbox) },
        "WHO": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleWho(message, &context, &outbox) },
        "WHOWAS": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleWhowas(message, &context, &outbox) },
        "ISON": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleIson(message, &context, &outbox) },
        "USERHOST": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleUserhost(message, &context, &outbox) },
        "METADATA": CommandSpec(minimumParameters: 2) { server, message, context, outbox throws(CommandError) in try server.handleMetadata(message, &context, &outbox) },
        // Server queries.
        "MOTD": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleMotd(message, &context, &outbox) },
        "LUSERS": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleLusers(message, &context, &outbox) },
        "VERSION": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleVersion(message, &context, &outbox) },
        "INFO": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleInfo(message, &context, &outbox) },
        "LINKS": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleLinks(message, &context, &outbox) },
        "TIME": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleTime(message, &context, &outbox) },
        "HELP": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleHelp(message, &context, &outbox) },
        "HELPOP": CommandSpec { server, message, context, outbox throws(CommandError) in try server.handleHelp(message, &context, &outbox) },
        // Services and operators.
        "NICKSERV": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleNickServCommand(message, &context, &outbox) },
        "NS": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleNickServCommand(message, &context, &outbox) },
        "OPER": CommandSpec(minimumParameters: 2) { server, message, context, outbox throws(CommandError) in try server.handleOper(message, &context, &outbox) },
        "WALLOPS": CommandSpec(minimumParameters: 1) { server, message, context, outbox throws(CommandError) in try server.handleWallops(message, &context, &outbox) },
        "KILL": CommandSpec(minimumParameters: 2) { server, message, context, outbox throws(CommandError) in try server.handleKill(message, &context, &outbox) },
    ]
}
