/// Text from the network made safe to draw on a terminal.
///
/// Anything a peer or a server sends (messages, nicks, group names, topics, reasons, notices) may
/// carry control characters; written as they are, `ESC [ 2 J` clears the user's screen, a cursor
/// move draws a forged line over real ones, and OSC sequences set the window title. Every remote
/// string the terminal client draws goes through `TerminalText.visible(_:)` first, so control
/// characters are shown, never obeyed.
public enum TerminalText {
    /// `text` with every control character replaced by a visible stand-in:
    /// - C0 controls (U+0000-U+001F) in caret notation: ESC is `^[`, BEL `^G`, TAB `^I`, LF `^J`,
    ///   and IRC's formatting codes show as `^B`, `^C`, `^O`...;
    /// - DEL (U+007F) as `^?`;
    /// - C1 controls (U+0080-U+009F, which some terminals obey as CSI, OSC...) as U+FFFD.
    /// Everything else, including any other Unicode, is kept as it is.
    public static func visible(_ text: String) -> String {
        // Most text has nothing to replace: return it untouched without building a copy.
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var result = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x00...0x1F:
                result.append("^")
                result.append(Unicode.Scalar(UInt8(scalar.value) + 0x40))
            case 0x7F:
                result.append(contentsOf: "^?".unicodeScalars)
            case 0x80...0x9F:
                result.append("\u{FFFD}")
            default:
                result.append(scalar)
            }
        }
        return String(result)
    }

    /// Whether `text` would be drawn differently by `visible(_:)`, i.e. holds a control character.
    public static func containsControlCharacters(_ text: String) -> Bool {
        text.unicodeScalars.contains(where: isControl)
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }
}

extension ClientEvent {
    /// This event with every string it carries passed through `TerminalText.visible(_:)`, for a
    /// terminal screen (`--batch` JSON output uses the event as it is: JSON escapes controls).
    /// The text of `.info` events is the interface's own and may span lines: each line is made
    /// visible on its own, so the line breaks stay.
    public var visibleOnTerminal: ClientEvent {
        var event = self
        func visible(_ text: String?) -> String? { text.map(TerminalText.visible) }
        event.id = visible(id)
        event.from = visible(from)
        event.conversation = visible(conversation)
        if type == .info {
            event.text = text.map { $0.split(separator: "\n", omittingEmptySubsequences: false).map { TerminalText.visible(String($0)) }.joined(separator: "\n") }
        } else {
            event.text = visible(text)
        }
        event.time = visible(time)
        event.msgid = visible(msgid)
        event.reader = visible(reader)
        event.reason = visible(reason)
        event.lastSeen = visible(lastSeen)
        event.nick = visible(nick)
        event.account = visible(account)
        event.user = visible(user)
        event.members = members?.map(TerminalText.visible)
        return event
    }
}
