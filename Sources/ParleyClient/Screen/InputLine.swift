/// A key the user pressed, decoded from the bytes a terminal sends.
public enum Key: Sendable, Equatable {
    case text(String)
    case enter, backspace, deleteForward, left, right, home, end, killToStart, tab
    case pageUp, pageDown
    /// Alt+1 ... Alt+9: the conversation at that place in the status line.
    case conversation(Int)
    case nextConversation, previousConversation
    /// Ctrl-C.
    case interrupt
    /// Ctrl-D on an empty line.
    case endOfInput
}

/// Turns the bytes typed into keys. Bytes can arrive split anywhere (a UTF-8 character or an
/// escape sequence across two reads): what is incomplete waits for the next call.
public struct KeyDecoder: Sendable {
    private var escape: [UInt8] = []
    private var pendingUTF8: [UInt8] = []

    public init() {}

    public mutating func feed(_ bytes: [UInt8]) -> [Key] {
        var keys: [Key] = []
        for byte in bytes {
            if !escape.isEmpty || byte == 0x1B {
                escape.append(byte)
                if let key = decodeEscape() { keys.append(key) }
                continue
            }
            switch byte {
            case 0x03: keys.append(.interrupt)
            case 0x04: keys.append(.endOfInput)
            case 0x0D, 0x0A: keys.append(.enter)
            case 0x7F, 0x08: keys.append(.backspace)
            case 0x01: keys.append(.home)
            case 0x05: keys.append(.end)
            case 0x15: keys.append(.killToStart)
            case 0x09: keys.append(.tab)
            case 0x0E: keys.append(.nextConversation)
            case 0x10: keys.append(.previousConversation)
            case 0x00..<0x20: break
            default:
                pendingUTF8.append(byte)
                if let text = String(validating: pendingUTF8, as: UTF8.self) {
                    pendingUTF8 = []
                    if case .text(let before)? = keys.last {
                        keys[keys.count - 1] = .text(before + text)
                    } else {
                        keys.append(.text(text))
                    }
                } else if pendingUTF8.count >= 4 {
                    pendingUTF8 = []
                }
            }
        }
        return keys
    }

    /// ESC [ C / D / H / F, ESC [ 3~ 5~ 6~ (delete, page up, page down), ESC O H / F, and
    /// ESC followed by a digit (Alt+digit).
    private mutating func decodeEscape() -> Key? {
        guard escape.count >= 2 else { return nil }
        let second = escape[1]
        if escape.count == 2, (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(second) {
            escape = []
            return .conversation(Int(second - UInt8(ascii: "0")))
        }
        guard second == UInt8(ascii: "[") || second == UInt8(ascii: "O") else {
            escape = []
            return nil
        }
        guard escape.count >= 3, let last = escape.last, (0x40...0x7E).contains(last) else {
            if escape.count > 8 { escape = [] }
            return nil
        }
        defer { escape = [] }
        let parameter = String(decoding: escape[2..<(escape.count - 1)], as: UTF8.self)
        switch last {
        case UInt8(ascii: "C"): return .right
        case UInt8(ascii: "D"): return .left
        case UInt8(ascii: "H"): return .home
        case UInt8(ascii: "F"): return .end
        case UInt8(ascii: "~"):
            switch parameter {
            case "3": return .deleteForward
            case "5": return .pageUp
            case "6": return .pageDown
            case "1", "7": return .home
            case "4", "8": return .end
            default: return nil
            }
        default: return nil
        }
    }
}

/// What the user is typing, and where the cursor is, in characters (grapheme clusters).
public struct InputLine: Sendable, Equatable {
    public private(set) var characters: [Character] = []
    public private(set) var cursor = 0

    public init(_ text: String = "") {
        characters = Array(text)
        cursor = characters.count
    }

    public var text: String { String(characters) }
    public var isEmpty: Bool { characters.isEmpty }

    public mutating func insert(_ typed: String) {
        // A combining mark typed after a letter joins it: rebuild the clusters around the cursor
        // so the cursor never sits inside one character.
        let before = String(characters[..<cursor]) + typed
        characters = Array(before + String(characters[cursor...]))
        cursor = min(before.count, characters.count)
    }

    public mutating func backspace() {
        guard cursor > 0 else { return }
        characters.remove(at: cursor - 1)
        cursor -= 1
    }

    public mutating func deleteForward() {
        if cursor < characters.count { characters.remove(at: cursor) }
    }

    public mutating func move(by offset: Int) { cursor = min(max(0, cursor + offset), characters.count) }
    public mutating func moveHome() { cursor = 0 }
    public mutating func moveEnd() { cursor = characters.count }

    public mutating func killToStart() {
        characters.removeFirst(cursor)
        cursor = 0
    }

    public mutating func replace(with text: String) {
        characters = Array(text)
        cursor = characters.count
    }

    /// The prompt and the part of the text around the cursor that fits in `columns`, and the
    /// cursor's column (0-based) on that row. Wide characters count two columns.
    public func row(prompt: String, columns: Int) -> (row: Row, cursorColumn: Int) {
        let promptWidth = DisplayWidth.of(prompt)
        let room = max(4, columns - promptWidth - 1)
        // Scroll horizontally: drop characters from the start until the cursor fits.
        var start = 0
        var widthToCursor = DisplayWidth.of(characters[0..<cursor])
        while widthToCursor > room - 1, start < cursor {
            widthToCursor -= DisplayWidth.of(characters[start])
            start += 1
        }
        var shown = ""
        var used = 0
        for character in characters[start...] {
            let width = DisplayWidth.of(character)
            if used + width > room { break }
            shown.append(character)
            used += width
        }
        return (Row([Span(prompt), Span(shown)]), promptWidth + widthToCursor)
    }
}
