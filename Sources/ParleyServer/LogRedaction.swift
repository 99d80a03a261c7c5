import IRCWire

extension IRCMessage {
    /// What replaces a secret in a logged line.
    static let redactedText = "<redacted>"

    /// The line as it may be logged: the parameters that carry passwords or SASL payloads are
    /// replaced by `<redacted>`. Everything else stays, so a trace still shows what happened.
    var redactedForLog: IRCMessage {
        var redacted = self
        switch command.uppercased() {
        case "PASS":
            redacted.redactParameters(from: 0)
        case "AUTHENTICATE":
            // Mechanism names, `+` and `*` are no secret; any other payload may be one.
            if let argument = parameters.first, !Self.harmlessAuthenticateArguments.contains(argument.uppercased()) {
                redacted.redactParameters(from: 0)
            }
        case "OPER", "VERIFY", "REGISTER":
            // OPER <name> <password>; VERIFY <account> <code>; REGISTER [<account>] <email|*> <password>.
            redacted.redactParameters(from: 1)
        case "NICKSERV", "NS":
            redacted.redactServiceText()
        case "PRIVMSG", "NOTICE":
            if let targets = parameters.first, targets.split(separator: ",").contains(where: { Self.isNickServ(String($0)) }) {
                redacted.redactServiceText()
            }
        default:
            break
        }
        return redacted
    }

    private static let harmlessAuthenticateArguments: Set<String> = ["+", "*", "PLAIN", "SCRAM-SHA-256", "EXTERNAL"]

    /// `NickServ`, or `NickServ@server` as some clients address services.
    private static func isNickServ(_ target: String) -> Bool {
        let name = target.split(separator: "@", maxSplits: 1).first.map(String.init) ?? target
        return name.lowercased() == "nickserv"
    }

    private mutating func redactParameters(from index: Int) {
        for position in parameters.indices where position >= index {
            parameters[position] = Self.redactedText
        }
    }

    /// NickServ commands are `COMMAND arguments...` (in one trailing parameter or several):
    /// keep the command word, hide its arguments (IDENTIFY and REGISTER carry passwords).
    private mutating func redactServiceText() {
        let first = command.uppercased() == "NICKSERV" || command.uppercased() == "NS" ? 0 : 1
        guard parameters.count > first else { return }
        let text = parameters[first...].joined(separator: " ")
        let words = text.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        parameters = Array(parameters[..<first])
        guard let commandWord = words.first else { return }
        parameters.append(words.count > 1 ? "\(commandWord) \(Self.redactedText)" : String(commandWord))
    }
}
