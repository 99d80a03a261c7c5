import Foundation
import IRCWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOWebSocket
import Testing

/// IRCv3 WebSocket on a web listener, over real loopback sockets.
@Suite("IRCv3 WebSocket")
struct WebSocketTests {
    /// A server with its usual IRC listeners and a web listener (index 2).
    static func makeServer(_ configure: @escaping (inout ServerConfigurationEdit) -> Void = { _ in }) async throws -> TestServer {
        try await TestServer { configuration in
            configuration.listeners.append(.init(address: "127.0.0.1", port: 0, http: true))
            var edit = ServerConfigurationEdit(allowedOrigins: [])
            configure(&edit)
            configuration.web.allowedOrigins = edit.allowedOrigins
            configuration.web.trustedProxies = edit.trustedProxies
            if let limit = edit.maxConnectionsPerAddress { configuration.limits.maxConnectionsPerAddress = limit }
        }
    }

    struct ServerConfigurationEdit {
        var allowedOrigins: [String]
        var trustedProxies: [String] = []
        var maxConnectionsPerAddress: Int?
    }

    static func register(_ client: TestWebSocketClient, _ nick: String) async throws {
        client.send("NICK \(nick)")
        client.send("USER \(nick) 0 * :\(nick) on the web")
        try await client.expect("001") { $0.command == "001" }
    }

    @Test func subprotocolsAreChosenInTheClientsOrderAndFramesFollowThem() async throws {
        let server = try await Self.makeServer()
        let web = server.port(2)
        let binary = try await TestWebSocketClient.connect(port: web, protocols: ["binary.ircv3.net", "text.ircv3.net"])
        #expect(binary.subprotocol == "binary.ircv3.net")
        try await Self.register(binary, "bina")
        let text = try await TestWebSocketClient.connect(port: web, protocols: ["text.ircv3.net", "binary.ircv3.net"])
        #expect(text.subprotocol == "text.ircv3.net")
        try await Self.register(text, "texta")
        let plain = try await TestWebSocketClient.connect(port: web, protocols: ["chat.example"])
        #expect(plain.subprotocol == nil, "nothing Parley speaks was offered: no protocol, text frames")
        try await Self.register(plain, "plainy")
        let bare = try await TestWebSocketClient.connect(port: web)
        #expect(bare.subprotocol == nil)
        try await Self.register(bare, "barey")

        // One line per frame, without CR LF, in the negotiated kind of frame.
        for (client, opcode) in [(binary, WebSocketOpcode.binary), (text, .text), (plain, .text), (bare, .text)] {
            client.send("PING :barrier")
            let (frame, pong) = try await client.expect("PONG") { $0.command == "PONG" }
            #expect(pong.parameters.last == "barrier")
            #expect(frame.opcode == opcode)
            #expect(!frame.bytes.contains(13) && !frame.bytes.contains(10))
            #expect(client.frames().allSatisfy { $0.opcode == opcode && !$0.bytes.contains(10) })
        }
        for client in [binary, text, plain, bare] { await client.close() }
        try await server.shutdownAndRemove()
    }

    @Test func aWebSocketSessionIsAnOrdinarySession() async throws {
        let server = try await Self.makeServer()
        let web = try await TestWebSocketClient.connect(port: server.port(2), protocols: ["text.ircv3.net"])
        try await Self.register(web, "webby")
        let tcp = try await TestClient.registered("tcpy", port: server.ipv6Port, host: "::1")
        web.send("PRIVMSG tcpy :hello from a browser")
        let received = try await tcp.expect(command: "PRIVMSG")
        #expect(received.parameters == ["tcpy", "hello from a browser"])
        #expect(received.source?.hasPrefix("webby!") == true)
        tcp.send("PRIVMSG webby :hello from a terminal")
        let (_, answer) = try await web.expect("the reply") { $0.command == "PRIVMSG" }
        #expect(answer.parameters == ["webby", "hello from a terminal"])
        // Several lines in one message, and one line in two fragments, are understood too.
        web.send("JOIN #web\r\nPRIVMSG #web :first\r\n")
        try await web.expect("JOIN") { $0.command == "JOIN" && $0.parameters.first == "#web" }
        web.sendBytes(Array("PRIVMSG tcpy :in two ".utf8), opcode: .text, fin: false)
        web.sendBytes(Array("pieces".utf8), opcode: .continuation)
        #expect(try await tcp.expect(command: "PRIVMSG").parameters.last == "in two pieces")
        // QUIT ends the session and the WebSocket.
        web.send("QUIT :bye")
        try await web.expect("ERROR") { $0.command == "ERROR" }
        await web.close()
        await tcp.close()
        try await server.shutdownAndRemove()
    }

