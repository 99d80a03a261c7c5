import Foundation
import NIOConcurrencyHelpers
import ParleyClient

/// The screen: messages above, one input line below, never garbled; the terminal is put back
/// on every way out (/leave, /quit, Ctrl-C, Ctrl-D, SIGTERM, SIGHUP).
struct InteractiveSession {
    enum Outcome {
        case quit
        case loginFailed(String)
        case connectFailed(String)
    }

    let address: ServerAddress
    let login: LoginSettings

    func run() async -> Outcome {
        let client = ChatClient(address: address, login: login)
        let terminal = Terminal()
        let screen = Screen()
        let formatter = EventFormatter(style: .fromEnvironment)
        let interpreter = NIOLockedValueBox(CommandInterpreter())
        let loginFailure = NIOLockedValueBox<String?>(nil)
        let quitting = NIOLockedValueBox(false)

        @Sendable func show(_ event: ClientEvent) {
            screen.print(formatter.lines(for: event, ownNick: login.account))
        }
        @Sendable func quit(_ reason: String) {
            guard quitting.withLockedValue({ flag in defer { flag = true }; return !flag }) else { return }
            Task { await client.stop(reason: reason) }
        }

        terminal.enterRawMode()
        screen.start()
        screen.setPrompt(interpreter.withLockedValue { $0.prompt })
        screen.print(["Connecting to \(address) as \(login.account)…"])

        // Signals end the session cleanly too; the terminal is restored below in every case.
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        signal(SIGWINCH, SIG_IGN)
        var sources: [DispatchSourceSignal] = []
        for number in [SIGINT, SIGTERM, SIGHUP] {
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { quit("Leaving") }
            source.resume()
            sources.append(source)
        }
        let resize = DispatchSource.makeSignalSource(signal: SIGWINCH, queue: .global())
        resize.setEventHandler { screen.resize() }
        resize.resume()
        sources.append(resize)

        let events = Task {
            for await event in client.events {
                if event.type == .loginFailed {
                    loginFailure.withLockedValue { $0 = event.reason ?? "refused" }
                    continue
                }
                show(event)
                interpreter.withLockedValue { interpreter in
                    // Tab completion copies these into the input line, which is drawn as typed:
                    // a name holding control characters (no valid name does) is never offered.
                    func completable(_ name: String) -> Bool { !TerminalText.containsControlCharacters(name) }
                    if let from = event.from, !from.contains("."), event.type == .message, completable(from) { interpreter.knownNicks.insert(from) }
                    if let user = event.user, completable(user) { interpreter.knownNicks.insert(user) }
                    if let conversation = event.conversation, conversation.hasPrefix("#"), completable(conversation) { interpreter.knownGroups.insert(conversation) }
                    for member in event.members ?? [] where completable(member) { interpreter.knownNicks.insert(String(member.drop { "~@+".contains($0) })) }
                }
                // Everything shown here is in view: mark it read (the author sees "read" unless
                // /receipts off).
                if event.type == .message, event.own != true, let conversation = event.conversation, let time = event.time {
                    client.sendLine { $0.markRead(conversation, time: time) }
                }
            }
        }

        // Keys arrive on a plain thread: a blocking read never holds up the event loop.
        let keysDone = DispatchSemaphore(value: 0)
        let keys = Thread {
            defer { keysDone.signal() }
            var buffer = [UInt8](repeating: 0, count: 1024)
            while !quitting.withLockedValue({ $0 }) {
                // Wait for keys a little at a time, so this thread stops as soon as the session
                // ends and never takes input meant for what comes after (a prompt, the shell).
                var descriptor = pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, 100)
                if ready == 0 || (ready < 0 && errno == EINTR) { continue }
                let count = read(STDIN_FILENO, &buffer, buffer.count)
                if count <= 0 {
                    if count < 0 && errno == EINTR { continue }
                    quit("Leaving")
                    return
                }
                for result in screen.feed(Array(buffer[0..<count])) {
                    switch result {
                    case .line(let line):
                        let actions = interpreter.withLockedValue { $0.interpret(line) }
                        screen.setPrompt(interpreter.withLockedValue { $0.prompt })
                        if let reason = perform(actions, on: client, report: show) {
                            quit(reason)
                            return
                        }
                    case .interrupt, .endOfInput:
                        quit("Leaving")
                        return
                    case .complete(let line):
                        if let completed = interpreter.withLockedValue({ $0.complete(line) }) { screen.replaceInput(completed) }
                    case .none:
                        break
                    }
                }
            }
        }
        keys.start()

        var outcome = Outcome.quit
        do {
            try await client.run()
        } catch {
            outcome = .connectFailed(describe(connectError: error, address: address))
        }
        _ = await events.value
        quitting.withLockedValue { $0 = true }
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                keysDone.wait()
                continuation.resume()
            }
        }
        for source in sources { source.cancel() }
        screen.stop()
        terminal.restore()
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        signal(SIGHUP, SIG_DFL)
        if let reason = loginFailure.withLockedValue({ $0 }) { return .loginFailed(reason) }
        return outcome
    }
}
