import Foundation
@testable import ParleyClient
import Testing

@Suite("The terminal screen as a value")
struct ScreenModelTests {
    static let noColor = TextStyle(colors: false)
    static let colors = TextStyle(colors: true)

    static func screen(_ style: TextStyle = noColor, rows: Int = 12, columns: Int = 60) -> ChatScreen {
        ChatScreen(ownNick: "alice", style: style, rows: rows, columns: columns)
    }

    static func message(from: String, in conversation: String, _ text: String, time: String, msgid: String, missed: Bool = false, history: Bool = false) -> ClientEvent {
        var event = ClientEvent(.message)
        event.from = from
        event.conversation = conversation
        event.text = text
        event.time = time
        event.msgid = msgid
        if missed { event.missed = true }
        if history { event.history = true }
        return event
    }

    static func state(_ id: String, _ state: DeliveryState, to target: String, text: String = "hi bob", reader: String? = nil, members: [String]? = nil, reason: String? = nil) -> ClientEvent {
        var event = ClientEvent(.state)
        event.id = id
        event.conversation = target
        event.text = text
        event.state = state
        event.reader = reader
        event.members = members
        event.reason = reason
        if state == .sent {
            event.msgid = "msg-\(id)"
            event.time = "2026-11-25T10:00:00.000Z"
        }
        return event
    }

    static func text(_ frame: ChatScreen.Frame) -> [String] { frame.rows.map(\.plainText) }

    @Test func wideCharactersAndCombiningMarksTakeTheirRealWidth() {
        #expect(DisplayWidth.of("abc") == 3)
        #expect(DisplayWidth.of("漢字") == 4)
        #expect(DisplayWidth.of("😀") == 2)
        #expect(DisplayWidth.of("e\u{301}") == 1, "a letter with a combining accent is one column")
        #expect(DisplayWidth.of("\u{301}") == 0)
        #expect(DisplayWidth.of("한국") == 4)
    }

    @Test func theInputCursorStandsWhereTheUserTyped() {
        var input = InputLine()
        input.insert("漢")
        input.insert("😀")
        input.insert("e")
        input.insert("\u{301}")  // typed on its own: joins the e
        #expect(input.characters.count == 3)
        #expect(input.row(prompt: "> ", columns: 40).cursorColumn == 2 + 2 + 2 + 1)
        input.move(by: -1)
        #expect(input.row(prompt: "> ", columns: 40).cursorColumn == 6, "left steps over the accented e as one character")
        input.move(by: -1)
        #expect(input.row(prompt: "> ", columns: 40).cursorColumn == 4)
        // A line longer than the screen scrolls so the cursor stays on it.
        var long = InputLine(String(repeating: "字", count: 40))
        let (row, column) = long.row(prompt: "> ", columns: 30)
        #expect(column <= 29 && row.width <= 30)
        long.moveHome()
        #expect(long.row(prompt: "> ", columns: 30).cursorColumn == 2)
    }

    @Test func keysAreDecodedAcrossReads() {
        var decoder = KeyDecoder()
        #expect(decoder.feed([0x1B, 0x5B]) == [])
        #expect(decoder.feed([0x35, 0x7E]) == [.pageUp])
        #expect(decoder.feed([0x1B, 0x32, 0x0E, 0x10]) == [.conversation(2), .nextConversation, .previousConversation])
        let wide = Array("漢".utf8)
        #expect(decoder.feed([wide[0]]) == [])
        #expect(decoder.feed(Array(wide[1...]) + [0x0D]) == [.text("漢"), .enter])
    }

