import IRCWire

/// Which channels a `LIST` asks for (ISUPPORT `ELIST=MNU`). The parameter is a comma-separated
/// list of terms: channel names and masks (`#ch*`, ELIST M) of which a channel must match one if
/// any is given; `!mask` (ELIST N), which it must not match; `<n` and `>n` (ELIST U), user counts
/// it must be below or above. Built once per command; pure.
struct ChannelListFilter: Equatable {
    var wanted: [IRCMask] = []
    var unwanted: [IRCMask] = []
    var fewerUsersThan: Int?
    var moreUsersThan: Int?

    init(_ parameter: String?) {
        guard let parameter else { return }
        for term in parameter.split(separator: ",").map(String.init) {
            if term.hasPrefix("!") {
                unwanted.append(IRCMask(String(term.dropFirst())))
            } else if term.hasPrefix("<"), let count = Int(term.dropFirst()) {
                fewerUsersThan = min(count, fewerUsersThan ?? count)
            } else if term.hasPrefix(">"), let count = Int(term.dropFirst()) {
                moreUsersThan = max(count, moreUsersThan ?? count)
            } else {
                // A plain name is a mask without wildcards: it matches itself, case-folded.
                wanted.append(IRCMask(term))
            }
        }
    }

    func admits(name: String, users: Int, caseMapping: IRCCaseMapping) -> Bool {
        if !wanted.isEmpty && !wanted.contains(where: { $0.matches(name, caseMapping: caseMapping) }) { return false }
        if unwanted.contains(where: { $0.matches(name, caseMapping: caseMapping) }) { return false }
        if let fewerUsersThan, users >= fewerUsersThan { return false }
        if let moreUsersThan, users <= moreUsersThan { return false }
        return true
    }
}

extension ChatServer {
    // MARK: LIST

    mutating func handleList(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let id = context.connection
        let filter = ChannelListFilter(message.parameters.first)
        numericReply(.rplListStart, ["Channel", "Users  Name"], in: &context)
        for channel in channels.values.sorted(by: { $0.key < $1.key }) {
            if isClosed(channel, to: id) { continue }
            let users = uniqueNickCount(channel)
            guard filter.admits(name: channel.name, users: users, caseMapping: configuration.caseMapping) else { continue }
            numericReply(.rplList, [channel.name, String(users), "[+\(channel.flagModes)] \(channel.topic)"], in: &context)
        }
        numericReply(.rplListEnd, ["End of /LIST"], in: &context)
    }

    // MARK: INVITE with no parameters

    /// `INVITE` alone lists the channels this connection is invited to and has not joined yet
    /// (336 RPL_INVITELIST each, then 337 RPL_ENDOFINVITELIST).
    mutating func listInvitations(_ context: inout CommandContext) {
        guard let session = sessions[context.connection] else { return }
        let nick = session.nick?.folded ?? ""
        for channel in channels.values.sorted(by: { $0.key < $1.key })
        where channel.invitedNicks.contains(nick) || session.groupInvitations.contains(channel.key) {
            numericReply(.rplInviteList, [channel.name], in: &context)
        }
        numericReply(.rplEndOfInviteList, ["End of /INVITE list"], in: &context)
    }

    // MARK: LINKS

    /// The servers of the network as a user sees it: this one, with the operator's description
    /// (`serverDescription`), at hop count 0. A mask parameter is only echoed: there is one name.
    mutating func handleLinks(_ message: IRCMessage, _ context: inout CommandContext, _ outbox: inout Outbox) throws(CommandError) {
        let name = configuration.serverName
        numericReply(.rplLinks, [name, name, "0 \(configuration.serverDescription)"], in: &context)
        numericReply(.rplEndOfLinks, [message.parameters.last ?? "*", "End of /LINKS list"], in: &context)
    }
}
