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
        client.perform { session in
            session.followsGroupRecipients = true
            session.reportsHistoryEnd = true
            session.ignoresReadMarkerRefusals = true
            return ([], [], ())
        }
        let terminal = Terminal()
        let screen = Screen(ownNick: login.account, style: .fromEnvironment)
        let loginFailure = NIOLockedValueBox<String?>(nil)
        let quitting = NIOLockedValueBox(false)

        @Sendable func carry(_ effects: [ScreenEffect]) {
            for effect in effects {
                switch effect {
                case .markRead(let conversation, let time):
                    client.sendLine { $0.markRead(conversation, time: time) }
                case .loadOlder(let conversation, let before):
                    client.sendLine { $0.history(of: conversation, before: before, limit: ChatScreen.olderPageSize) }
                }
            }
        }
        @Sendable func show(_ event: ClientEvent) {
            carry(screen.update { $0.model.apply(event) })
        }
        @Sendable func quit(_ reason: String) {
            guard quitting.withLockedValue({ flag in defer { flag = true }; return !flag }) else { return }
            Task { await client.stop(reason: reason) }
        }

        terminal.enterRawMode()
        screen.start()
        screen.update { $0.model.showInfo("Connecting to \(address) as \(login.account)…") }

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
                // What the open conversation shows counts as read (the author sees "read"
                // unless /receipts off); the screen model decides what is shown.
                carry(screen.update { state in
                    Self.learnNames(from: event, into: &state.interpreter)
                    return state.model.apply(event)
                })
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
                let (actions, effects) = screen.update { state in
                    Self.handle(state.keys.feed(Array(buffer[0..<count])), in: &state)
                }
                carry(effects)
                if let reason = perform(actions, on: client, report: show) {
                    quit(reason)
                    return
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

    /// Tab completion copies these into the input line, which is drawn as typed: a name holding
    /// control characters (no valid name does) is never offered.
    static func learnNames(from event: ClientEvent, into interpreter: inout CommandInterpreter) {
        func completable(_ name: String) -> Bool { !TerminalText.containsControlCharacters(name) }
        if let from = event.from, !from.contains("."), event.type == .message, completable(from) { interpreter.knownNicks.insert(from) }
        if let user = event.user, completable(user) { interpreter.knownNicks.insert(user) }
        if let conversation = event.conversation, conversation.hasPrefix("#"), completable(conversation) { interpreter.knownGroups.insert(conversation) }
        for member in event.members ?? [] where completable(member) { interpreter.knownNicks.insert(String(member.drop { "~@+".contains($0) })) }
    }

    /// Applies keys to the screen; returns what to send and what the screen asked for. A line
    /// that ends in `.quit` stops there.
    static func handle(_ keys: [Key], in state: inout Screen.State) -> (actions: [UserAction], effects: [ScreenEffect]) {
        var actions: [UserAction] = []
        var effects: [ScreenEffect] = []
        for key in keys {
            switch key {
            case .text(let text): state.model.input.insert(text)
            case .backspace: state.model.input.backspace()
            case .deleteForward: state.model.input.deleteForward()
            case .left: state.model.input.move(by: -1)
            case .right: state.model.input.move(by: 1)
            case .home: state.model.input.moveHome()
            case .end: state.model.input.moveEnd()
            case .killToStart: state.model.input.killToStart()
            case .tab:
                if let completed = state.interpreter.complete(state.model.input.text) { state.model.input.replace(with: completed) }
            case .pageUp: effects += state.model.scroll(pages: 1)
            case .pageDown: effects += state.model.scroll(pages: -1)
            case .conversation(let number):
                if let name = state.model.conversationName(at: number) { effects += state.open(name) }
            case .nextConversation:
                if let name = state.model.conversationName(after: 1) { effects += state.open(name) }
            case .previousConversation:
                if let name = state.model.conversationName(after: -1) { effects += state.open(name) }
            case .interrupt:
                return (actions + [.quit("Leaving")], effects)
            case .endOfInput:
                if state.model.input.isEmpty { return (actions + [.quit("Leaving")], effects) }
                state.model.input.deleteForward()
            case .enter:
                let line = state.model.input.text
                state.model.input = InputLine()
                let before = state.interpreter.conversation
                var interpreted = state.interpreter.interpret(line)
                // Sending opens the conversation, so the message and its state are in view.
                if let target = interpreted.lazy.compactMap({ action -> String? in
                    if case .send(_, let to) = action { return to } else { return nil }
                }).last {
                    effects += state.open(target)
                } else if state.interpreter.conversation != before || state.interpreter.conversation.map({ state.model.currentName != $0 }) == true {
                    effects += state.open(state.interpreter.conversation)
                }
                state.model.prompt = state.interpreter.prompt
                interpreted = interpreted.filter { action in
                    guard case .receipts(let query) = action else { return true }
                    state.model.showInfo(state.model.receipts(matching: query))
                    return false
                }
                actions += interpreted
                if interpreted.contains(where: { if case .quit = $0 { true } else { false } }) { return (actions, effects) }
            }
        }
        return (actions, effects)
    }
}