    @Test func longLinesWrapAlignedAfterTheName() {
        let rows = Layout.wrap(head: [Span("10:00 "), Span("bob"), Span(": ")],
                               body: [Span("one two three four five six seven eight nine")], columns: 30)
        #expect(rows.map(\.plainText) == [
            "10:00 bob: one two three four",
            "           five six seven",
            "           eight nine",
        ])
        #expect(rows.allSatisfy { $0.width <= 30 })
        let wide = Layout.wrap(head: [Span("x: ")], body: [Span(String(repeating: "字", count: 20))], columns: 20)
        #expect(wide.allSatisfy { $0.width <= 20 }, "wide characters wrap by their width: \(wide.map(\.plainText))")
    }

    @Test func aMessageIsOneLineWhoseMarkChangesInPlace() {
        var screen = Self.screen()
        _ = screen.open("bob")
        var shown: [String] = []
        for (state, words) in [(DeliveryState.pending, "… sending"), (.sent, "✓ sent"), (.delivered, "✓✓ delivered"), (.read, "✓✓ read")] {
            _ = screen.apply(Self.state("m1", state, to: "bob", reader: state >= .delivered ? "bob" : nil))
            let lines = Self.text(screen.frame()).filter { $0.contains("hi bob") }
            #expect(lines.count == 1, "one line for the message: \(lines)")
            #expect(lines.first?.hasSuffix("you: hi bob  \(words)") == true, "\(lines)")
            shown += lines
        }
        #expect(Set(shown).count == 4, "without colours every state reads differently")

        _ = screen.apply(Self.state("m2", .pending, to: "bob", text: "second"))
        _ = screen.apply(Self.state("m2", .failed, to: "bob", text: "second", reason: "bob has too many messages waiting"))
        #expect(Self.text(screen.frame()).contains { $0.hasSuffix("you: second  ✗ bob has too many messages waiting") })
    }

    @Test func withColoursReadIsAColouredMark() {
        var screen = Self.screen(Self.colors)
        _ = screen.open("bob")
        _ = screen.apply(Self.state("m1", .pending, to: "bob"))
        _ = screen.apply(Self.state("m1", .sent, to: "bob"))
        _ = screen.apply(Self.state("m1", .delivered, to: "bob", reader: "bob"))
        let delivered = screen.frame().rows.first { $0.plainText.contains("hi bob") }!
        _ = screen.apply(Self.state("m1", .read, to: "bob", reader: "bob"))
        let read = screen.frame().rows.first { $0.plainText.contains("hi bob") }!
        #expect(delivered.plainText.hasSuffix("hi bob  ✓✓") && read.plainText.hasSuffix("hi bob  ✓✓"))
        #expect(delivered.rendered(Self.colors) != read.rendered(Self.colors), "read differs from delivered by colour")
        #expect(read.rendered(Self.colors).contains("\u{1B}[1;34m✓✓"))
    }

    @Test func groupMessagesCountTheirReaders() {
        var screen = Self.screen()
        _ = screen.open("#team")
        let members = ["bob", "carol", "dave", "erin", "frank"]
        _ = screen.apply(Self.state("m1", .pending, to: "#team", text: "standup"))
        _ = screen.apply(Self.state("m1", .sent, to: "#team", text: "standup", members: members))
        for reader in ["bob", "carol", "dave"] { _ = screen.apply(Self.state("m1", .delivered, to: "#team", text: "standup", reader: reader)) }
        #expect(Self.text(screen.frame()).contains { $0.hasSuffix("you: standup  ✓✓ delivered 3/5") })
        _ = screen.apply(Self.state("m1", .read, to: "#team", text: "standup", reader: "carol"))
        #expect(Self.text(screen.frame()).contains { $0.hasSuffix("you: standup  ✓✓ read 1/5") })
        #expect(screen.receipts(matching: "stand") == "\"standup\": read by carol; delivered, not read: bob, dave; not delivered yet: erin, frank")
    }

    @Test func conversationsHaveUnreadCountsAndANoticeForOthers() {
        var screen = Self.screen()
        _ = screen.open("bob")
        _ = screen.apply(Self.message(from: "bob", in: "bob", "in view", time: "2026-11-25T10:00:00.000Z", msgid: "a"))
        let effects = screen.apply(Self.message(from: "bob", in: "bob", "in view too", time: "2026-11-25T10:00:01.000Z", msgid: "b"))
        #expect(effects == [.markRead(conversation: "bob", time: "2026-11-25T10:00:01.000Z")], "what is on screen is read")
        for (index, text) in ["one", "two"].enumerated() {
            #expect(screen.apply(Self.message(from: "carol", in: "carol", text, time: "2026-11-25T10:01:0\(index).000Z", msgid: "c\(index)")).isEmpty)
        }
        for index in 0..<5 {
            _ = screen.apply(Self.message(from: "dave", in: "#friends", "hey \(index)", time: "2026-11-25T10:02:0\(index).000Z", msgid: "f\(index)"))
        }
        let frame = Self.text(screen.frame())
        #expect(frame[frame.count - 2] == "[1:bob] 2:carol(2) 3:#friends(5)")
        #expect(frame.contains { $0.hasSuffix("▸ carol: two  (Alt+2)") }, "one line about another conversation's message: \(frame)")
        #expect(frame.contains { $0.hasSuffix("▸ #friends dave: hey 4  (Alt+3)") })
        #expect(!frame.contains { $0.contains("carol: one") && !$0.contains("▸") })

        #expect(screen.conversationName(at: 3) == "#friends")
        let opened = screen.open("#friends")
        #expect(opened == [.markRead(conversation: "#friends", time: "2026-11-25T10:02:04.000Z")])
        #expect(Self.text(screen.frame()).suffix(2).first == "1:bob 2:carol(2) [3:#friends]")
        #expect(screen.conversationName(after: 1) == "bob", "Ctrl+N wraps around")
        #expect(screen.conversationName(after: -1) == "carol")
    }

    @Test func missedMessagesComeAfterADividerAndScrollingLoadsOlderOnes() {
        var screen = Self.screen(rows: 6)
        _ = screen.open("bob")
        for index in 0..<3 {
            _ = screen.apply(Self.message(from: "bob", in: "bob", "missed \(index)", time: "2026-11-25T10:00:0\(index).000Z", msgid: "m\(index)", missed: true))
        }
        var frame = Self.text(screen.frame())
        #expect(frame.prefix(4) == ["", "", "", ""] || frame.contains { $0.contains("new since you left") })
        let divider = frame.firstIndex { $0.contains("new since you left") }
        #expect(divider != nil && frame.firstIndex { $0.hasSuffix("bob: missed 0") }! == divider! + 1, "\(frame)")

        // Page up at the top asks for what came before the oldest message.
        let effects = screen.scroll(pages: 1)
        #expect(effects == [.loadOlder(conversation: "bob", before: HistoryAnchor(time: "2026-11-25T10:00:00.000Z", msgid: "m0"))])
        #expect(screen.scroll(pages: 1).isEmpty, "one request at a time")
        for index in 0..<3 {
            _ = screen.apply(Self.message(from: "bob", in: "bob", "older \(index)", time: "2026-11-24T09:00:0\(index).000Z", msgid: "o\(index)", history: true))
        }
        _ = screen.apply(ClientEvent(.historyEnd, conversation: "bob"))
        frame = Self.text(screen.frame())
        #expect(frame.contains { $0.contains("↓ more below") }, "the status line says the view is scrolled: \(frame)")
        #expect(screen.scroll(pages: 1) == [.loadOlder(conversation: "bob", before: HistoryAnchor(time: "2026-11-24T09:00:00.000Z", msgid: "o0"))])
        _ = screen.apply(ClientEvent(.historyEnd, conversation: "bob"))
        frame = Self.text(screen.frame())
        #expect(frame.contains { $0.contains("start of the conversation with bob") }, "\(frame) \(screen.layoutRows().map(\.plainText))")
        #expect(frame.contains { $0.hasSuffix("bob: older 0") })
        #expect(screen.scroll(pages: 1).isEmpty, "nothing more to load")
        _ = screen.scroll(pages: -5)
        #expect(Self.text(screen.frame()).contains { $0.hasSuffix("bob: missed 2") })
    }

    @Test func remoteTextIsShownNotObeyed() {
        var screen = Self.screen()
        _ = screen.open("mallory")
        _ = screen.apply(Self.message(from: "mallory", in: "mallory", "\u{1B}[2Jgone", time: "2026-11-25T10:00:00.000Z", msgid: "x"))
        #expect(Self.text(screen.frame()).contains { $0.hasSuffix("mallory: ^[[2Jgone") })
    }
}
