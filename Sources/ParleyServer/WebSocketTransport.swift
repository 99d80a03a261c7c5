import NIOCore
import NIOHTTP1
import NIOWebSocket

/// IRCv3 WebSocket (ircv3.net/specs/extensions/websocket): each WebSocket message carries one IRC
/// line without CR LF. This adapter sits between NIO's frame codec and the ordinary
/// `IRCConnectionHandler`, so a WebSocket connection is an ordinary session: the same framing
/// limits, flood control, registration and commands as TCP.
///
/// Inbound, a message becomes a line ending in CR LF; outbound, each line the server writes (a
/// buffer may hold several) becomes one frame: binary frames with `binary.ircv3.net`, text
/// frames otherwise. Text frames carry UTF-8: invalid sequences a client sends in one are
/// replaced with U+FFFD (browsers cannot send anything else; the binary subprotocol keeps the
/// bytes, and the usual `INVALID_UTF8` reply applies).
final class IRCWebSocketAdapter: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private let subprotocol: WebSocketSubprotocol?
    /// A message longer than this is cut here (still over the line limit, so it is answered
    /// with 417 like a long TCP line) instead of being buffered whole.
    private let maximumMessageBytes: Int
    /// A message arriving in several frames, until its final one, and whether it is text.
    private var fragments: ByteBuffer?
    private var fragmentIsText = false
    private var closing = false

    init(subprotocol: WebSocketSubprotocol?, maximumLineBytes: Int) {
        self.subprotocol = subprotocol
        self.maximumMessageBytes = maximumLineBytes + 1
    }

    private var sendsBinary: Bool { subprotocol == .binary }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            guard fragments == nil else { return protocolError(context, "a new message began before the last one ended") }
            var payload = frame.unmaskedData
            if frame.fin {
                deliver(&payload, text: frame.opcode == .text, context: context)
            } else {
                fragments = payload
                fragmentIsText = frame.opcode == .text
            }
        case .continuation:
            guard var message = fragments else { return protocolError(context, "a continuation without a message") }
            var payload = frame.unmaskedData
            if message.readableBytes < maximumMessageBytes {
                message.writeBuffer(&payload)
            }
            if frame.fin {
                fragments = nil
                deliver(&message, text: fragmentIsText, context: context)
            } else {
                fragments = message
            }
        case .ping:
            var pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            pong.rsv1 = false
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            close(context, code: .normalClosure)
        default:
            break
        }
    }

    /// Hands one message on as CR LF terminated lines (a client that puts several lines, or a
    /// trailing CR LF, in one message is understood rather than refused).
    private func deliver(_ payload: inout ByteBuffer, text: Bool, context: ChannelHandlerContext) {
        if payload.readableBytes > maximumMessageBytes {
            payload.moveWriterIndex(to: payload.readerIndex + maximumMessageBytes)
        }
        var bytes = payload
        if text && !Self.isValidUTF8(payload.readableBytesView) {
            bytes = context.channel.allocator.buffer(string: String(decoding: payload.readableBytesView, as: UTF8.self))
        }
        var start = bytes.readerIndex
        let end = bytes.writerIndex
        var index = start
        while index <= end {
            let atEnd = index == end
            let byte = atEnd ? 0 : bytes.getInteger(at: index, as: UInt8.self) ?? 0
            if atEnd || byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n") {
                if index > start, var line = bytes.getSlice(at: start, length: index - start) {
                    var framed = context.channel.allocator.buffer(capacity: line.readableBytes + 2)
                    framed.writeBuffer(&line)
                    framed.writeStaticString("\r\n")
                    context.fireChannelRead(wrapInboundOut(framed))
                }
                start = index + 1
            }
            index += 1
        }
    }

    private static func isValidUTF8<Bytes: Collection>(_ bytes: Bytes) -> Bool where Bytes.Element == UInt8 {
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var buffer = unwrapOutboundIn(data)
        var lines: [ByteBuffer] = []
        while let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let length = newline - buffer.readerIndex
            guard var line = buffer.readSlice(length: length) else { break }
            buffer.moveReaderIndex(forwardBy: 1)
            if line.readableBytes > 0, line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r") {
                line.moveWriterIndex(to: line.writerIndex - 1)
            }
            lines.append(line)
        }
        if buffer.readableBytes > 0 { lines.append(buffer) }
        guard let last = lines.popLast() else {
            promise?.succeed()
            return
        }
        let opcode: WebSocketOpcode = sendsBinary ? .binary : .text
        for line in lines {
            context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: opcode, data: line)), promise: nil)
        }
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: opcode, data: last)), promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // A server-side close (QUIT, ERROR, shutdown) says goodbye in WebSocket terms first.
        guard mode == .all, !closing else { return context.close(mode: mode, promise: promise) }
        closing = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: .normalClosure)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)), promise: nil)
        context.close(mode: mode, promise: promise)
    }

    private func protocolError(_ context: ChannelHandlerContext, _ reason: String) {
        close(context, code: .protocolError)
    }

    private func close(_ context: ChannelHandlerContext, code: WebSocketErrorCode) {
        guard !closing else { return }
        closing = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: code)
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// The IRCv3 WebSocket subprotocols.
enum WebSocketSubprotocol: String, Sendable, CaseIterable {
    case binary = "binary.ircv3.net"
    case text = "text.ircv3.net"

