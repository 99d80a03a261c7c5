import Foundation
import ParleyClient

/// Turns client events into lines for the screen: time, sender and (for groups) the group's
/// name on every message; our own messages' states as short status lines.
struct EventFormatter {
    let style: Style

    /// A server time (`2026-11-25T10:00:00.000Z`, milliseconds optional) as a date.
    static func date(_ iso: String?) -> Date? {
        guard let iso else { return nil }
        return ISO8601DateFormatter.withFractions.date(from: iso) ?? ISO8601DateFormatter().date(from: iso)
    }

    /// Local HH:mm of a server time, or of now.
    static func clock(_ iso: String?) -> String {
        localTime(date(iso) ?? Date())
    }

    static func localTime(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "HH:mm"
        return formatter.string(from: date)
    }

    static func describeLastSeen(_ iso: String?) -> String {
        guard let date = date(iso) else { return "never seen online" }
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyy-MM-dd HH:mm"
        let seconds = max(0, Int(Date().timeIntervalSince(date)))
        let ago = seconds < 60 ? "just now" : seconds < 3600 ? "\(seconds / 60) min ago" : seconds < 86400 ? "\(seconds / 3600) h ago" : "\(seconds / 86400) days ago"
        return "last seen \(formatter.string(from: date)) (\(ago))"
    }

    /// The lines to draw for `event`. Its strings come from the network: they pass through
    /// `TerminalText.visible` here, the one way onto the screen, before any styling is added.
    func lines(for remoteEvent: ClientEvent, ownNick: String) -> [String] {
        let event = remoteEvent.visibleOnTerminal
        switch event.type {
        case .message:
            let time = style.dim(Self.clock(event.time))
            let from = event.from ?? "?"
            let text = event.text ?? ""
            let missed = event.missed == true ? style.yellow("(missed) ") : event.history == true ? style.dim("(history) ") : ""
            let notice = event.reason == "notice" ? style.dim("-notice- ") : ""
            if let conversation = event.conversation, conversation.hasPrefix("#") {
                return ["\(time) \(missed)\(style.cyan("[\(conversation)]")) \(style.nick(from)): \(notice)\(text)"]
            }
            if event.own == true {
                return ["\(time) \(missed)\(style.dim("you → \(event.conversation ?? "?")")): \(text)"]
            }
            return ["\(time) \(missed)\(style.nick(from)) → you: \(notice)\(text)"]
        case .state:
            let target = event.conversation ?? "?"
            let shortText = Self.shorten(event.text ?? "")
            switch event.state ?? .pending {
            case .pending:
                let place = target.hasPrefix("#") ? style.cyan("[\(target)]") + " " + style.dim("you") : style.dim("you → \(target)")
                return ["\(style.dim(Self.clock(nil))) \(place): \(event.text ?? "")  \(style.dim("… sending"))"]
            case .sent:
                return [style.dim("      ✓ sent: \"\(shortText)\"")]
            case .delivered:
                return [style.green("      ✓✓ delivered\(event.reader.map { " to \($0)" } ?? ""): \"\(shortText)\"")]
            case .read:
                return [style.green(style.bold("      ✓✓ read\(event.reader.map { " by \($0)" } ?? "") at \(Self.clock(event.time)): \"\(shortText)\""))]
            case .failed:
                return [style.red("      ✗ not sent to \(target): \(event.reason ?? "refused") (\"\(shortText)\")")]
            }
        case .recipientOffline:
            let who = event.conversation ?? "?"
            return [style.yellow("      \(who) is offline, \(Self.describeLastSeen(event.lastSeen)); they get it when they come back")]
        case .connected:
            return [style.green("Connected as \(event.nick ?? ownNick).") + " Type /help for commands."]
        case .accountCreated:
            return [style.green("Account \(event.account ?? ownNick) created.")]
        case .loginFailed:
            return [style.red("Login failed: \(event.reason ?? "refused")")]
        case .joined:
            return [style.dim("You are in \(event.conversation ?? "?").")]
        case .parted:
            return [style.dim("You left \(event.conversation ?? "?").")]
        case .kicked:
            return [style.yellow("\(event.from ?? "The owner") removed you from \(event.conversation ?? "?"): \(event.reason ?? "")")]
        case .memberJoined:
            return [style.dim("\(event.user ?? "?") joined \(event.conversation ?? "?")")]
        case .memberLeft:
            return [style.dim("\(event.user ?? "?") left \(event.conversation ?? "?")")]
        case .members:
            return [style.dim("In \(event.conversation ?? "?") now: \((event.members ?? []).joined(separator: " "))")]
        case .topic:
            return [style.dim("Topic of \(event.conversation ?? "?"): \(event.text ?? "")")]
        case .renamed:
            return [style.yellow("\(event.from ?? "?") is now \(event.conversation ?? "?")")]
        case .seen:
            if event.online == true { return ["\(event.user ?? "?") is online now"] }
            return ["\(event.user ?? "?") is offline, \(Self.describeLastSeen(event.lastSeen))"]
        case .notice:
            return [style.dim("-\(event.from ?? "server")- \(event.text ?? "")")]
        case .error:
            return [style.red("! \(event.text ?? "error")")]
        case .disconnected:
            return [style.yellow("Disconnected: \(event.reason ?? "connection lost")")]
        case .reconnecting:
            return [style.yellow("Reconnecting in \(String(format: "%.1f", event.delay ?? 0)) s… (messages you send now go out when connected)")]
        case .info:
            return (event.text ?? "").split(separator: "\n", omittingEmptySubsequences: false).map { style.dim(String($0)) }
        }
    }

    static func shorten(_ text: String) -> String {
        text.count > 30 ? String(text.prefix(29)) + "…" : text
    }
}

extension ISO8601DateFormatter {
    /// A new formatter per use: formatters are not safe to share between threads.
    static var withFractions: ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter
    }
}
