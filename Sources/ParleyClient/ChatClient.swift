import Foundation
import IRCWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Where to connect.
public struct ServerAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var tls: Bool
    /// Accept any certificate (self-signed test servers); never the default.
    public var tlsVerify: Bool

    public init(host: String, port: Int, tls: Bool = false, tlsVerify: Bool = true) {
        self.host = host
        self.port = port
        self.tls = tls
        self.tlsVerify = tlsVerify
    }

    /// Parses `HOST`, `HOST:PORT`, `[IPV6]:PORT` or a bare IPv6 address.
    public init?(parsing text: String, defaultPort: Int, tls: Bool = false) {
        var host = text
        var port = defaultPort
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let value = Int(rest.dropFirst()) else { return nil }
                port = value
            }
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            host = String(text[..<colon])
            guard let value = Int(text[text.index(after: colon)...]) else { return nil }
            port = value
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        // A bare address with colons must be IPv6 (hex digits, colons, maybe a dotted tail).
        if host.contains(":"), !host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) { return nil }
        self.init(host: host, port: port, tls: tls)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// A connection to a Parley (or any IRC) server for one account: logs in, reports events,
/// sends what the user asks, and reconnects with backoff when the connection drops, sending
/// again what the server had not confirmed (without duplicates, see `ClientSession`).
///
/// Ownership rule: the protocol state (`ClientSession`) and the current channel live in one
/// lock; events leave through an `AsyncStream` in the order they were decided.
public final class ChatClient: Sendable {
    private struct State {
        var session: ClientSession
        var channel: Channel?
        var stopped = false
        var everConnected = false
        var loginFailed = false
        /// The pause before the next reconnection attempt: `stop()` cuts it short.
        var reconnectPause: Task<Void, Never>?
    }

    public let address: ServerAddress
    public let events: AsyncStream<ClientEvent>
    private let continuation: AsyncStream<ClientEvent>.Continuation
    private let state: NIOLockedValueBox<State>
    private let group: EventLoopGroup
    private let firstReconnectDelay: Double

    /// `firstReconnectDelay` (seconds) doubles after each failed attempt, up to 15 s.
    public init(address: ServerAddress, login: LoginSettings, group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                firstReconnectDelay: Double = 0.5) {
        self.address = address
        self.group = group
        self.firstReconnectDelay = firstReconnectDelay
        self.state = NIOLockedValueBox(State(session: ClientSession(login: login)))
        (events, continuation) = AsyncStream.makeStream(of: ClientEvent.self, bufferingPolicy: .unbounded)
    }

    public var session: ClientSession { state.withLockedValue { $0.session } }

    /// Connects and keeps the connection up until `stop()` or a refused login. The first
    /// connection's failure is thrown (the user should hear about a wrong host at once);
    /// later drops are retried with backoff.
    public func run() async throws {
        var delay = firstReconnectDelay
        while true {
            do {
                let channel = try await connect()
                delay = firstReconnectDelay
                try await channel.closeFuture.get()
            } catch {
                let first = state.withLockedValue { !$0.everConnected }
                if first {
                    continuation.finish()
                    throw error
                }
            }
            let (stopped, refused) = state.withLockedValue { ($0.stopped, $0.loginFailed) }
            if stopped || refused {
                continuation.finish()
                return
            }
            var disconnected = ClientEvent(.disconnected)
            disconnected.reason = "connection lost"
            continuation.yield(disconnected)
            var reconnecting = ClientEvent(.reconnecting)
            reconnecting.delay = delay
            continuation.yield(reconnecting)
            let pause = Task { [delay] in _ = try? await Task.sleep(for: .milliseconds(Int(delay * 1000))) }
            let stoppedMeanwhile = state.withLockedValue { state in
                if !state.stopped { state.reconnectPause = pause }
                return state.stopped
            }
            if stoppedMeanwhile {
                pause.cancel()
                continuation.finish()
                return
            }
            await pause.value
            let stoppedWhilePausing = state.withLockedValue { state in
                state.reconnectPause = nil
                return state.stopped
            }
            if stoppedWhilePausing {
                continuation.finish()
                return
            }
            delay = max(firstReconnectDelay, min(delay * 2, 15))
        }
    }

