/// ANSI styles, or none at all when colour is off (`NO_COLOR`, or not a terminal).
public struct TextStyle: Sendable, Equatable {
    public let colors: Bool

    public init(colors: Bool) {
        self.colors = colors
    }

    public enum Tone: String, Sendable, Equatable {
        case plain = "", dim = "2", bold = "1", red = "31", green = "32", yellow = "33", blue = "1;34", cyan = "36",
             inverse = "7"
    }

    /// A stable colour per nick, so senders are told apart at a glance.
    public static func nickCode(_ name: String) -> String {
        let palette = ["31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96"]
        let index = name.lowercased().unicodeScalars.reduce(0) { ($0 &* 31 &+ Int($1.value)) & 0xFFFF } % palette.count
        return "1;" + palette[index]
    }
}

/// A piece of a line drawn in one style (an SGR code, empty for none).
public struct Span: Sendable, Equatable {
    public var text: String
    public var code: String

    public init(_ text: String, _ code: String = "") {
        self.text = text
        self.code = code
    }

    public init(_ text: String, _ tone: TextStyle.Tone) {
        self.init(text, tone.rawValue)
    }
}

/// One row of the screen: styled pieces whose display width fits the terminal.
public struct Row: Sendable, Equatable {
    public var spans: [Span]

    public init(_ spans: [Span] = []) {
        self.spans = spans
    }

    public var plainText: String { spans.map(\.text).joined() }
    public var width: Int { DisplayWidth.of(plainText) }

    /// The row as the terminal draws it, with SGR codes when colours are on.
    public func rendered(_ style: TextStyle) -> String {
        guard style.colors else { return plainText }
        var output = ""
        for span in spans where !span.text.isEmpty {
            output += span.code.isEmpty ? span.text : "\u{1B}[\(span.code)m\(span.text)\u{1B}[0m"
        }
        return output
    }

    /// The row cut to `columns`, ending with `…` when something was cut.
    public func truncated(to columns: Int) -> Row {
        guard width > columns else { return self }
        var result: [Span] = []
        var used = 0
        let room = max(0, columns - 1)
        outer: for span in spans {
            var kept = ""
            for character in span.text {
                let width = DisplayWidth.of(character)
                if used + width > room { result.append(Span(kept, span.code)); break outer }
                kept.append(character)
                used += width
            }
            result.append(Span(kept, span.code))
        }
        result.append(Span("…", .dim))
        return Row(result)
    }
}

public enum Layout {
    /// Wraps `body` into rows: the first row starts after `head` (a time and a name), the rest are
    /// indented to the same column so the text lines up after the name. Breaks at spaces where it
    /// can, inside a word only when the word is wider than the room.
    public static func wrap(head: [Span], body: [Span], columns: Int) -> [Row] {
        let headWidth = DisplayWidth.of(head.map(\.text).joined())
        // A long name must not squeeze the text into a sliver: past half the width, continuation
        // rows start at column 3 instead.
        let indent = headWidth <= columns / 2 ? headWidth : 2
        var rows: [Row] = []
        var current: [(Character, String, Int)] = []
        var currentWidth = 0
        var room = max(1, columns - headWidth)

        func flush(_ characters: ArraySlice<(Character, String, Int)>) {
            var spans: [Span] = rows.isEmpty ? head : [Span(String(repeating: " ", count: indent))]
            let bodyStart = spans.count
            for (character, code, _) in characters {
                if spans.count > bodyStart, spans[spans.count - 1].code == code {
                    spans[spans.count - 1].text.append(character)
                } else {
                    spans.append(Span(String(character), code))
                }
            }
            rows.append(Row(spans))
            room = max(1, columns - indent)
        }

        for span in body {
            for character in span.text {
                let width = DisplayWidth.of(character)
                if currentWidth + width > room, !current.isEmpty {
                    if character == " " {
                        flush(current[...])
                        current = []
                        currentWidth = 0
                        continue
                    }
                    if let space = current.lastIndex(where: { $0.0 == " " }), space > 0 {
                        flush(current[..<space])
                        current = Array(current[(space + 1)...])
                    } else {
                        flush(current[...])
                        current = []
                    }
                    currentWidth = current.reduce(0) { $0 + $1.2 }
                }
                current.append((character, span.code, width))
                currentWidth += width
            }
        }
        if !current.isEmpty || rows.isEmpty { flush(current[...]) }
        return rows
    }
}
