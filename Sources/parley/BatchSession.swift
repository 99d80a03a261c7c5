import Foundation
import NIOConcurrencyHelpers
import ParleyClient

/// `parley --batch`: commands from standard input, one JSON event per line on standard output.
/// Messages of the conversation chosen with /query are marked read as they arrive.
struct BatchSession {
    let address: ServerAddress
    let login: LoginSettings

    func run() async -> Int32 {
        let client = ChatClient(address: address, login: login)
        let interpreter = NIOLockedValueBox(CommandInterpreter())
        let status = NIOLockedValueBox<Int32>(0)
        let output = NIOLockedValueBox(())
        @Sendable func emit(_ event: ClientEvent) {
            output.withLockedValue { _ in FileHandle.standardOutput.write(Data((event.jsonLine + "\n").utf8)) }
        }

        let events = Task {
            for await event in client.events {
                emit(event)
                if event.type == .loginFailed { status.withLockedValue { $0 = 1 } }
                if event.type == .message, let conversation = event.conversation, let time = event.time,
                   interpreter.withLockedValue({ $0.conversation?.lowercased() == conversation.lowercased() }) {
                    client.sendLine { $0.markRead(conversation, time: time) }
                }
            }
        }
        let input = Task.detached {
            while let line = readLine(strippingNewline: true) {
                let actions = interpreter.withLockedValue { $0.interpret(line) }
                if let reason = perform(actions, on: client, report: emit) {
                    await client.stop(reason: reason)
                    return
                }
            }
            // End of input: let the login finish and our messages be confirmed first, so a
            // script that pipes in a few commands sees their outcome.
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                let session = client.session
                let settled = session.isRegistered && !session.outgoing.values.contains { $0.state == .pending }
                if settled || status.withLockedValue({ $0 }) != 0 { break }
                try? await Task.sleep(for: .milliseconds(50))
            }
            await client.stop(reason: "End of input")
        }
        do {
            try await client.run()
        } catch {
            emit(.error(describe(connectError: error, address: address), reason: "CONNECT_FAILED"))
            input.cancel()
            return 2
        }
        _ = await events.value
        input.cancel()
        return status.withLockedValue { $0 }
    }
}