    /// The first protocol in the client's order of preference that Parley speaks; nil when the
    /// client offered none of them (then text frames, and no protocol in the response).
    static func choose(from headers: HTTPHeaders) -> WebSocketSubprotocol? {
        let offered = headers[canonicalForm: "Sec-WebSocket-Protocol"].map { $0.trimmingSpaces() }
        return offered.lazy.compactMap { WebSocketSubprotocol(rawValue: String($0)) }.first
    }
}

/// Which pages may open a WebSocket: the page's own origin (the same host as the request, in
/// the listener's scheme), origins the operator lists, and clients that send no Origin at all
/// (not a browser: nothing to protect).
struct WebSocketOriginPolicy: Sendable {
    let allowedOrigins: Set<String>
    let secure: Bool
    /// Reverse proxies whose `X-Forwarded-For` is believed (see `ForwardedFor`).
    var trustedProxies: Set<String> = []

    /// Where a WebSocket upgrade is accepted: the web client's `/irc`, and `/` for clients given only `ws://host:port`.
    static let upgradePaths: Set<String> = ["/irc", "/"]

    func allows(_ head: HTTPRequestHead) -> Bool {
        guard let origin = head.headers.first(name: "Origin") else { return true }
        if allowedOrigins.contains(origin) { return true }
        guard let host = head.headers.first(name: "Host") else { return false }
        return origin.lowercased() == (secure ? "https://" : "http://") + host.lowercased()
    }
}

/// `X-Forwarded-For` from reverse proxies the operator trusts (`web.trustedProxies`): the
/// client's address is the rightmost one not itself a trusted proxy. From anyone else the header
/// is ignored, so a client cannot choose the address its per-address limits count against.
enum ForwardedFor {
    static func clientAddress(peer: String, headers: HTTPHeaders, trustedProxies: Set<String>) -> String {
        guard trustedProxies.contains(peer) else { return peer }
        let hops = headers[canonicalForm: "X-Forwarded-For"].map { String($0.trimmingSpaces()) }
        for hop in hops.reversed() where !trustedProxies.contains(hop) {
            // Only a well-formed address is believed; anything else leaves the proxy's own.
            guard let address = try? SocketAddress(ipAddress: hop, port: 0), let text = address.ipAddress else { return peer }
            return text.hasPrefix("::ffff:") && text.contains(".") ? String(text.dropFirst(7)) : text
        }
        return peer
    }
}

private extension Substring {
    func trimmingSpaces() -> Substring {
        var text = self
        while text.first == " " { text = text.dropFirst() }
        while text.last == " " { text = text.dropLast() }
        return text
    }
}
