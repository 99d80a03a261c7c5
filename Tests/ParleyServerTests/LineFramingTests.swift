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
    /// A connection handler on an EmbeddedChannel, in front of a real domain and SQLite store.
    final class Connection {
        let channel = EmbeddedChannel()
        let store: SQLiteChatStore
        let directory: URL

        init() async throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("parley-framing-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            var configuration = TestServer.makeConfiguration()
            configuration.dataDirectory = directory.path
            // Nothing here is a flood: every command is handled as soon as its line is complete.
            configuration.limits.floodCommandsPerSecond = 0
            var logger = Logger(label: "parley-framing-test")
            logger.logLevel = .warning
            store = try SQLiteChatStore(path: directory.appendingPathComponent("parley.sqlite").path)
            let server = try await ParleyServer(configuration: configuration, store: store, logger: logger)
            let handler = IRCConnectionHandler(host: server.host, isSecure: false,
                                               maximumLineBytes: configuration.limits.maxLineBytes, logger: logger)
            try channel.pipeline.syncOperations.addHandler(handler)
            try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6667)).get()
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

        func close() async throws {
            _ = try? channel.finish()
            try await store.close()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    static let registration = Array("NICK slow\r\nUSER slow 0 * :Zoë Slow\r\n".utf8)

    @Test func linesSentAByteAtATimeAreRegisteredAndAnswered() async throws {
        let connection = try await Connection()
        try connection.read((Self.registration + Array("PING :één\r\n".utf8)).map { [$0] })
        let lines = try connection.written()
        #expect(lines.contains { $0.hasPrefix(":parley.local 001 slow ") }, "\(lines)")
        #expect(lines.last == ":parley.local PONG parley.local :één", "a character split between reads arrives whole")
        #expect(connection.channel.isActive, "no line was refused as unterminated or invalid")
        try await connection.close()
    }

    @Test func oddSplitsAndSeveralLinesPerReadAreFramedTheSame() async throws {
        let connection = try await Connection()
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
        try await connection.close()
    }

    @Test func anUnterminatedLineIsHeldNotRunUntilItsEndArrives() async throws {
        let connection = try await Connection()
        try connection.read([Self.registration])
        _ = try connection.written()
        try connection.read([Array("PING :not yet".utf8)])
        #expect(try connection.written().isEmpty, "half a command does not run")
        try connection.read([Array("\r\n".utf8)])
        #expect(try connection.written() == [":parley.local PONG parley.local :not yet"])
        try await connection.close()
    }
}
