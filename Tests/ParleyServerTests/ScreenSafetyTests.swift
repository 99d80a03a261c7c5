import Foundation
import Testing

/// What a hostile peer can do to the interactive `parley` screen (a real pseudo-terminal in
/// tmux, against a real server): nothing but show text.
@Suite("The parley screen against hostile text")
struct ScreenSafetyTests {
    @Test func escapeSequencesFromPeersAreShownNotObeyed() async throws {
        let server = try await TestServer()
        let parley = try ServerProcess.executable(named: "parley").path
        let tmux = ScreenTests.Tmux()
        let command = "PARLEY_PASSWORD=bob-password \(parley) --server 127.0.0.1:\(server.ipv4Port) --user bob --create; sleep 60"
        try tmux.run(["new-session", "-d", "-s", "ui", "-x", "120", "-y", "20", command])
        _ = try await tmux.waitFor("connected") { $0.contains { $0.contains("Connected as bob") } }
        let titleBefore = try tmux.run(["display-message", "-p", "-t", "ui", "#{pane_title}"])

        // A guest on a raw socket, so nothing on its side filters what it sends.
        let mallory = try await TestClient.registered("mallory", port: server.ipv4Port)
        mallory.send("PRIVMSG bob :an honest first line")
        _ = try await tmux.waitFor("the notice") { $0.contains { $0.contains("▸ mallory: an honest first line") } }
        try tmux.run(["send-keys", "-t", "ui", "M-1"])
        _ = try await tmux.waitFor("the first line") { $0.contains { $0.contains("mallory: an honest first line") && !$0.contains("▸") } }

        // Set the title; then clear the screen, move home and draw a line that looks like carol's.
        mallory.send("PRIVMSG bob :\u{1B}]2;PWNED\u{07}title?")
        mallory.send("PRIVMSG bob :\u{1B}[2J\u{1B}[H12:00 carol → you: forged line")
        // The screen draws events in order: once the forged text shows (somewhere), all was drawn.
        let screen = try await tmux.waitFor("the forged line") { $0.contains { $0.contains("carol → you: forged line") && !$0.contains("▸") } }

        #expect(screen.contains { $0.contains("mallory: an honest first line") }, "the screen was not cleared: \(screen)")
        #expect(screen.contains { $0.contains("mallory: ^[[2J^[[H12:00 carol → you: forged line") },
                "the escapes are shown, on mallory's line: \(screen)")
        #expect(!screen.contains { $0.trimmingCharacters(in: .whitespaces).hasPrefix("12:00 carol") }, "no line passes for carol's")
        #expect(screen.contains { $0.contains("mallory: ^[]2;PWNED^Gtitle?") }, "the title sequence is shown: \(screen)")
        let titleAfter = try tmux.run(["display-message", "-p", "-t", "ui", "#{pane_title}"])
        #expect(titleAfter == titleBefore, "the terminal title is unchanged")
        #expect(!titleAfter.contains("PWNED"))

        await mallory.close()
        try tmux.run(["send-keys", "-t", "ui", "/quit", "Enter"])
        try await server.shutdownAndRemove()
    }
}
