import Foundation
@testable import ParleyClient
import Testing

@Suite("Remote text drawn on the terminal")
struct TerminalTextTests {
    @Test func escapeSequencesAreShownNotObeyed() {
        #expect(TerminalText.visible("\u{1B}[2J\u{1B}[Hforged") == "^[[2J^[[Hforged", "clear screen and cursor home")
        #expect(TerminalText.visible("\u{1B}]0;owned\u{07}") == "^[]0;owned^G", "OSC title, BEL-terminated")
        #expect(TerminalText.visible("\u{1B}]2;owned\u{1B}\\") == "^[]2;owned^[\\", "OSC title, ST-terminated")
        #expect(TerminalText.visible("a\rb\nc\td\u{08}") == "a^Mb^Jc^Id^H", "carriage return, line feed, tab, backspace")
        #expect(TerminalText.visible("\u{00}\u{1F}") == "^@^_", "both ends of C0")
        #expect(TerminalText.visible("\u{7F}") == "^?")
        #expect(TerminalText.visible("\u{02}bold\u{02} \u{03}4red") == "^Bbold^B ^C4red", "IRC formatting codes are C0 too")
    }

    @Test func c1ControlsBecomeReplacementCharacters() {
        // U+009B is CSI and U+009D OSC for terminals that obey 8-bit controls.
        #expect(TerminalText.visible("\u{9B}2J\u{9D}0;owned\u{9C}") == "\u{FFFD}2J\u{FFFD}0;owned\u{FFFD}")
        #expect(TerminalText.visible("\u{80}\u{9F}") == "\u{FFFD}\u{FFFD}")
    }

    @Test func ordinaryTextIsUntouched() {
        for text in ["hello", "héllo wörld", "日本語", "👩‍💻 ✓✓ read", "\u{A0}non-breaking", "^[ typed by a person", ""] {
            #expect(TerminalText.visible(text) == text)
            #expect(!TerminalText.containsControlCharacters(text))
        }
        #expect(TerminalText.containsControlCharacters("nick\u{1B}"))
        #expect(TerminalText.containsControlCharacters("nick\u{85}"))
    }

    /// Every string an event carries, present or added later, reaches the screen made visible:
    /// an event with an escape in every string field has none left.
    @Test func everyStringOfAnEventIsMadeVisible() throws {
        let escape = "\u{1B}[2J"
        var fields: [String: Any] = ["type": "message"]
        for child in Mirror(reflecting: ClientEvent(.message)).children {
            guard let name = child.label else { continue }
            if type(of: child.value) == String?.self { fields[name] = escape }
            if type(of: child.value) == [String]?.self { fields[name] = [escape, "ok"] }
        }
        #expect(fields.count > 10, "the event's string fields were found: \(fields.keys.sorted())")
        let event = try JSONDecoder().decode(ClientEvent.self, from: JSONSerialization.data(withJSONObject: fields))
        #expect(Self.strings(of: event).filter { $0.contains("\u{1B}") }.count == fields.count - 1, "the escape is in every field")

        let visible = event.visibleOnTerminal
        #expect(Self.strings(of: visible).allSatisfy { !$0.contains("\u{1B}") }, "no escape left: \(Self.strings(of: visible))")
        #expect(visible.text == "^[[2J")
        #expect(visible.members == ["^[[2J", "ok"])
        #expect(visible.type == .message)
    }

    static func strings(of event: ClientEvent) -> [String] {
        Mirror(reflecting: event).children.flatMap { child -> [String] in
            if let text = child.value as? String? { return text.map { [$0] } ?? [] }
            if let list = child.value as? [String]? { return [(list ?? []).joined(separator: " ")] }
            return []
        }
    }

    @Test func infoTextKeepsItsLineBreaks() {
        let help = ClientEvent.info("Unknown command /x\u{1B}]0;t\u{07}.\nCommands: /msg")
        #expect(help.visibleOnTerminal.text == "Unknown command /x^[]0;t^G.\nCommands: /msg")
        #expect(ClientEvent.error("one\ntwo").visibleOnTerminal.text == "one^Jtwo", "remote text never spans lines")
    }

    @Test func batchOutputIsUnchanged() throws {
        var event = ClientEvent(.message)
        event.text = "\u{1B}[2J"
        #expect(!event.jsonLine.contains("\u{1B}"), "JSON escapes control characters itself")
        let decoded = try JSONDecoder().decode(ClientEvent.self, from: Data(event.jsonLine.utf8))
        #expect(decoded.text == "\u{1B}[2J", "--batch keeps the exact text")
    }
}
