import Foundation
import IRCWire
import Testing

/// The interactive `parley` screen as users meet it: real `parley` processes in tmux against a
/// real `parley-server` with accounts on a real SQLite file.
@Suite("The parley screen: messages, conversations, scrollback, resizing")
struct ScreenConversationTests {
    typealias Tmux = ScreenTests.Tmux

    /// A server with accounts alice, bob and carol (password: NAME-password).
    final class Setup: Sendable {
        let directory: URL
        let server: ServerProcess
        let parley: String

        init() async throws {
            let (directory, config) = try ServerProcessTests.makeDirectory()
            self.directory = directory
            for name in ["alice", "bob", "carol"] {
                let created = try ServerProcess.run(["account", "create", name, "--config", config.path, "--data-dir", directory.path], input: "\(name)-password\n")
                guard created.status == 0 else { throw ServerProcess.Failure(description: created.errors) }
            }
            server = try await ServerProcess(dataDirectory: directory, configFile: config)
            parley = try ServerProcess.executable(named: "parley").path
        }

        /// The shell command that runs `parley` as `user` in a pane; the pane stays after it exits.
        func command(_ user: String, noColor: Bool = true) -> String {
            "\(noColor ? "NO_COLOR=1 " : "")PARLEY_PASSWORD=\(user)-password \(parley) --server 127.0.0.1:\(server.ports[0]) --user \(user); echo EXITED $?; sleep 60"
        }

        func start(_ user: String, in tmux: Tmux, session: String, columns: Int = 80, rows: Int = 20) async throws {
            try tmux.run(["new-session", "-d", "-s", session, "-x", "\(columns)", "-y", "\(rows)", command(user)])
            _ = try await tmux.waitFor("\(user) connected", in: session) { $0.contains { $0.contains("Connected as \(user)") } }
        }

        func user(_ name: String) async throws -> TestClient {
            try await TestClient.registered(name, port: server.ports[0], password: "\(name)-password")
        }

        func finish() async {
            server.signal(SIGTERM)
            _ = try? await server.waitForExit(timeout: .seconds(5))
            try? FileManager.default.removeItem(at: directory)
        }
    }

    static func statusLine(_ lines: [String]) -> String {
        let filled = lines.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        return filled.count >= 2 ? filled[filled.count - 2] : ""
    }

    @Test func aReadMessageIsOnScreenOnceWithTheReadMark() async throws {
        let setup = try await Setup()
        let tmux = Tmux()
        try await setup.start("alice", in: tmux, session: "ui")
        try await setup.start("bob", in: tmux, session: "bob")

        try tmux.run(["send-keys", "-t", "ui", "/query bob", "Enter"])
        try tmux.run(["send-keys", "-t", "ui", "-l", "are you there?"])
        try tmux.run(["send-keys", "-t", "ui", "Enter"])
        _ = try await tmux.waitFor("delivered") { $0.contains { $0.hasSuffix("you: are you there?  ✓✓ delivered") } }
        // Not open on bob's screen: an unread count and a one-line notice, not yet read.
        let bobs = try await tmux.waitFor("bob's unread count", in: "bob") { Self.statusLine($0).contains("1:alice(1)") }
        #expect(bobs.contains { $0.contains("▸ alice: are you there?") })

        try tmux.run(["send-keys", "-t", "bob", "M-1"])
        _ = try await tmux.waitFor("bob sees it", in: "bob") { $0.contains { $0.hasSuffix("alice: are you there?") && !$0.contains("▸") } }
        let alices = try await tmux.waitFor("read") { $0.contains { $0.hasSuffix("you: are you there?  ✓✓ read") } }
        #expect(alices.filter { $0.contains("are you there?") }.count == 1, "the text once, with its state at the end: \(alices)")
        #expect(!alices.contains { $0.contains("sent:") || $0.contains("delivered to") })
        await setup.finish()
    }

