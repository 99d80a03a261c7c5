import Foundation
import Logging
import NIOCore
import NIOEmbedded
import ParleyCore
@testable import ParleyServer
import ParleyStoreSQLite
import Testing

/// The connection handler's line framing, fed exactly the reads a slow or odd client produces
/// (a byte at a time, CR and LF apart, a UTF-8 character split between reads, many lines in one
/// read): an EmbeddedChannel delivers each buffer as one read, which real sockets do not promise.
@Suite("Line framing in the connection handler")
struct LineFramingTests {
    /// A real domain and SQLite store, in front of which each test puts a connection handler on
    /// an EmbeddedChannel.
    final class Server {
        let server: ParleyServer
        let store: SQLiteChatStore
        let directory: URL
        let logger: Logger

        init() async throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-framing-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            var configuration = TestServer.makeConfiguration()
            configuration.dataDirectory = directory.path
            // Nothing here is a flood: every command is handled as soon as its line is complete.
            configuration.limits.floodCommandsPerSecond = 0
            var logger = Logger(label: "parley-framing-test")
            logger.logLevel = .warning
            self.logger = logger
            store = try SQLiteChatStore(path: directory.appendingPathComponent("parley.sqlite").path)
            server = try await ParleyServer(configuration: configuration, store: store, logger: logger)
        }

        /// Runs `body` against one connection. Synchronous on purpose: an embedded event loop may
        /// only be used from the thread that made it, and an `await` could resume elsewhere.
        func withConnection(_ body: (Connection) throws -> Void) throws {
            let connection = try Connection(host: server.host, maximumLineBytes: server.configuration.limits.maxLineBytes)
            defer { _ = try? connection.channel.finish() }
            try body(connection)
        }

        func close() async throws {
            try await store.close()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    struct Connection {
        let channel = EmbeddedChannel()

        init(host: ChatHost, maximumLineBytes: Int) throws {
            let handler = IRCConnectionHandler(host: host, isSecure: false, maximumLineBytes: maximumLineBytes)
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6667)).wait()
        }

        /// Each element is one read.
        func read(_ chunks: [[UInt8]]) throws {
            for chunk in chunks {
                try channel.writeInbound(channel.allocator.buffer(bytes: chunk))
            }
        }

        /// Everything the server wrote so far, as lines.
        func written() throws -> [String] {
            // The server flushes once per event loop round (a task): an embedded loop runs its
            // tasks when told to.
            channel.embeddedEventLoop.run()
            var text = ""
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
                text += String(buffer: buffer)
            }
            return text.split(separator: "\r\n").map(String.init)
        }
    }

    static let registration = Array("NICK slow\r\nUSER slow 0 * :Zoë Slow\r\n".utf8)

    @Test func linesSentAByteAtATimeAreRegisteredAndAnswered() async throws {
        let server = try await Server()
        try server.withConnection { connection in
            try connection.read((Self.registration + Array("PING :één\r\n".utf8)).map { [$0] })
            let lines = try connection.written()
            #expect(lines.contains { $0.hasPrefix(":parley.local 001 slow ") }, "\(lines)")
            #expect(lines.last == ":parley.local PONG parley.local :één", "a character split between reads arrives whole")
            #expect(connection.channel.isActive, "no line was refused as unterminated or invalid")
        }
        try await server.close()
    }

    @Test func oddSplitsAndSeveralLinesPerReadAreFramedTheSame() async throws {
        let server = try await Server()
        try server.withConnection { connection in
            let zoe = Array("Zoë".utf8)
            try connection.read([
                Array("NICK sl".utf8),
                Array("ow\r".utf8),                                          // CR in one read, LF in the next
                Array("\nUSER slow 0 * :".utf8) + zoe.prefix(3),             // ends in the middle of "ë"
                Array(zoe.dropFirst(3)) + Array(" Slow\r\nPING a\r\nPING b\r\nPI".utf8),
                Array("NG c\n".utf8),                                        // a bare LF also ends a line
                Array("WHOIS slow\r\n".utf8),
            ])
            let lines = try connection.written()
            #expect(lines.contains { $0.hasPrefix(":parley.local 001 slow ") }, "\(lines)")
            #expect(lines.filter { $0.contains(" PONG ") } == [
                ":parley.local PONG parley.local :a", ":parley.local PONG parley.local :b", ":parley.local PONG parley.local :c",
            ])
            #expect(lines.contains(":parley.local 311 slow slow ~slow 127.0.0.1 * :Zoë Slow"), "the realname survived its split: \(lines)")
            #expect(connection.channel.isActive)
        }
        try await server.close()
    }

    @Test func anUnterminatedLineIsHeldNotRunUntilItsEndArrives() async throws {
        let server = try await Server()
        try server.withConnection { connection in
            try connection.read([Self.registration])
            _ = try connection.written()
            try connection.read([Array("PING :not yet".utf8)])
            #expect(try connection.written().isEmpty, "half a command does not run")
            try connection.read([Array("\r\n".utf8)])
            #expect(try connection.written() == [":parley.local PONG parley.local :not yet"])
        }
        try await server.close()
    }
}
