import Foundation

/// What the user asked for, decided from one line of input.
public enum UserAction: Sendable, Equatable {
    case send(text: String, to: String)
    /// A raw IRC command with its parameters.
    case command(String, [String])
    case whois(String)
    case history(String, limit: Int)
    /// Text for the user only (help, hints, mode changes).
    case info(String)
    case quit(String)
    /// Who has read one of our messages in the open conversation: the latest whose text contains
    /// the query (the latest of all when it is empty).
    case receipts(String)
}

/// Turns what the user types into actions. Two ways of working share it: the original app's
/// modes (`/direct` then `user~message`, `/group` then `group~message` and a creation dialogue,
/// `/exit`, `/leave`) and the usual IRC commands (`/msg`, `/join`, `/query`, ...).
public struct CommandInterpreter: Sendable {
    public enum Mode: String, Sendable {
        case general, direct, group
    }

    enum Dialogue: Sendable, Equatable {
        case none
        case askCreate
        case askName
        case askMembers(group: String)
    }

    public private(set) var mode: Mode = .general
    /// Where plain text goes: a nick or a group.
    public private(set) var conversation: String?
    var dialogue: Dialogue = .none
    public var knownNicks: Set<String> = []
    public var knownGroups: Set<String> = []

    public init() {}

    public static let commands = [
        "/msg", "/query", "/join", "/part", "/group", "/direct", "/exit", "/leave", "/seen", "/history",
        "/who", "/receipts", "/help", "/quit",
    ]

    public static let help = """
        Modes: /direct, then user~message sends to user | /group, then group~message sends to a group \
        (it first offers to create one) | /exit back to general mode | /leave disconnects and quits.
        Commands: /msg user text | /query user-or-#group (then type to talk there) | /join #group | /part [#group] | \
        /group create NAME [users...] | /group add NAME user | /group remove NAME user | /group rename OLD NEW | \
        /group members NAME | /group delete NAME | /seen user | /history [n] | /who | /receipts on|off | /receipts TEXT (who read your message with TEXT) | /help | /quit
        Keys: Alt+1..9 or Ctrl+N / Ctrl+P switch conversations | PageUp / PageDown scroll (older messages load at the top)
        """

    /// The screen switched to another conversation (Alt+number, Ctrl+N/P): plain text goes there.
    public mutating func open(_ target: String?) {
        conversation = target
    }

    /// The prompt shown before the input line.
    public var prompt: String {
        switch dialogue {
        case .askCreate: return "create a new group? (y/n) "
        case .askName: return "group name: "
        case .askMembers: return "members (user~user~...): "
        case .none: break
        }
        switch mode {
        case .direct: return "[direct] "
        case .group: return "[group] "
        case .general: return conversation.map { "[\($0)] " } ?? "> "
        }
    }

    static func groupName(_ name: String) -> String {
        name.hasPrefix("#") ? name : "#" + name
    }

    public mutating func interpret(_ rawLine: String) -> [UserAction] {
        let line = rawLine.trimmingCharacters(in: .whitespaces)
        if dialogue != .none { return continueDialogue(line) }
        guard !line.isEmpty else { return [] }
        if line.hasPrefix("/") && !line.hasPrefix("//") { return runCommand(line) }
        let text = line.hasPrefix("//") ? String(line.dropFirst()) : line
        switch mode {
        case .direct:
            guard let split = text.firstIndex(of: "~"), split != text.startIndex else {
                return [.info("In direct mode, type user~message (or /exit to leave direct mode).")]
            }
            let user = String(text[..<split]).trimmingCharacters(in: .whitespaces)
            let message = String(text[text.index(after: split)...])
            guard !message.isEmpty else { return [.info("Nothing to send: type user~message.")] }
            return [.send(text: message, to: user)]
        case .group:
            guard let split = text.firstIndex(of: "~"), split != text.startIndex else {
                return [.info("In group mode, type group~message (or /exit to leave group mode).")]
            }
            let group = Self.groupName(String(text[..<split]).trimmingCharacters(in: .whitespaces))
            let message = String(text[text.index(after: split)...])
            guard !message.isEmpty else { return [.info("Nothing to send: type group~message.")] }
            return [.send(text: message, to: group)]
        case .general:
            guard let conversation else {
                return [.info("Who is this for? Use /msg user text, /query user, /join #group, or /direct. /help lists everything.")]
            }
            return [.send(text: text, to: conversation)]
        }
    }

    private mutating func continueDialogue(_ line: String) -> [UserAction] {
        switch dialogue {
        case .askCreate:
            switch line.lowercased() {
            case "y", "yes":
                dialogue = .askName
                return []
            case "n", "no":
                dialogue = .none
                return [.info("Group mode: type group~message to send to a group. /exit to leave.")]
            default:
                return [.info("Please answer y or n.")]
            }
        case .askName:
            let name = line.trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, !name.contains(" "), !name.contains(",") else {
                return [.info("A group name is one word, like friends.")]
            }
            dialogue = .askMembers(group: Self.groupName(name))
            return []
        case .askMembers(let group):
            dialogue = .none
            let members = line.split(separator: "~").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            knownGroups.insert(group)
            return [.command("JOIN", [group])] + members.map { .command("INVITE", [$0, group]) }
                + [.info("Created \(group)\(members.isEmpty ? "" : " with \(members.joined(separator: ", "))"). Send with \(group.dropFirst())~message.")]
        case .none:
            return []
        }
    }