    @Test func twoConversationsWithUnreadCountsAndSwitching() async throws {
        let setup = try await Setup()
        let tmux = Tmux()
        try await setup.start("bob", in: tmux, session: "ui")
        let alice = try await setup.user("alice")
        let carol = try await setup.user("carol")
        alice.send("PRIVMSG bob :alice one")
        alice.send("PRIVMSG bob :alice two")
        // Once alice's PING is answered the server has handled her messages: carol's come after.
        alice.send("PING :ordered")
        _ = try await alice.expect { $0.command == "PONG" }
        for index in 1...3 { carol.send("PRIVMSG bob :carol \(index)") }
        let screen = try await tmux.waitFor("both counts") { Self.statusLine($0).contains("alice(2)") && Self.statusLine($0).contains("carol(3)") }
        #expect(Self.statusLine(screen) == "1:alice(2) 2:carol(3)")

        // Ctrl+N opens the first conversation, Alt+2 the second: each shows its own messages.
        try tmux.run(["send-keys", "-t", "ui", "C-n"])
        let first = try await tmux.waitFor("alice's conversation") { Self.statusLine($0).hasPrefix("[1:alice]") }
        #expect(first.contains { $0.hasSuffix("alice: alice two") } && !first.contains { $0.hasSuffix("carol: carol 1") })
        #expect(Self.statusLine(first) == "[1:alice] 2:carol(3)")
        try tmux.run(["send-keys", "-t", "ui", "M-2"])
        let second = try await tmux.waitFor("carol's conversation") { Self.statusLine($0) == "1:alice [2:carol]" }
        #expect(second.contains { $0.hasSuffix("carol: carol 3") } && !second.contains { $0.hasSuffix("alice: alice two") })
        // Typing goes to the conversation in view.
        try tmux.run(["send-keys", "-t", "ui", "-l", "hi carol"])
        try tmux.run(["send-keys", "-t", "ui", "Enter"])
        let reply = try await carol.expect { $0.command == "PRIVMSG" && $0.parameters.last == "hi carol" }
        #expect(reply.parameters.first == "carol")
        // A new message elsewhere is one line here and a count there.
        alice.send("PRIVMSG bob :alice three")
        let notice = try await tmux.waitFor("notice") { $0.contains { $0.contains("▸ alice: alice three") } }
        #expect(Self.statusLine(notice) == "1:alice(1) [2:carol]")
        await alice.close()
        await carol.close()
        await setup.finish()
    }

    @Test func scrollbackLoadsOlderMessagesAndMarksMissedOnes() async throws {
        let setup = try await Setup()
        let tmux = Tmux()
        let alice = try await setup.user("alice")
        // Earlier messages bob has read...
        try await setup.start("bob", in: tmux, session: "ui")
        try tmux.run(["send-keys", "-t", "ui", "/query alice", "Enter"])
        for index in 1...30 { alice.send("PRIVMSG bob :old \(index)") }
        _ = try await tmux.waitFor("old 30") { $0.contains { $0.hasSuffix("alice: old 30") } }
        try tmux.run(["send-keys", "-t", "ui", "/leave", "Enter"])
        _ = try await tmux.waitFor("bob left") { $0.contains { $0.hasPrefix("EXITED") } }
        // ...then three he misses.
        alice.send("PING :offline")
        _ = try await alice.expect { $0.command == "PONG" }
        for index in 1...3 { alice.send("PRIVMSG bob :new \(index)") }
        alice.send("PING :sent")
        _ = try await alice.expect { $0.command == "PONG" && $0.parameters.last == "sent" }

        // The new session first: a tmux server left without sessions exits, and a session started
        // right then could go down with it.
        try await setup.start("bob", in: tmux, session: "again")
        try tmux.run(["kill-session", "-t", "ui"])
        try tmux.run(["rename-session", "-t", "again", "ui"])
        _ = try await tmux.waitFor("missed count") { Self.statusLine($0).contains("alice(3)") }
        try tmux.run(["send-keys", "-t", "ui", "M-1"])
        let missed = try await tmux.waitFor("missed messages") { $0.contains { $0.hasSuffix("alice: new 3") } }
        let divider = try #require(missed.firstIndex { $0.contains("new since you left") }, "\(missed)")
        #expect(missed[divider + 1].hasSuffix("alice: new 1"))
        #expect(!missed.contains { $0.contains("old 30") }, "older messages are not loaded yet")

        // Scrolling past the start fetches older messages (CHATHISTORY), then reaches the start.
        try tmux.run(["send-keys", "-t", "ui", "PageUp"])
        _ = try await tmux.waitFor("older messages") { $0.contains { $0.hasSuffix("alice: old 30") } }
        var top: [String] = []
        for _ in 0..<6 {
            try tmux.run(["send-keys", "-t", "ui", "PageUp"])
            top = try tmux.screen()
            if top.contains(where: { $0.contains("start of the conversation") }) { break }
            _ = try await tmux.waitFor("a page up") { $0 != top }
        }
        top = try await tmux.waitFor("the start") { $0.contains { $0.contains("start of the conversation with alice") } }
        #expect(top.contains { $0.hasSuffix("alice: old 1") })
        #expect(Self.statusLine(top).contains("more below"))
        for _ in 0..<8 { try tmux.run(["send-keys", "-t", "ui", "PageDown"]) }
        let bottom = try await tmux.waitFor("back at the bottom") { $0.contains { $0.hasSuffix("alice: new 3") } && !Self.statusLine($0).contains("more below") }
        #expect(bottom.contains { $0.contains("new since you left") })
        await alice.close()
        await setup.finish()
    }

