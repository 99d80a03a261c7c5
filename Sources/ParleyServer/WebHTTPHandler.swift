import NIOCore
import NIOHTTP1

/// Plain HTTP requests on a web listener (everything that is not a WebSocket upgrade to `/irc`):
/// the web client's files (see `WebClientFiles`), `/metrics` where it is served, and the reason a
/// request to `/irc` was not upgraded: 403 for a page of another origin, 426 for a request that
/// is not a WebSocket upgrade. On the metrics listener (no `origins`), only `/metrics`.
final class WebHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    static let name = "parley-http"

    private let origins: WebSocketOriginPolicy?
    private let site: WebClientFiles
    private let metrics: MetricsEndpoint?
    private var request: HTTPRequestHead?

    init(origins: WebSocketOriginPolicy?, site: WebClientFiles, metrics: MetricsEndpoint?) {
        self.origins = origins
        self.site = site
        self.metrics = metrics
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
        let keepAlive = head.isKeepAlive
        switch path {
        case "/irc" where origins.map { !$0.allows(head) } ?? false:
            sendText(.forbidden, "This page's origin may not open an IRC connection here.\n", keepAlive: keepAlive, context: context)
        case "/irc" where origins != nil:
            sendText(.upgradeRequired, "Connect with a WebSocket (subprotocols binary.ircv3.net, text.ircv3.net).\n", keepAlive: keepAlive, context: context)
        case "/metrics" where metrics?.allows(head, peer: context.channel.remoteAddress) ?? false:
            guard head.method == .GET || head.method == .HEAD else {
                var headers = HTTPHeaders()
                headers.add(name: "Allow", value: "GET, HEAD")
                return sendText(.methodNotAllowed, "Only GET and HEAD.\n", headers: headers, keepAlive: keepAlive, context: context)
            }
            let body = metrics!.exposition(allocator: context.channel.allocator)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: MetricsEndpoint.contentType)
            headers.add(name: "Cache-Control", value: "no-store")
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
            send(.ok, headers: headers, body: head.method == .HEAD ? nil : body, keepAlive: keepAlive, context: context)
        default:
            guard let file = site.file(at: path) else {
                return sendText(.notFound, "Not found.\n", keepAlive: keepAlive, context: context)
            }
            guard head.method == .GET || head.method == .HEAD else {
                var headers = HTTPHeaders()
                headers.add(name: "Allow", value: "GET, HEAD")
                return sendText(.methodNotAllowed, "Only GET and HEAD.\n", headers: headers, keepAlive: keepAlive, context: context)
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: file.contentType)
            headers.add(name: "Cache-Control", value: file.cacheControl)
            headers.add(name: "ETag", value: file.etag)
            headers.add(name: "Content-Security-Policy", value: contentSecurityPolicy(for: head))
            headers.add(name: "Referrer-Policy", value: "no-referrer")
            let unchanged = head.headers[canonicalForm: "If-None-Match"].contains { $0 == file.etag || $0 == "*" }
            if unchanged {
                send(.notModified, headers: headers, body: nil, keepAlive: keepAlive, context: context)
            } else {
                headers.add(name: "Content-Length", value: "\(file.body.readableBytes)")
                send(.ok, headers: headers, body: head.method == .HEAD ? nil : file.body, keepAlive: keepAlive, context: context)
            }
        }
    }

    /// Only the page's own origin: its files, and its WebSocket at `/irc`. Browsers that predate
    /// CSP Level 3 do not count ws:/wss: as 'self', so the WebSocket form of the origin is named
    /// too (from the Host the browser asked for, when it is a plain host[:port]).
    private func contentSecurityPolicy(for head: HTTPRequestHead) -> String {
        var connect = "'self'"
        if let host = head.headers.first(name: "Host"), Self.isPlainHost(host) {
            connect += (origins?.secure == true ? " wss://" : " ws://") + host
        }
        return "default-src 'self'; connect-src \(connect); img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    }

    private static func isPlainHost(_ host: String) -> Bool {
        !host.isEmpty && host.utf8.count <= 255 && host.unicodeScalars.allSatisfy {
            ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || ".-:[]".unicodeScalars.contains($0)
        }
    }

    private func sendText(_ status: HTTPResponseStatus, _ text: String, headers extra: HTTPHeaders = [:], keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = extra
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(text.utf8.count)")
        send(status, headers: headers, body: context.channel.allocator.buffer(string: text), keepAlive: keepAlive, context: context)
    }

    private func send(_ status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer?, keepAlive: Bool, context: ChannelHandlerContext) {
        var headers = headers
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if let body {
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

/// `/metrics` on an HTTP listener: the exposition, and who may read it there.
struct MetricsEndpoint: Sendable {
    /// Prometheus text exposition format 0.0.4.
    static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    let host: ChatHost
    /// Whether peers other than the machine itself may read it.
    let allowsRemotePeers: Bool

    /// A request from the machine itself: a loopback peer that is no reverse proxy passing on
    /// someone else's request (those name the client in a forwarding header). Anything else is
    /// answered as if there were no such page.
    func allows(_ head: HTTPRequestHead, peer: SocketAddress?) -> Bool {
        if allowsRemotePeers { return true }
        for header in ["X-Forwarded-For", "Forwarded", "X-Real-IP"] where head.headers.contains(name: header) { return false }
        return Self.isLoopback(peer)
    }

    static func isLoopback(_ address: SocketAddress?) -> Bool {
        guard let text = address?.ipAddress else { return false }
        return text == "::1" || text.hasPrefix("127.") || text.hasPrefix("::ffff:127.")
    }

    func exposition(allocator: ByteBufferAllocator) -> ByteBuffer {
        allocator.buffer(bytes: host.metricsExposition())
    }
}