    private mutating func runCommand(_ line: String) -> [UserAction] {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let name = words[0].lowercased()
        let rest = words.dropFirst()
        func remainder(after count: Int) -> String {
            // The text after the first `count` words, spacing kept.
            var text = Substring(line)
            for _ in 0..<count {
                text = text.drop { $0 == " " }
                text = text.drop { $0 != " " }
            }
            return String(text.dropFirst())
        }
        switch name {
        case "/direct":
            mode = .direct
            return [.info("Direct mode: type user~message to send a direct message. /exit to leave.")]
        case "/group" where rest.isEmpty:
            mode = .group
            dialogue = .askCreate
            return [.info("Group mode.")]
        case "/group":
            return groupCommand(Array(rest))
        case "/exit":
            mode = .general
            dialogue = .none
            return [.info("General mode.")]
        case "/leave":
            return [.quit("Leaving")]
        case "/quit":
            return [.quit(rest.isEmpty ? "Leaving" : remainder(after: 1))]
        case "/msg":
            guard rest.count >= 2 else { return [.info("Usage: /msg user text")] }
            return [.send(text: remainder(after: 2), to: rest.first!)]
        case "/query":
            guard let target = rest.first else { return [.info("Usage: /query user or /query #group")] }
            conversation = target
            mode = .general
            return [.info("Now talking with \(target). Type to send.")]
        case "/join":
            guard let group = rest.first else { return [.info("Usage: /join #group")] }
            let name = Self.groupName(group)
            conversation = name
            mode = .general
            return [.command("JOIN", [name] + Array(rest.dropFirst().prefix(1)))]
        case "/part":
            guard let group = rest.first.map(Self.groupName) ?? conversation.flatMap({ $0.hasPrefix("#") ? $0 : nil }) else {
                return [.info("Usage: /part #group")]
            }
            if conversation == group { conversation = nil }
            return [.command("PART", [group])]
        case "/seen":
            guard let user = rest.first else { return [.info("Usage: /seen user")] }
            return [.whois(user)]
        case "/history":
            guard let conversation else { return [.info("Open a conversation first (/query user or /join #group).")] }
            let limit = rest.first.flatMap { Int($0) }.map { max(1, min($0, 500)) } ?? 20
            return [.history(conversation, limit: limit)]
        case "/who":
            if let conversation, conversation.hasPrefix("#") { return [.command("NAMES", [conversation])] }
            if let conversation { return [.whois(conversation)] }
            return [.info("Open a conversation first (/query user or /join #group).")]
        case "/receipts":
            switch rest.first?.lowercased() {
            case "on": return [.command("RECEIPTS", ["READ", "ON"])]
            case "off": return [.command("RECEIPTS", ["READ", "OFF"])]
            case nil: return [.command("RECEIPTS", ["READ"])]
            default: return [.receipts(remainder(after: 1))]
            }
        case "/help":
            return [.info(Self.help)]
        default:
            return [.info("Unknown command \(words[0]).\n" + Self.help)]
        }
    }

    private mutating func groupCommand(_ words: [String]) -> [UserAction] {
        let usage = UserAction.info("Usage: /group create NAME [users...] | add NAME user | remove NAME user | rename OLD NEW | members NAME | delete NAME")
        guard let sub = words.first?.lowercased(), words.count >= 2 else { return [usage] }
        let group = Self.groupName(words[1])
        switch sub {
        case "create":
            knownGroups.insert(group)
            conversation = group
            return [.command("JOIN", [group])] + words.dropFirst(2).map { .command("INVITE", [$0, group]) }
        case "add" where words.count >= 3:
            return words.dropFirst(2).map { .command("INVITE", [$0, group]) }
        case "remove" where words.count >= 3:
            return [.command("KICK", [group, words[2], "Removed from the group"])]
        case "rename" where words.count >= 3:
            let newName = Self.groupName(words[2])
            if conversation == group { conversation = newName }
            return [.command("RENAME", [group, newName, "Renamed"])]
        case "members":
            return [.command("PRIVMSG", ["ChanServ", "INFO \(group)"])]
        case "delete":
            if conversation == group { conversation = nil }
            return [.command("PRIVMSG", ["ChanServ", "DROP \(group)"])]
        default:
            return [usage]
        }
    }

    /// Tab completion: the word before the cursor completed against commands, nicks and groups.
    /// Returns the new line, or nil if there is nothing (or nothing unique) to complete.
    public func complete(_ line: String) -> String? {
        let start = line.lastIndex(of: " ").map { line.index(after: $0) } ?? line.startIndex
        let word = String(line[start...])
        guard !word.isEmpty else { return nil }
        var candidates: [String]
        if word.hasPrefix("/") && start == line.startIndex {
            candidates = Self.commands
        } else {
            let bare = word.split(separator: "~").last.map(String.init) ?? word
            candidates = (knownNicks.sorted() + knownGroups.sorted() + knownGroups.map { String($0.dropFirst()) }.sorted())
            if bare != word {
                // Completing the part after ~ is not useful; complete the name before it.
                return nil
            }
        }
        let matches = Array(Set(candidates.filter { $0.lowercased().hasPrefix(word.lowercased()) && $0.count > word.count })).sorted()
        guard !matches.isEmpty else { return nil }
        let common = matches.dropFirst().reduce(matches[0]) { prefix, candidate in
            String(zip(prefix, candidate).prefix { $0.lowercased() == $1.lowercased() }.map(\.0))
        }
        guard common.count > word.count else { return nil }
        let suffix = matches.count == 1 ? (start == line.startIndex && !word.hasPrefix("/") && mode != .general ? "~" : " ") : ""
        return String(line[..<start]) + common + suffix
    }
}