    @Test func resizingRedrawsAndWideCharactersKeepTheCursorInPlace() async throws {
        let setup = try await Setup()
        let tmux = Tmux()
        try await setup.start("bob", in: tmux, session: "ui", columns: 100, rows: 16)
        let alice = try await setup.user("alice")
        try tmux.run(["send-keys", "-t", "ui", "/query alice", "Enter"])
        let long = "this message is long enough to wrap once the terminal becomes narrow"
        alice.send("PRIVMSG bob :\(long)")
        let wide = try await tmux.waitFor("one row") { $0.contains { $0.hasSuffix("alice: " + long) } }
        #expect(wide.count >= 16)

        try tmux.run(["resize-window", "-t", "ui", "-x", "40", "-y", "12"])
        // The rest of the text lines up under its first word, row after row.
        @Sendable func wrapped(_ screen: [String]) -> (first: String, rest: [String])? {
            guard let start = screen.firstIndex(where: { $0.contains("alice: this message") }) else { return nil }
            let first = screen[start]
            let textColumn = first.distance(from: first.startIndex, to: first.range(of: "this message")!.lowerBound)
            var rest: [String] = []
            for row in screen[(start + 1)...] {
                guard row.prefix(textColumn).allSatisfy({ $0 == " " }), row.count > textColumn else { break }
                rest.append(String(row.dropFirst(textColumn)))
            }
            return (String(first.dropFirst(textColumn)), rest)
        }
        // Waits for the whole redraw, not just its first rows.
        let narrow = try await tmux.waitFor("wrapped") { lines in
            lines.count <= 13 && lines.last { !$0.isEmpty } == "[alice]"
                && wrapped(lines).map { ([$0.first] + $0.rest).joined(separator: " ") } == long
        }
        let (firstText, rest) = try #require(wrapped(narrow))
        let first = firstText
        #expect(([first] + rest).joined(separator: " ") == long, "\(narrow)")
        #expect(rest.count >= 1 && narrow.allSatisfy { $0.count <= 40 })
        #expect(narrow.last { !$0.isEmpty } == "[alice]", "the input line is at the new bottom: \(narrow)")

        // Wide characters in the input line: the cursor stands after what was typed.
        try tmux.run(["send-keys", "-t", "ui", "-l", "漢字😀ab"])
        _ = try await tmux.waitFor("typed") { $0.last { !$0.isEmpty } == "[alice] 漢字😀ab" }
        #expect(try await tmux.cursorColumn(reaching: 8 + 2 + 2 + 2 + 1 + 1) == 8 + 2 + 2 + 2 + 1 + 1)
        try tmux.run(["send-keys", "-t", "ui", "Left", "Left", "Left"])
        let before = try await tmux.cursorColumn(reaching: 8 + 2 + 2)
        #expect(before == 8 + 2 + 2, "three characters back, two of them narrow and one wide: \(before)")
        try tmux.run(["send-keys", "-t", "ui", "-l", "é"])
        _ = try await tmux.waitFor("inserted") { $0.last { !$0.isEmpty } == "[alice] 漢字é😀ab" }
        #expect(try await tmux.cursorColumn(reaching: 8 + 2 + 2 + 1) == 8 + 2 + 2 + 1)
        try tmux.run(["send-keys", "-t", "ui", "Enter"])
        _ = try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.last == "漢字é😀ab" }
        await alice.close()
        await setup.finish()
    }

    @Test func theOriginalAppsModesKeepWorking() async throws {
        let setup = try await Setup()
        let tmux = Tmux()
        try await setup.start("bob", in: tmux, session: "ui")
        let alice = try await setup.user("alice")

        try tmux.run(["send-keys", "-t", "ui", "/direct", "Enter"])
        _ = try await tmux.waitFor("direct mode") { $0.last { !$0.isEmpty } == "[direct]" }
        try tmux.run(["send-keys", "-t", "ui", "-l", "alice~hi from direct mode"])
        try tmux.run(["send-keys", "-t", "ui", "Enter"])
        let direct = try await alice.expect { $0.command == "PRIVMSG" }
        #expect(direct.parameters == ["alice", "hi from direct mode"])
        _ = try await tmux.waitFor("its line") { $0.contains { $0.hasSuffix("you: hi from direct mode  ✓✓ delivered") } }
        try tmux.run(["send-keys", "-t", "ui", "/exit", "Enter"])
        _ = try await tmux.waitFor("general mode") { $0.contains { $0.contains("General mode.") } }

        try tmux.run(["send-keys", "-t", "ui", "/group", "Enter"])
        _ = try await tmux.waitFor("create?") { $0.last { !$0.isEmpty } == "create a new group? (y/n)" }
        for answer in ["y", "friends", "alice"] { try tmux.run(["send-keys", "-t", "ui", answer, "Enter"]) }
        _ = try await alice.expect { $0.command == "JOIN" && $0.parameters.first == "#friends" }
        try tmux.run(["send-keys", "-t", "ui", "-l", "friends~hello group"])
        try tmux.run(["send-keys", "-t", "ui", "Enter"])
        let group = try await alice.expect { $0.command == "PRIVMSG" && $0.parameters.first == "#friends" }
        #expect(group.parameters.last == "hello group")
        _ = try await tmux.waitFor("group line") { $0.contains { $0.contains("you: hello group  ✓") } }

        try tmux.run(["send-keys", "-t", "ui", "/leave", "Enter"])
        let after = try await tmux.waitFor("exit") { $0.contains { $0.hasPrefix("EXITED") } }
        #expect(after.contains("EXITED 0"))
        await alice.close()
        await setup.finish()
    }
}