    @Test func badInputIsAnsweredAsOnTCP() async throws {
        let server = try await Self.makeServer()
        let tcp = try await TestClient.registered("listener", port: server.ipv4Port)
        let text = try await TestWebSocketClient.connect(port: server.port(2), protocols: ["text.ircv3.net"])
        try await Self.register(text, "texty")
        let binary = try await TestWebSocketClient.connect(port: server.port(2), protocols: ["binary.ircv3.net"])
        try await Self.register(binary, "binny")

        // A line over 512 bytes: 417, and the session goes on.
        binary.send("PRIVMSG listener :" + String(repeating: "x", count: 600))
        try await binary.expect("417") { $0.command == "417" }
        // Invalid UTF-8 in a text frame is replaced; in a binary frame it is refused as on TCP.
        text.sendBytes(Array("PRIVMSG listener :caf".utf8) + [0xE9], opcode: .text)
        #expect(try await tcp.expect(command: "PRIVMSG").parameters.last == "caf\u{FFFD}")
        binary.sendBytes(Array("PRIVMSG listener :caf".utf8) + [0xE9], opcode: .binary)
        let (_, refused) = try await binary.expect("FAIL") { $0.command == "FAIL" }
        #expect(refused.parameters.prefix(2) == ["PRIVMSG", "INVALID_UTF8"])
        binary.send("PING :still here")
        try await binary.expect("PONG") { $0.command == "PONG" }
        for client in [text, binary] { await client.close() }
        await tcp.close()
        try await server.shutdownAndRemove()
    }

    @Test func pagesOfOtherOriginsAreRefused() async throws {
        let server = try await Self.makeServer { $0.allowedOrigins = ["https://chat.example.org"] }
        let port = server.port(2)
        func status(origin: String?, path: String = "/irc") async throws -> String {
            var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            if let origin { request += "Origin: \(origin)\r\n" }
            return try await RawHTTP.firstLine(of: request + "\r\n", port: port)
        }
        #expect(try await status(origin: "http://evil.example").hasPrefix("HTTP/1.1 403"))
        #expect(try await status(origin: "http://127.0.0.1:\(port)").hasPrefix("HTTP/1.1 101"), "the page's own origin")
        #expect(try await status(origin: "https://chat.example.org").hasPrefix("HTTP/1.1 101"), "a listed origin")
        #expect(try await status(origin: nil).hasPrefix("HTTP/1.1 101"), "not a browser")
        #expect(try await status(origin: nil, path: "/elsewhere").hasPrefix("HTTP/1.1 404"))
        #expect(try await status(origin: nil, path: "/").hasPrefix("HTTP/1.1 101"), "a bare ws://host:port address")
        #expect(try await status(origin: "http://evil.example", path: "/").hasPrefix("HTTP/1.1 101") == false)
        let allowed = try await TestWebSocketClient.connect(port: port, origin: "https://chat.example.org")
        try await Self.register(allowed, "listed")
        await allowed.close()
        // A client given only ws://host:port speaks IRC at `/` like the web client does at `/irc`.
        let bare = try await TestWebSocketClient.connect(port: port, path: "/")
        try await Self.register(bare, "atroot")
        bare.send("PING :root")
        try await bare.expect("PONG") { $0.command == "PONG" && $0.parameters.last == "root" }
        await bare.close()
        try await server.shutdownAndRemove()
    }
}

