import Foundation
import IRCWire
import Testing

/// The interactive `parley` screen in a real pseudo-terminal (tmux), against a real server.
@Suite("The parley screen in a terminal")
struct ScreenTests {
    /// One tmux server per test, on its own socket.
    final class Tmux: Sendable {
        let socket = "parley-test-\(UUID().uuidString.prefix(8))"

        /// Runs tmux with posix_spawn and waitpid: Foundation's Process does not reliably notice
        /// the exit of a tmux client whose server it forked.
        @discardableResult
        func run(_ arguments: [String]) throws -> String {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("tmux-\(UUID().uuidString)").path
            let output = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
            guard output >= 0 else { throw ServerProcess.Failure(description: "cannot create \(file)") }
            defer { unlink(file) }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_adddup2(&actions, output, 1)
            posix_spawn_file_actions_adddup2(&actions, output, 2)
            // Nothing else of ours may leak into tmux: its server outlives the call, and an
            // inherited pipe end (another test's child output) would never see EOF.
            Self.closeFrom(&actions, 3)
            let argv = (["tmux", "-L", socket] + arguments).map { strdup($0) } + [nil]
            defer { for pointer in argv { free(pointer) } }
            var pid: pid_t = 0
            let spawned = posix_spawnp(&pid, "tmux", &actions, nil, argv, environ)
            close(output)
            guard spawned == 0 else { throw ServerProcess.Failure(description: "cannot run tmux (\(spawned)); install it (apt-get install tmux)") }
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            return (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
        }

        /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+), which Swift does not import.
        static func closeFrom(_ actions: inout posix_spawn_file_actions_t, _ lowest: Int32) {
            typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
            if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") {
                _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, lowest)
                return
            }
            // Older C libraries: close what is open now.
            for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
                if let fd = Int32(name), fd >= lowest { posix_spawn_file_actions_addclose(&actions, fd) }
            }
        }

        func screen(_ target: String = "ui") throws -> [String] {
            try run(["capture-pane", "-p", "-t", target]).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        }

        /// The cursor's column (0-based) in a pane.
        func cursorColumn(_ target: String = "ui") throws -> Int {
            Int(try run(["display-message", "-p", "-t", target, "#{cursor_x}"]).trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        }

        /// The cursor's column once it has come to `expected` (keys sent a moment ago may not be
        /// handled yet), or where it stands when `timeout` has passed.
        func cursorColumn(reaching expected: Int, in target: String = "ui", timeout: Duration = .seconds(5)) async throws -> Int {
            let deadline = ContinuousClock.now + timeout
            var column = try cursorColumn(target)
            while column != expected && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
                column = try cursorColumn(target)
            }
            return column
        }

        /// Polls the pane: tmux has no way to announce that the screen changed.
        func waitFor(_ description: String, in target: String = "ui", timeout: Duration = .seconds(10), _ predicate: ([String]) -> Bool) async throws -> [String] {
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                let lines = try screen(target)
                if predicate(lines) { return lines }
                try await Task.sleep(for: .milliseconds(50))
            }
            throw TestClient.Timeout(waitingFor: description, received: try screen(target))
        }

        /// `kill-server` alone leaves the panes' processes running (a client reconnecting to a
        /// server that is gone, a `sleep`): end their process groups first.
        deinit {
            let panes = (try? run(["list-panes", "-a", "-F", "#{pane_pid}"])) ?? ""
            for pid in panes.split(separator: "\n").compactMap({ pid_t($0) }) where pid > 1 { kill(-pid, SIGKILL) }
            _ = try? run(["kill-server"])
        }
    }

    static func lastLine(_ lines: [String]) -> String {
        lines.last { !$0.trimmingCharacters(in: .whitespaces).isEmpty } ?? ""
    }

    @Test(arguments: ["/leave", "C-c"])
    func incomingMessagesNeverGarbleTheLineBeingTyped(exit: String) async throws {
        let (directory, config) = try ServerProcessTests.makeDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let data = ["--config", config.path, "--data-dir", directory.path]
        for (name, password) in [("alice", "alice-password"), ("bob", "bob-password")] {
            #expect(try ServerProcess.run(["account", "create", name] + data, input: password + "\n").status == 0)
        }
        let server = try await ServerProcess(dataDirectory: directory, configFile: config)
        let parley = try ServerProcess.executable(named: "parley").path
        let tmux = Tmux()
        // After parley exits the pane stays, showing its exit status and the terminal's mode.
        let command = "PARLEY_PASSWORD=bob-password \(parley) --server 127.0.0.1:\(server.ports[0]) --user bob; echo EXITED $?; stty -a; sleep 60"
        try tmux.run(["new-session", "-d", "-s", "ui", "-x", "100", "-y", "20", command])
        _ = try await tmux.waitFor("connected") { $0.contains { $0.contains("Connected as bob") } }

        try tmux.run(["send-keys", "-t", "ui", "/query alice", "Enter"])
        _ = try await tmux.waitFor("query") { $0.contains { $0.contains("Now talking with alice") } }
        try tmux.run(["send-keys", "-t", "ui", "-l", "half a line typ"])
        _ = try await tmux.waitFor("typed") { Self.lastLine($0).hasSuffix("half a line typ") }

        let alice = try await TestClient.registered("alice", port: server.ports[1], host: "::1", password: "alice-password")
        alice.send("PRIVMSG bob :incoming while bob types")
        let shown = try await tmux.waitFor("the message") { $0.contains { $0.contains("alice: incoming while bob types") } }
        #expect(Self.lastLine(shown) == "[alice] half a line typ", "the half line is intact, below the message")

        // Finishing the line sends it, to the conversation in view.
        try tmux.run(["send-keys", "-t", "ui", "-l", "ed"])
        try tmux.run(["send-keys", "-t", "ui", "Enter"])
        let received = try await alice.expect(timeout: .seconds(5), "the line bob finished typing (screen: \(try tmux.screen()))") { $0.command == "PRIVMSG" }
        #expect(received.parameters == ["alice", "half a line typed"])
        _ = try await tmux.waitFor("sent state") { $0.contains { $0.contains("you: half a line typed  ✓") } }

        // Leaving by /leave or by Ctrl-C restores the terminal.
        if exit == "/leave" {
            try tmux.run(["send-keys", "-t", "ui", "/leave", "Enter"])
        } else {
            try tmux.run(["send-keys", "-t", "ui", "C-c"])
        }
        // Wait for the whole `stty -a` report, whose last lines list the local modes.
        let after = try await tmux.waitFor("exit and stty") { lines in
            lines.contains { $0.hasPrefix("EXITED") } && lines.contains { $0.contains("icanon") } && lines.contains { $0.contains("echoctl") }
        }
        #expect(after.contains("EXITED 0"))
        let modes = after.joined(separator: " ")
        #expect(modes.contains(" icanon") && modes.contains(" echo") && !modes.contains("-icanon") && !modes.contains(" -echo "),
                "the terminal is back in its normal mode: \(modes)")
        await alice.close()
        server.signal(SIGTERM)
        _ = try await server.waitForExit(timeout: .seconds(5))
    }
}
