import IRCWire

/// HELP (and HELPOP, its other common name): a line or two about each command, answered with
/// RPL_HELPSTART / RPL_HELPTXT / RPL_ENDOFHELP, or ERR_HELPNOTFOUND (Modern IRC).
extension ChatServer {
    /// Usage and purpose of every command in `commandTable` (a test keeps the two in step).
    static let commandHelp: [String: [String]] = [
        "CAP": ["CAP LS [302] | CAP REQ :<caps> | CAP END", "Negotiates IRCv3 capabilities."],
        "NICK": ["NICK <nick>", "Sets your nick. Logged in, your nick is your account's name."],
        "USER": ["USER <username> 0 * :<realname>", "Completes registration."],
        "PASS": ["PASS <account>:<password> | PASS <password>", "Logs in to an account while registering (the nick is the account without one)."],
        "AUTHENTICATE": ["AUTHENTICATE PLAIN | SCRAM-SHA-256", "Logs in with SASL."],
        "REGISTER": ["REGISTER <account> * <password>", "Creates an account (IRCv3 account-registration)."],
        "VERIFY": ["VERIFY <account> <code>", "Not needed here: accounts need no verification code."],
        "PING": ["PING <token>", "The server answers PONG <token>."],
        "PONG": ["PONG <token>", "Answers the server's PING."],
        "QUIT": ["QUIT [:<reason>]", "Disconnects."],
        "PRIVMSG": ["PRIVMSG <nick|#channel>[,...] :<text>", "Sends a message; to someone offline with an account, it waits for them."],
        "NOTICE": ["NOTICE <nick|#channel>[,...] :<text>", "Sends a notice: never answered automatically."],
        "TAGMSG": ["@<tags> TAGMSG <nick|#channel>", "Sends only tags (IRCv3 message-tags)."],
        "JOIN": ["JOIN <#channel>[,...] [<key>[,...]]", "Joins or creates a channel; made by a logged-in user, it is a group."],
        "PART": ["PART <#channel>[,...] [:<reason>]", "Leaves a channel; leaving a group takes you off its member list."],
        "TOPIC": ["TOPIC <#channel> [:<topic>]", "Shows or sets the topic."],
        "NAMES": ["NAMES <#channel>[,...]", "Lists who is in channels."],
        "LIST": ["LIST [<#channel|mask|!mask|<users|>users>[,...]]", "Lists channels you may see, filtered by name, mask, excluded mask or user count."],
        "INVITE": ["INVITE <nick> <#channel> | INVITE", "Invites someone (a group's owner adds a member this way); alone, lists your invitations."],
        "KICK": ["KICK <#channel> <nick> [:<reason>]", "Removes someone from a channel (a group's member list)."],
        "RENAME": ["RENAME <#channel> <#new> [:<reason>]", "Renames a channel (IRCv3 channel-rename)."],
        "CHANSERV": ["CHANSERV INFO|DROP <#group>", "Shows or deletes a group (also PRIVMSG ChanServ)."],
        "CS": ["CS INFO|DROP <#group>", "Short for CHANSERV."],
        "MARKREAD": ["MARKREAD <target> [timestamp=<time>]", "Shows or sets how far you have read (IRCv3 read-marker)."],
        "RECEIPTS": ["RECEIPTS READ ON|OFF | RECEIPTS STATUS <msgid>[,...]", "Read receipts: share them or not, or ask a message's state."],
        "CHATHISTORY": ["CHATHISTORY LATEST|BEFORE|AFTER|AROUND|BETWEEN|TARGETS ...", "Reads history (IRCv3 chathistory)."],
        "AWAY": ["AWAY [:<message>]", "Marks you away, or back without a message."],
        "SETNAME": ["SETNAME :<realname>", "Changes your realname (IRCv3 setname)."],
        "MODE": ["MODE <nick> [+|-iBw] | MODE <#channel> [<modes> [<arguments>]]", "Shows or changes user or channel modes."],
        "METADATA": ["METADATA <target> GET|LIST|SET|CLEAR|SYNC [...] | METADATA * SUB|UNSUB|SUBS [<key> ...]", "Reads and sets metadata of users and channels (IRCv3 draft/metadata-3)."],
        "REDACT": ["REDACT <target> <msgid> [:<reason>]", "Takes back a message you sent (channel operators: anyone's in their channel)."],
        "MONITOR": ["MONITOR +|- <nick>[,...] | MONITOR C|L|S", "Tells you when nicks come online or go offline."],
        "WHOIS": ["WHOIS <nick>", "Shows who someone is."],
        "WHO": ["WHO <mask|#channel> [o][%<fields>[,<token>]]", "Lists matching users (WHOX with %)."],
        "WHOWAS": ["WHOWAS <nick> [<count>]", "Shows who recently used a nick."],
        "ISON": ["ISON <nick> ...", "Tells which of these nicks are online."],
        "USERHOST": ["USERHOST <nick> ...", "Shows these users' user@host."],
        "MOTD": ["MOTD", "Shows the message of the day."],
        "LUSERS": ["LUSERS", "Counts users and channels."],
        "VERSION": ["VERSION", "Shows the server's version and features."],
        "INFO": ["INFO", "About this server."],
        "LINKS": ["LINKS", "Lists the servers of the network: this one."],
        "TIME": ["TIME", "Shows the server's time."],
        "HELP": ["HELP [<command>]", "Shows this help."],
        "HELPOP": ["HELPOP [<command>]", "Same as HELP."],
        "NICKSERV": ["NICKSERV REGISTER|IDENTIFY|LOGIN ...", "Account commands for clients without SASL (also PRIVMSG NickServ)."],
        "NS": ["NS REGISTER|IDENTIFY|LOGIN ...", "Short for NICKSERV."],
        "OPER": ["OPER <name> <password>", "Become a server operator."],
        "KILL": ["KILL <nick> :<reason>", "Disconnects someone (operators)."],
        "WALLOPS": ["WALLOPS :<text>", "Sends a notice to everyone with user mode +w (operators)."],
    ]

    mutating func handleHelp(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        guard let subject = message.parameters.first, !subject.isEmpty else {
            numericReply(.rplHelpStart, ["*", "Parley help: HELP <command> for one of:"], in: &context)
            var line = ""
            for command in Self.commandHelp.keys.sorted() {
                if !line.isEmpty && line.utf8.count + command.utf8.count > 300 {
                    numericReply(.rplHelpTxt, ["*", line], in: &context)
                    line = ""
                }
                line += line.isEmpty ? command : " " + command
            }
            if !line.isEmpty { numericReply(.rplHelpTxt, ["*", line], in: &context) }
            numericReply(.rplEndOfHelp, ["*", "End of /HELP"], in: &context)
            return
        }
        let command = subject.uppercased()
        guard let lines = Self.commandHelp[command] else {
            throw .numeric(.errHelpNotFound, subject, "No help for \(subject); HELP lists the commands")
        }
        numericReply(.rplHelpStart, [command, lines[0]], in: &context)
        for line in lines.dropFirst() { numericReply(.rplHelpTxt, [command, line], in: &context) }
        numericReply(.rplEndOfHelp, [command, "End of /HELP"], in: &context)
    }
}
