import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ParleyServer
import Testing

/// The web client's files as a web listener serves them, over real loopback sockets.
@Suite("Web client files")
struct WebClientTests {
    @Test func thePageIsServedAtTheRootWithItsOwnOriginOnly() async throws {
        let server = try await WebSocketTests.makeServer()
        let port = server.port(2)
        let page = try await HTTPFetch.get("/", port: port)
        #expect(page.status == 200)
        #expect(page.header("Content-Type") == "text/html; charset=utf-8")
        #expect(page.header("Cache-Control") == "no-cache", "the page is revalidated, so a new version is seen at once")
        let csp = try #require(page.header("Content-Security-Policy"))
        #expect(csp.contains("default-src 'self'"))
        #expect(csp.contains("connect-src 'self' ws://127.0.0.1:\(port);"), "the page's own WebSocket, named for older browsers")
        #expect(csp.contains("frame-ancestors 'none'"))
        #expect(!csp.contains("unsafe"))
        #expect(page.header("X-Content-Type-Options") == "nosniff")
        #expect(page.text.contains("<title>Parley</title>"))
        #expect(!page.text.contains("ASSET_VERSION"), "the page names the assets' current version")

        // Unchanged since the browser's copy: 304 without a body.
        let etag = try #require(page.header("ETag"))
        let again = try await HTTPFetch.get("/", port: port, headers: ["If-None-Match": etag])
        #expect(again.status == 304)
        #expect(again.body.isEmpty)
        #expect(try await HTTPFetch.get("/", port: port, headers: ["If-None-Match": "\"old\""]).status == 200)
        try await server.shutdownAndRemove()
    }

    @Test func assetsHaveVersionedURLsCachedForAYear() async throws {
        let server = try await WebSocketTests.makeServer()
        let port = server.port(2)
        let page = try await HTTPFetch.get("/", port: port)
        let script = try #require(Self.firstMatch(of: #"src="(/assets/[0-9a-f]{16}/app\.js)""#, in: page.text))
        let stylesheet = try #require(Self.firstMatch(of: #"href="(/assets/[0-9a-f]{16}/style\.css)""#, in: page.text))

        let js = try await HTTPFetch.get(script, port: port)
        #expect(js.status == 200)
        #expect(js.header("Content-Type") == "text/javascript; charset=utf-8", "browsers run modules only with a JavaScript type")
        #expect(js.header("Cache-Control") == "public, max-age=31536000, immutable")
        #expect(js.header("Content-Length") == "\(js.body.count)")
        #expect(js.header("Content-Security-Policy") != nil)
        #expect(!js.body.isEmpty)
        let css = try await HTTPFetch.get(stylesheet, port: port)
        #expect(css.status == 200)
        #expect(css.header("Content-Type") == "text/css; charset=utf-8")

        // HEAD: the same headers, no body.
        let head = try await HTTPFetch.get(script, method: "HEAD", port: port)
        #expect(head.status == 200)
        #expect(head.header("Content-Length") == "\(js.body.count)")
        #expect(head.body.isEmpty)
        try await server.shutdownAndRemove()
    }

    @Test func unknownPathsAndOtherMethodsAreRefused() async throws {
        let server = try await WebSocketTests.makeServer()
        let port = server.port(2)
        let missing = try await HTTPFetch.get("/assets/0000000000000000/app.js", port: port)
        #expect(missing.status == 404, "another version's asset is not this one")
        #expect(try await HTTPFetch.get("/nothing-here.html", port: port).status == 404)
        #expect(try await HTTPFetch.get("/../Package.swift", port: port).status == 404)
        let post = try await HTTPFetch.get("/", method: "POST", port: port)
        #expect(post.status == 405)
        #expect(post.header("Allow") == "GET, HEAD")
        try await server.shutdownAndRemove()
    }

    @Test func theSameListenerStillUpgradesIRC() async throws {
        let server = try await WebSocketTests.makeServer()
        let port = server.port(2)
        #expect(try await HTTPFetch.get("/", port: port).status == 200)
        let web = try await TestWebSocketClient.connect(port: port, protocols: ["text.ircv3.net"], origin: "http://127.0.0.1:\(port)")
        try await WebSocketTests.register(web, "pageuser")
        web.send("PING :upgraded")
        try await web.expect("PONG") { $0.command == "PONG" }
        await web.close()
        #expect(try await HTTPFetch.get("/irc", port: port).status == 426)
        try await server.shutdownAndRemove()
    }

    @Test func theDefaultConfigurationServesTheWebClientOn8080() {
        let web = ServerConfiguration().listeners.filter(\.http)
        #expect(web.map(\.port) == [8080, 8080])
        #expect(Set(web.map(\.address)) == ["0.0.0.0", "::"])
    }

    static func firstMatch(of pattern: String, in text: String) -> String? {
        guard let regex = try? NSRegularExpression(pattern: pattern),
              let match = regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)),
              let range = Range(match.range(at: 1), in: text) else { return nil }
        return String(text[range])
    }
}

/// One HTTP/1.1 request over a fresh loopback connection (`Connection: close`), read to the end.
enum HTTPFetch {
    struct Response {
        var status: Int
        var headers: [(String, String)]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    }

    static func get(_ path: String, method: String = "GET", port: Int, headers: [String: String] = [:]) async throws -> Response {
        let state = NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>(([], false))
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(state: state)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        var request = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        if method == "POST" { request += "Content-Length: 0\r\n" }
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        try await channel.writeAndFlush(channel.allocator.buffer(string: request + "\r\n")).get()
        // The server closes after its answer (Connection: close): wait for that condition.
        let deadline = ContinuousClock.now + .seconds(5)
        while !state.withLockedValue({ $0.closed }) {
            if ContinuousClock.now >= deadline { throw TestClient.Timeout(waitingFor: "the end of the HTTP answer", received: []) }
            try await Task.sleep(for: .milliseconds(2))
        }
        let bytes = state.withLockedValue { $0.bytes }
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = (0...(max(0, bytes.count - 4))).first(where: { Array(bytes[$0..<min(bytes.count, $0 + 4)]) == separator }) else {
            throw TestClient.Timeout(waitingFor: "HTTP headers", received: [String(decoding: bytes, as: UTF8.self)])
        }
        let lines = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let status = Int(lines[0].split(separator: " ")[1]) ?? 0
        let fields = lines.dropFirst().compactMap { line -> (String, String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        return Response(status: status, headers: fields, body: Array(bytes[(end + 4)...]))
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>
        init(state: NIOLockedValueBox<(bytes: [UInt8], closed: Bool)>) { self.state = state }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = Array(unwrapInboundIn(data).readableBytesView)
            state.withLockedValue { $0.bytes += bytes }
        }
        func channelInactive(context: ChannelHandlerContext) {
            state.withLockedValue { $0.closed = true }
        }
    }
}
