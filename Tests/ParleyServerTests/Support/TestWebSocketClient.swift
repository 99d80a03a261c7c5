import Foundation
import IRCWire
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// A WebSocket IRC client over a real socket, built from NIO's client upgrader and frame codec:
/// sends one frame per line and keeps every frame received, in order.
final class TestWebSocketClient: Sendable {
    struct Frame: Sendable {
        var opcode: WebSocketOpcode
        var bytes: [UInt8]
        var text: String { String(decoding: bytes, as: UTF8.self) }
    }

    struct State {
        var frames: [Frame] = []
        var closed = false
        var subprotocol: String?
        var upgraded = false
    }

    let channel: Channel
    private let state: NIOLockedValueBox<State>

    private init(channel: Channel, state: NIOLockedValueBox<State>) {
        self.channel = channel
        self.state = state
    }

    var subprotocol: String? { state.withLockedValue { $0.subprotocol } }

    static func connect(host: String = "127.0.0.1", port: Int, protocols: [String] = [], origin: String? = nil,
                        path: String = "/irc", extraHeaders: [(String, String)] = []) async throws -> TestWebSocketClient {
        let state = NIOLockedValueBox(State())
        let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 20, automaticErrorHandling: false) { channel, response in
            state.withLockedValue {
                $0.subprotocol = response.headers.first(name: "Sec-WebSocket-Protocol")
                $0.upgraded = true
            }
            return channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(FrameCollector(state: state)) }
        }
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                }
            }
            .connect(host: host, port: port).get()
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "\(host.contains(":") ? "[\(host)]" : host):\(port)")
        headers.add(name: "Content-Length", value: "0")
        if !protocols.isEmpty { headers.add(name: "Sec-WebSocket-Protocol", value: protocols.joined(separator: ", ")) }
        if let origin { headers.add(name: "Origin", value: origin) }
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        try await channel.writeAndFlush(HTTPClientRequestPart.end(nil)).get()
        let client = TestWebSocketClient(channel: channel, state: state)
        let deadline = ContinuousClock.now + .seconds(5)
        while !state.withLockedValue({ $0.upgraded }) {
            if ContinuousClock.now >= deadline { throw TestClient.Timeout(waitingFor: "the WebSocket upgrade", received: []) }
            try await Task.sleep(for: .milliseconds(2))
        }
        return client
    }

    /// One frame (masked, as a client's must be).
    func send(_ text: String, opcode: WebSocketOpcode? = nil) {
        sendBytes(Array(text.utf8), opcode: opcode ?? (subprotocol == "binary.ircv3.net" ? .binary : .text))
    }

    func sendBytes(_ bytes: [UInt8], opcode: WebSocketOpcode, fin: Bool = true) {
        let frame = WebSocketFrame(fin: fin, opcode: opcode, maskKey: WebSocketMaskingKey.random(), data: channel.allocator.buffer(bytes: bytes))
        channel.writeAndFlush(frame, promise: nil)
    }

    /// Waits for a frame whose text parses as an IRC line satisfying `predicate`, takes it out.
    @discardableResult
    func expect(_ description: String = "a matching line", _ predicate: @escaping @Sendable (IRCMessage) -> Bool) async throws -> (Frame, IRCMessage) {
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            let found: (Frame, IRCMessage)? = state.withLockedValue { state in
                for (index, frame) in state.frames.enumerated() {
                    if let message = try? IRCMessage(parsing: frame.text), predicate(message) {
                        state.frames.remove(at: index)
                        return (frame, message)
                    }
                }
                return nil
            }
            if let found { return found }
            if ContinuousClock.now >= deadline || state.withLockedValue({ $0.closed }) {
                // The last few frames only: a flood test's frames would drown the report.
                throw TestClient.Timeout(waitingFor: description, received: state.withLockedValue { $0.frames.suffix(5).map(\.text) })
            }
            try await Task.sleep(for: .milliseconds(2))
        }
    }

    /// Every frame received so far.
    func frames() -> [Frame] { state.withLockedValue { $0.frames } }

    func discardFrames() { state.withLockedValue { $0.frames.removeAll() } }

    func close() async {
        try? await channel.close()
    }
}

private final class FrameCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    private let state: NIOLockedValueBox<TestWebSocketClient.State>

    init(state: NIOLockedValueBox<TestWebSocketClient.State>) {
        self.state = state
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        let bytes = Array(frame.unmaskedData.readableBytesView)
        state.withLockedValue { $0.frames.append(.init(opcode: frame.opcode, bytes: bytes)) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state.withLockedValue { $0.closed = true }
        context.fireChannelInactive()
    }
}
