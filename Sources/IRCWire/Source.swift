/// The parts of a message source `nick!user@host` (any part after the nick may be missing).
public struct IRCSource: Sendable, Hashable, CustomStringConvertible {
    public var nick: String
    public var user: String?
    public var host: String?

    public init(nick: String, user: String? = nil, host: String? = nil) {
        self.nick = nick
        self.user = user
        self.host = host
    }

    public init(parsing source: String) {
        var rest = Substring(source)
        var host: Substring?
        if let at = rest.firstIndex(of: "@") {
            host = rest[rest.index(after: at)...]
            rest = rest[..<at]
        }
        var user: Substring?
        if let bang = rest.firstIndex(of: "!") {
            user = rest[rest.index(after: bang)...]
            rest = rest[..<bang]
        }
        self.init(nick: String(rest), user: user.map(String.init), host: host.map(String.init))
    }

    public var description: String {
        var text = nick
        if let user { text += "!" + user }
        if let host { text += "@" + host }
        return text
    }
}

/// Hostname syntax as IRC servers accept it (letters, digits, '-' and '.', labels not starting
/// or ending with '-'; a trailing dot is allowed).
public enum Hostname {
    public static func isValid(_ host: String) -> Bool {
        let utf8 = Array(host.utf8)
        guard !utf8.isEmpty, utf8.count <= 253 else { return false }
        // A bare label such as "irc" is not a hostname; "services." (fully qualified) is.
        guard utf8.contains(UInt8(ascii: ".")) else { return false }
        var labels = utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        if labels.count > 1, labels.last?.isEmpty == true { labels.removeLast() }
        for label in labels {
            guard !label.isEmpty, label.count <= 63,
                  label.first != UInt8(ascii: "-"), label.last != UInt8(ascii: "-") else { return false }
            for byte in label {
                let isAlphanumeric = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                guard isAlphanumeric || byte == UInt8(ascii: "-") else { return false }
            }
        }
        return true
    }
}
