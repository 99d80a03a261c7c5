import Foundation
import IRCWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// A raw IRC client over a real socket: sends lines, and waits for received lines that match.
/// Every received line is kept in order; `expect` takes out the first matching line and leaves
/// the others for later expectations (`drain` and `settle` show what is left).
final class TestClient: Sendable {
    struct Timeout: Error, CustomStringConvertible {
        let waitingFor: String
        let received: [String]
        var description: String { "timed out waiting for \(waitingFor); unmatched lines: \(received)" }
    }

    fileprivate struct State {
        var lines: [String] = []
        var closed = false
        /// Actions run as soon as a matching line is read, on the client's event loop.
        var reactions: [(matches: @Sendable (String) -> Bool, action: @Sendable () -> Void)] = []
    }

    private let state: NIOLockedValueBox<State>
    let channel: Channel

    private init(channel: Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
    }

    static func connect(
        host: String = "127.0.0.1", port: Int, tls: NIOSSLContext? = nil, serverHostname: String? = nil,
        on group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> TestClient {
        // The collector owns the line store from the start: a server may answer (or close)
        // before `connect` returns.
        let state = NIOLockedValueBox(State())
        let collector = LineCollector(state: state)
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: serverHostname))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(IRCLineDecoder()))
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: host, port: port).get()
        return TestClient(channel: channel, state: state)
    }

    /// Connects and registers with NICK/USER (and optional CAPs and PASS); waits for 001.
    static func registered(
        _ nick: String, port: Int, host: String = "127.0.0.1", caps: [String] = [], password: String? = nil
    ) async throws -> TestClient {
        let client = try await connect(host: host, port: port)
        try await client.register(nick, caps: caps, password: password)
        return client
    }

    func register(_ nick: String, caps: [String] = [], password: String? = nil) async throws {
        if !caps.isEmpty {
            send("CAP LS 302")
            send("CAP REQ :\(caps.joined(separator: " "))")
            try await expect { $0.command == "CAP" && $0.parameters.dropFirst().first == "ACK" }
        }
        if let password { send("PASS :\(nick):\(password)") }
        send("NICK \(nick)")
        send("USER \(nick) 0 * :\(nick) Tester")
        if !caps.isEmpty { send("CAP END") }
        try await expect(numeric: "001")
        // The burst ends with the user mode; what came before it is not what tests look for,
        // what comes after it (groups joined at login) is.
        try await skip(through: { $0.command == "MODE" }, "the welcome burst")
    }

    /// Waits for a line satisfying `predicate` and drops it and every line before it.
    func skip(through predicate: @escaping @Sendable (IRCMessage) -> Bool, _ description: String, timeout: Duration = .seconds(5)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            let found = state.withLockedValue { state -> Bool in
                guard let index = state.lines.firstIndex(where: { (try? IRCMessage(parsing: $0)).map(predicate) ?? false }) else { return false }
                state.lines.removeFirst(index + 1)
                return true
            }
            if found { return }
            if ContinuousClock.now >= deadline || isClosed {
                throw Timeout(waitingFor: description, received: state.withLockedValue { $0.lines })
            }
            try await waitForActivity(until: deadline)
        }
    }

    /// Waits for a line satisfying `predicate`; returns it and every line before it, in the
    /// order received, and takes them out (for asserting the order of replies).
    func lines(through predicate: @escaping @Sendable (IRCMessage) -> Bool, _ description: String, timeout: Duration = .seconds(5)) async throws -> [IRCMessage] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let found = state.withLockedValue { state -> [String]? in
                guard let index = state.lines.firstIndex(where: { (try? IRCMessage(parsing: $0)).map(predicate) ?? false }) else { return nil }
                defer { state.lines.removeFirst(index + 1) }
                return Array(state.lines[...index])
            }
            if let found { return found.compactMap { try? IRCMessage(parsing: $0) } }
            if ContinuousClock.now >= deadline || isClosed {
                throw Timeout(waitingFor: description, received: state.withLockedValue { $0.lines })
            }
            try await waitForActivity(until: deadline)
        }
    }

    func send(_ line: String) {
        var buffer = channel.allocator.buffer(capacity: line.utf8.count + 2)
        buffer.writeString(line)
        buffer.writeString("\r\n")
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// Runs `action` once, the moment a line for which `matches` holds is read (no polling
    /// delay: for tests of what a client sees when it answers at once).
    func whenReceived(_ matches: @escaping @Sendable (String) -> Bool, _ action: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.reactions.append((matches, action)) }
    }

    func sendRaw(_ bytes: [UInt8]) {
        channel.writeAndFlush(channel.allocator.buffer(bytes: bytes), promise: nil)
    }

    var isClosed: Bool { state.withLockedValue { $0.closed } }

    /// Waits for a line satisfying `predicate` and takes it out of the received lines.
    @discardableResult
    func expect(timeout: Duration = .seconds(5), _ description: String = "a matching line", _ predicate: @escaping @Sendable (IRCMessage) -> Bool) async throws -> IRCMessage {
        let deadline = ContinuousClock.now + timeout
        while true {
            let found: IRCMessage? = state.withLockedValue { state in
                for (index, line) in state.lines.enumerated() {
                    if let message = try? IRCMessage(parsing: line), predicate(message) {
                        state.lines.remove(at: index)
                        return message
                    }
                }
                return nil
            }
            if let found { return found }
            if ContinuousClock.now >= deadline || isClosed {
                throw Timeout(waitingFor: description, received: state.withLockedValue { $0.lines })
            }
            try await waitForActivity(until: deadline)
        }
    }

    @discardableResult
    func expect(numeric: String, timeout: Duration = .seconds(5)) async throws -> IRCMessage {
        try await expect(timeout: timeout, "numeric \(numeric)") { $0.command == numeric }
    }

    @discardableResult
    func expect(command: String, timeout: Duration = .seconds(5)) async throws -> IRCMessage {
        try await expect(timeout: timeout, "command \(command)") { $0.command == command }
    }

    /// Waits until the server closes the connection; returns the lines received meanwhile.
    func expectClosed(timeout: Duration = .seconds(5)) async throws -> [String] {
        let deadline = ContinuousClock.now + timeout
        while !isClosed {
            if ContinuousClock.now >= deadline { throw Timeout(waitingFor: "close", received: drain()) }
            try await waitForActivity(until: deadline)
        }
        return drain()
    }

    /// Returns and forgets every line received so far.
    func drain() -> [String] {
        state.withLockedValue { state in
            defer { state.lines.removeAll() }
            return state.lines
        }
    }

    /// Every line the server sent this connection before it answered a PING sent now, without
    /// the PONG (for asserting that nothing else came). The server answers a connection's
    /// commands in order, after the lines it decided for that connection earlier, including a
    /// login's replay and a slow command's replies; what another connection's command causes
    /// is covered only once that command has been answered.
    func settle(timeout: Duration = .seconds(10)) async throws -> [String] {
        let token = "settle-\(UInt32.random(in: 0...UInt32.max))"
        send("PING :\(token)")
        let deadline = ContinuousClock.now + timeout
        while true {
            let found = state.withLockedValue { state -> [String]? in
                guard let pong = state.lines.firstIndex(where: { line in
                    (try? IRCMessage(parsing: line)).map { $0.command == "PONG" && $0.parameters.last == token } ?? false
                }) else { return nil }
                defer { state.lines.removeFirst(pong + 1) }
                return Array(state.lines[..<pong])
            }
            if let found { return found }
            if ContinuousClock.now >= deadline || isClosed {
                throw Timeout(waitingFor: "PONG \(token)", received: state.withLockedValue { $0.lines })
            }
            try await waitForActivity(until: deadline)
        }
    }

    /// Short polling keeps this simple and free of lost wake-ups; lines arrive within microseconds.
    private func waitForActivity(until deadline: ContinuousClock.Instant) async throws {
        try await Task.sleep(for: .milliseconds(2))
    }

    func close() async {
        try? await channel.close()
    }
}

private final class LineCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = IRCLineFrame
    private let state: NIOLockedValueBox<TestClient.State>

    init(state: NIOLockedValueBox<TestClient.State>) {
        self.state = state
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .line(var bytes) = unwrapInboundIn(data) else { return }
        let line = bytes.readString(length: bytes.readableBytes) ?? ""
        let action = state.withLockedValue { state -> (@Sendable () -> Void)? in
            state.lines.append(line)
            guard let index = state.reactions.firstIndex(where: { $0.matches(line) }) else { return nil }
            return state.reactions.remove(at: index).action
        }
        action?()
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.withLockedValue { $0.closed = true }
        context.fireChannelInactive()
    }
}