    private func connect() async throws -> Channel {
        let address = self.address
        let sslContext: NIOSSLContext? = try address.tls ? {
            var configuration = TLSConfiguration.makeClientConfiguration()
            if !address.tlsVerify { configuration.certificateVerification = .none }
            return try NIOSSLContext(configuration: configuration)
        }() : nil
        let reader = LineReader(client: self)
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(.seconds(10))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        let serverName = address.host.contains(":") || address.host.allSatisfy({ $0.isNumber || $0 == "." }) ? nil : address.host
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(IRCLineDecoder()))
                    try channel.pipeline.syncOperations.addHandler(reader)
                }
            }
            .connect(host: address.host, port: address.port).get()
        let opening = state.withLockedValue { state -> [IRCMessage]? in
            // Stopped while connecting: this connection is not wanted (and `stop()` could not see it).
            if state.stopped { return nil }
            state.channel = channel
            state.everConnected = true
            return state.session.openingLines()
        }
        guard let opening else {
            try? await channel.close().get()
            return channel
        }
        write(opening, to: channel)
        return channel
    }

    fileprivate func received(_ line: ByteBuffer) {
        guard let message = try? IRCMessage(parsing: line) else { return }
        let (lines, events, channel, refused) = state.withLockedValue { state in
            let (lines, events) = state.session.receive(message)
            if events.contains(where: { $0.type == .loginFailed }) { state.loginFailed = true }
            return (lines, events, state.channel, state.loginFailed)
        }
        if let channel { write(lines, to: channel) }
        for event in events { continuation.yield(event) }
        if refused { channel?.close(promise: nil) }
    }

    private func write(_ lines: [IRCMessage], to channel: Channel) {
        guard !lines.isEmpty else { return }
        var buffer = channel.allocator.buffer(capacity: 256 * lines.count)
        for line in lines { line.write(to: &buffer) }
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// Runs a change of the protocol state and sends the lines it produced (if connected; a
    /// message sent while disconnected stays pending and goes out after the reconnect).
    @discardableResult
    public func perform<Result: Sendable>(_ body: @Sendable (inout ClientSession) -> (lines: [IRCMessage], events: [ClientEvent], result: Result)) -> Result {
        let (lines, events, channel, result) = state.withLockedValue { state in
            let (lines, events, result) = body(&state.session)
            return (lines, events, state.channel, result)
        }
        if let channel, channel.isActive { write(lines, to: channel) }
        for event in events { continuation.yield(event) }
        return result
    }

    public func send(_ text: String, to target: String) {
        perform { session in
            let (lines, events) = session.send(text, to: target)
            return (lines, events, ())
        }
    }

    public func sendLine(_ build: @Sendable (inout ClientSession) -> IRCMessage?) {
        perform { session in
            (build(&session).map { [$0] } ?? [], [], ())
        }
    }

    /// Says goodbye and stops reconnecting.
    public func stop(reason: String = "Leaving") async {
        let (channel, pause) = state.withLockedValue { state -> (Channel?, Task<Void, Never>?) in
            state.stopped = true
            return (state.channel, state.reconnectPause)
        }
        pause?.cancel()
        guard let channel else {
            continuation.finish()
            return
        }
        if channel.isActive {
            var buffer = channel.allocator.buffer(capacity: 64)
            IRCMessage(command: "QUIT", parameters: [reason]).write(to: &buffer)
            try? await channel.writeAndFlush(buffer).get()
        }
        try? await channel.close().get()
    }

    /// For tests: drops the connection as a network failure would (the client reconnects).
    public func dropConnection() {
        let channel = state.withLockedValue { $0.channel }
        channel?.close(promise: nil)
    }

    fileprivate func closed() {
        state.withLockedValue { $0.channel = nil }
    }
}

private final class LineReader: ChannelInboundHandler, Sendable {
    typealias InboundIn = IRCLineFrame
    let client: ChatClient

    init(client: ChatClient) {
        self.client = client
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .line(let bytes) = unwrapInboundIn(data) { client.received(bytes) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        client.closed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
