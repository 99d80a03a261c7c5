import NIOCore
import NIOHTTP1

/// Plain HTTP requests on a web listener (everything that is not a WebSocket upgrade to `/irc`).
/// `/irc` without an acceptable upgrade is refused with the reason: 403 for a page of another
/// origin, 426 for a request that is not a WebSocket upgrade. Other paths are 404 until the
/// web client is served here.
final class WebHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let name = "parley-http"

    private let origins: WebSocketOriginPolicy
    private var request: HTTPRequestHead?

    init(origins: WebSocketOriginPolicy) {
        self.origins = origins
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        switch path {
        case "/irc" where !origins.allows(head):
            send(.forbidden, "This page's origin may not open an IRC connection here.\n", keepAlive: head.isKeepAlive, context: context)
        case "/irc":
            send(.upgradeRequired, "Connect with a WebSocket (subprotocols binary.ircv3.net, text.ircv3.net).\n", keepAlive: head.isKeepAlive, context: context)
        default:
            send(.notFound, "Not found.\n", keepAlive: head.isKeepAlive, context: context)
        }
    }

    private func send(_ status: HTTPResponseStatus, _ text: String, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(text.utf8.count)")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: text)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