extension WebSocketTests {
    @Test func forwardedForIsBelievedFromTrustedProxiesOnly() async throws {
        // Behind a proxy on 127.0.0.1 that the operator trusts, with one connection per address:
        // two clients forwarded for different addresses are two addresses.
        let proxied = try await Self.makeServer {
            $0.trustedProxies = ["127.0.0.1"]
            $0.maxConnectionsPerAddress = 1
        }
        let first = try await TestWebSocketClient.connect(port: proxied.port(2), extraHeaders: [("X-Forwarded-For", "198.51.100.7")])
        try await Self.register(first, "first")
        let second = try await TestWebSocketClient.connect(port: proxied.port(2), extraHeaders: [("X-Forwarded-For", "203.0.113.9, 127.0.0.1")])
        try await Self.register(second, "second")
        first.send("WHOIS second")
        let (_, whois) = try await first.expect("311") { $0.command == "311" }
        #expect(whois.parameters[3] == "203.0.113.9", "the rightmost address that is not a trusted proxy")
        let garbage = try await TestWebSocketClient.connect(port: proxied.port(2), extraHeaders: [("X-Forwarded-For", "not-an-address")])
        garbage.send("NICK third")
        garbage.send("USER third 0 * :third")
        let (_, refused) = try await garbage.expect("the refusal") { $0.command == "ERROR" || $0.command == "001" }
        #expect(refused.command == "001", "the proxy's own address, which has no connection yet")
        for client in [first, second, garbage] { await client.close() }
        try await proxied.shutdownAndRemove()

        // Without trusted proxies the header changes nothing.
        let direct = try await Self.makeServer()
        let client = try await TestWebSocketClient.connect(port: direct.port(2), extraHeaders: [("X-Forwarded-For", "198.51.100.7")])
        try await Self.register(client, "plain")
        client.send("WHOIS plain")
        let (_, own) = try await client.expect("311") { $0.command == "311" }
        #expect(own.parameters[3] == "127.0.0.1")
        await client.close()
        try await direct.shutdownAndRemove()
    }
}

extension WebSocketTests {
    @Test func aWebSocketThatDoesNotReadIsCutOffWithoutHoldingUpOthers() async throws {
        let server = try await TestServer { configuration in
            configuration.listeners.append(.init(address: "127.0.0.1", port: 0, http: true))
            configuration.limits.sendQueueBytes = 1024 * 1024
            configuration.limits.floodCommandsPerSecond = 0
        }
        let stalled = try await TestWebSocketClient.connect(port: server.port(2))
        try await Self.register(stalled, "stalled")
        stalled.send("JOIN #busy")
        try await stalled.expect("JOIN") { $0.command == "JOIN" }
        let reader = try await TestWebSocketClient.connect(port: server.port(2), protocols: ["binary.ircv3.net"])
        try await Self.register(reader, "reader")
        reader.send("JOIN #busy")
        try await reader.expect("JOIN") { $0.command == "JOIN" }
        let sender = try await TestClient.registered("sender", port: server.ipv4Port)
        sender.send("JOIN #busy")
        try await sender.expect { $0.command == "366" }
        // The stalled client stops reading; the sender fills the channel, in steps that the
        // reader keeps up with (it has the last message of each step before the next one).
        try await stalled.channel.setOption(ChannelOptions.autoRead, value: false).get()
        let text = String(repeating: "x", count: 400)
        var quit: IRCMessage?
        for step in 0..<60 where quit == nil {
            for number in (step * 1000 + 1)...(step * 1000 + 1000) { sender.send("PRIVMSG #busy :\(number) \(text)") }
            let last = step * 1000 + 1000
            try await reader.expect("message \(last)") { $0.command == "PRIVMSG" && $0.parameters.last?.hasPrefix("\(last) ") == true }
            reader.discardFrames()
            quit = sender.drain().compactMap { try? IRCMessage(parsing: $0) }.first { $0.command == "QUIT" && $0.source?.hasPrefix("stalled!") == true }
        }
        // Past its send queue (and the kernel's buffers) the stalled WebSocket was cut off, and
        // the reader, who kept up, is still there.
        #expect(quit?.parameters.last?.contains("SendQ") == true, "the stalled client was disconnected")
        reader.send("PING :alive")
        try await reader.expect("PONG") { $0.command == "PONG" }
        for client in [stalled, reader] { await client.close() }
        await sender.close()
        try await server.shutdownAndRemove()
    }
}

/// Sends one raw HTTP request and returns the status line of the answer.
enum RawHTTP {
    static func firstLine(of request: String, port: Int) async throws -> String {
        let received = NIOLockedValueBox<[UInt8]>([])
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(ByteCollector(received: received)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(channel.allocator.buffer(string: request)).get()
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            let text = String(decoding: received.withLockedValue { $0 }, as: UTF8.self)
            if let end = text.range(of: "\r\n") {
                try? await channel.close()
                return String(text[..<end.lowerBound])
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        try? await channel.close()
        throw TestClient.Timeout(waitingFor: "an HTTP status line", received: [])
    }

    private final class ByteCollector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: NIOLockedValueBox<[UInt8]>
        init(received: NIOLockedValueBox<[UInt8]>) { self.received = received }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = Array(unwrapInboundIn(data).readableBytesView)
            received.withLockedValue { $0 += bytes }
        }
    }
}
