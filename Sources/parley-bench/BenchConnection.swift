import Foundation
import IRCWire
import NIOCore
import NIOPosix

/// Nanoseconds on the monotonic clock, comparable between processes on this machine.
@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

/// Microseconds on the monotonic clock: the send time a message carries (fewer digits than
/// nanoseconds, so that the numbers fit a 32-byte payload).
@inline(__always)
func monotonicMicroseconds() -> UInt64 {
    monotonicNanoseconds() / 1000
}

/// CPU time (user + system) this process has used, in seconds.
func ownCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// How a bench client logs in.
enum Login: Equatable {
    case none
    /// `PASS account:password` (Parley) before NICK/USER.
    case pass(String)
    /// Create the account with IRCv3 REGISTER after connecting (Parley).
    case register(String)

    var isRegister: Bool {
        if case .register = self { return true }
        return false
    }
}

/// One bench client, framing and recognising lines itself on raw bytes: PRIVMSG payloads are
/// handed over as a pointer into NIO's receive buffer (no line buffers, no Strings, no parse of
/// the message), and messages are written as bytes after a prefix made once. Everything here
/// runs on the channel's event loop.
final class BenchConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    let index: Int
    let nick: String
    let login: Login
    let eventLoop: EventLoop
    /// The bench's event loop this connection belongs to (0 with one thread).
    let loopIndex: Int
    var capabilities: [String] = []
    private(set) var channel: Channel?
    private(set) var registered = false
    private(set) var closed = false
    var registeredAt: UInt64 = 0
    var connectStartedAt: UInt64 = 0
    var lastError: String?

    /// Each PRIVMSG's text (after " :"), valid only during the call, and when the read that
    /// brought it was handled (microseconds, monotonic): the lines of one read arrived together,
    /// and reading the clock per line was a twentieth of the generator's CPU in a fan-out.
    var onMessage: ((BenchConnection, UnsafeRawBufferPointer, _ readAt: UInt64) -> Void)?
    var onRegistered: ((BenchConnection) -> Void)?
    var onClosed: ((BenchConnection, String) -> Void)?
    /// Any other line (numerics, REGISTER replies, JOINs), parsed.
    var onOtherLine: ((BenchConnection, IRCMessage) -> Void)?

    // Sending: "PRIVMSG <target> :<sender> " once, then per message the sequence number, the
    // send time and padding, straight into the bytes of the next write.
    private var messagePrefix: [UInt8] = []
    private var senderDigits = 0
    private var payloadBytes = 32
    /// The next message's sequence number (= messages sent).
    private(set) var sequence: UInt64 = 0
    /// Messages sent whose delivery has not freed their window slot yet.
    var inFlight = 0
    /// Fan-out: deliveries seen per outstanding message (by sequence modulo the window), and
    /// how many free a slot.
    private var deliveries: [Int] = []
    private var deliveriesNeeded = 1
    /// Lines written since the last flush.
    private var outgoing = ByteBuffer()
    /// Whether this connection waits in its loop's flush list.
    var awaitsFlush = false
    /// The socket, when this client made it itself (`connect(ownSocket: true)`): the traffic
    /// phase reads and writes it directly (`RawTrafficLoop`), NIO no longer reading it.
    private(set) var descriptor: CInt = -1
    /// Set when `RawTrafficLoop` took the socket over: lines to send go to `outgoing` and out
    /// with its next round's writes, never through NIO (the two would interleave).
    var rawTraffic: LoopTraffic?

    /// The start of a line whose end has not arrived yet.
    private var unfinishedLine: ByteBuffer?

    init(index: Int, nick: String, login: Login, eventLoop: EventLoop, loopIndex: Int) {
        self.index = index
        self.nick = nick
        self.login = login
        self.eventLoop = eventLoop
        self.loopIndex = loopIndex
    }

    /// Connects and registers. With `ownSocket`, the socket is made and connected here (a
    /// blocking connect, instant on loopback) and handed to NIO, so that the traffic phase can
    /// take it over (`descriptor`).
    static func connect(_ connection: BenchConnection, to target: SocketAddress, source: SocketAddress?, ownSocket: Bool = false) -> EventLoopFuture<Void> {
        connection.connectStartedAt = monotonicNanoseconds()
        var bootstrap = ClientBootstrap(group: connection.eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(30))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(connection)
                }
            }
        let connected: EventLoopFuture<Channel>
        if ownSocket {
            do {
                let descriptor = try connectedSocket(to: target, from: source)
                connection.descriptor = descriptor
                connected = bootstrap.withConnectedSocket(descriptor)
            } catch {
                return connection.eventLoop.makeFailedFuture(error)
            }
        } else {
            if let source { bootstrap = bootstrap.bind(to: source) }
            connected = bootstrap.connect(to: target)
        }
        return connected.map { channel in
            connection.channel = channel
            connection.outgoing = channel.allocator.buffer(capacity: 512)
            connection.sendRegistration()
        }
    }

    private static func connectedSocket(to target: SocketAddress, from source: SocketAddress?) throws -> CInt {
        let family = target.protocol.rawValue
        let descriptor = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw BenchFailure(description: "socket: \(String(cString: strerror(errno)))") }
        if let source {
            let bound = source.withSockAddr { bind(descriptor, $0, socklen_t($1)) }
            guard bound == 0 else {
                let reason = String(cString: strerror(errno))
                Glibc.close(descriptor)
                throw BenchFailure(description: "bind to \(source): \(reason)")
            }
        }
        var result: Int32
        repeat {
            result = target.withSockAddr { Glibc.connect(descriptor, $0, socklen_t($1)) }
        } while result != 0 && errno == EINTR
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(descriptor)
            throw BenchFailure(description: "connect to \(target): \(reason)")
        }
        return descriptor
    }

    private func sendRegistration() {
        var lines: [String] = []
        let negotiates = !capabilities.isEmpty || login.isRegister
        if negotiates { lines.append("CAP LS 302") }
        if case .pass(let password) = login { lines.append("PASS :\(nick):\(password)") }
        if negotiates {
            let caps = capabilities + (login.isRegister ? ["draft/account-registration"] : [])
            lines.append("CAP REQ :\(caps.joined(separator: " "))")
        }
        lines.append("NICK \(nick)")
        lines.append("USER \(nick) 0 * :parley-bench")
        if negotiates { lines.append("CAP END") }
        if case .register(let password) = login { lines.append("REGISTER * * \(password)") }
        send(lines)
    }

    func send(_ lines: [String]) {
        if let rawTraffic {
            for line in lines {
                outgoing.writeString(line)
                outgoing.writeString("\r\n")
            }
            rawTraffic.needsFlush(self)
            return
        }
        guard let channel, !closed else { return }
        var buffer = channel.allocator.buffer(capacity: lines.reduce(0) { $0 + $1.utf8.count + 2 })
        for line in lines {
            buffer.writeString(line)
            buffer.writeString("\r\n")
        }
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// Writes without flushing (call `flush()` after a batch).
    func write(_ buffer: ByteBuffer) {
        channel?.write(buffer, promise: nil)
    }

    func flush() {
        channel?.flush()
    }

    func close() {
        channel?.close(promise: nil)
    }

    // MARK: Messages

    /// Where this connection's messages go; `deliveriesPerMessage` of them (seen on this
    /// connection's loop) free a window slot.
    func prepareMessages(to target: String, payloadBytes: Int, window: Int, deliveriesPerMessage: Int) {
        let sender = Array(String(index).utf8)
        messagePrefix = Array("PRIVMSG \(target) :".utf8) + sender + [UInt8(ascii: " ")]
        senderDigits = sender.count
        self.payloadBytes = payloadBytes
        deliveries = Array(repeating: 0, count: max(1, window))
        deliveriesNeeded = max(1, deliveriesPerMessage)
    }

    /// Adds the next message to the bytes of the next flush: "<sender> <sequence> <send time>"
    /// padded with 'x' to the payload size. A message sent in answer to a delivery carries the
    /// time of the read that brought the delivery (`sentAt`), read once for all its lines.
    func appendMessage(sentAt: UInt64 = monotonicMicroseconds()) {
        outgoing.writeBytes(messagePrefix)
        let textStart = outgoing.writerIndex - senderDigits - 1
        outgoing.writeDecimal(sequence)
        sequence += 1
        outgoing.writeInteger(UInt8(ascii: " "))
        outgoing.writeDecimal(sentAt)
        let textLength = outgoing.writerIndex - textStart
        if textLength + 1 < payloadBytes {
            outgoing.writeInteger(UInt8(ascii: " "))
            outgoing.writeRepeatingByte(UInt8(ascii: "x"), count: payloadBytes - textLength - 1)
        }
        outgoing.writeInteger(UInt16(0x0D0A))  // "\r\n"
    }

    /// A delivery of this connection's message `sequence` was seen; true when that frees its
    /// window slot (messages complete in order: every receiver gets them in order).
    func delivered(_ sequence: UInt64) -> Bool {
        let slot = Int(sequence % UInt64(deliveries.count))
        deliveries[slot] += 1
        guard deliveries[slot] >= deliveriesNeeded else { return false }
        deliveries[slot] = 0
        return true
    }

    // MARK: Receiving

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        bytes.withUnsafeReadableBytes { consume($0, readAt: monotonicMicroseconds()) }
    }

    /// Handles the bytes of one read: whole lines in place, the start of an unfinished line
    /// kept until the read that ends it.
    func consume(_ bytes: UnsafeRawBufferPointer, readAt: UInt64) {
        var rest = bytes
        if var unfinished = unfinishedLine {
            // Complete the line begun in an earlier read, then go on in place.
            guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
                unfinished.writeBytes(bytes)
                unfinishedLine = unfinished
                return
            }
            unfinishedLine = nil
            unfinished.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[..<(newline + 1)]))
            rest = UnsafeRawBufferPointer(rebasing: bytes[(newline + 1)...])
            _ = unfinished.withUnsafeReadableBytes { handleLines(in: $0, readAt: readAt) }
        }
        let consumed = handleLines(in: rest, readAt: readAt)
        if consumed < rest.count {
            var unfinished = ByteBufferAllocator().buffer(capacity: max(512, rest.count - consumed))
            unfinished.writeBytes(UnsafeRawBufferPointer(rebasing: rest[consumed...]))
            unfinishedLine = unfinished
        }
    }

    /// Writes what `outgoing` holds straight to the socket (`RawTrafficLoop`); returns whether
    /// all of it went (if not, the rest waits for the next round).
    func writeOutgoingToSocket() -> Bool {
        while outgoing.readableBytes > 0 {
            let written = outgoing.withUnsafeReadableBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written > 0 {
                outgoing.moveReaderIndex(forwardBy: written)
            } else if written < 0 && errno == EINTR {
                continue
            } else {
                return false  // EAGAIN: the socket's buffer is full; a closed socket is counted by its read
            }
        }
        outgoing.clear()
        return true
    }

    /// Handles every complete line; returns the bytes consumed.
    private func handleLines(in bytes: UnsafeRawBufferPointer, readAt: UInt64) -> Int {
        var start = 0
        while let newline = bytes.offset(of: UInt8(ascii: "\n"), from: start) {
            var end = newline
            if end > start && bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            handleLine(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), readAt: readAt)
            start = newline + 1
        }
        return start
    }

    private func handleLine(_ line: UnsafeRawBufferPointer, readAt: UInt64) {
        if let payload = Self.privmsgText(line) {
            onMessage?(self, payload, readAt)
            return
        }
        // Parsed only when someone wants it: in a large group's joins every member gets a JOIN
        // line per joiner, and parsing each into Strings made the generator the bottleneck.
        guard !line.isEmpty, onOtherLine != nil || Self.isHandledHere(line),
              let message = try? IRCMessage(parsing: String(decoding: line, as: UTF8.self)) else { return }
        switch message.command {
        case "PING":
            send(["PONG :\(message.parameters.last ?? "")"])
        case "001":
            registered = true
            registeredAt = monotonicNanoseconds()
            onRegistered?(self)
        case "433", "432", "464", "465":
            lastError = "\(message.command) \(message.parameters.last ?? "")"
            close()
        default:
            onOtherLine?(self, message)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        onClosed?(self, lastError ?? "connection closed by the server")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        lastError = "\(error)"
        context.close(promise: nil)
    }

    /// Where a line's command starts: after its tags and source.
    static func commandStart(of line: UnsafeRawBufferPointer) -> Int {
        var index = 0
        let count = line.count
        if index < count && line[index] == UInt8(ascii: "@") { index = (line.offset(of: UInt8(ascii: " "), from: index) ?? count) + 1 }
        if index < count && line[index] == UInt8(ascii: ":") { index = (line.offset(of: UInt8(ascii: " "), from: index) ?? count) + 1 }
        return index
    }

    /// The commands `handleLine` answers itself (the rest go to `onOtherLine`).
    private static let handledCommands: [[UInt8]] = ["PING", "001", "433", "432", "464", "465"].map { Array($0.utf8) }

    static func isHandledHere(_ line: UnsafeRawBufferPointer) -> Bool {
        let start = min(commandStart(of: line), line.count)
        let rest = line[start...]
        let command = rest.prefix { $0 != UInt8(ascii: " ") }
        return handledCommands.contains { $0.elementsEqual(command) }
    }

    /// The text of a PRIVMSG line (after " PRIVMSG target :"), or nil for any other line.
    static func privmsgText(_ line: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        var index = commandStart(of: line)
        let count = line.count
        guard count - index > 8,
              line[index] == UInt8(ascii: "P"), line[index + 1] == UInt8(ascii: "R"), line[index + 2] == UInt8(ascii: "I"),
              line[index + 3] == UInt8(ascii: "V"), line[index + 4] == UInt8(ascii: "M"), line[index + 5] == UInt8(ascii: "S"),
              line[index + 6] == UInt8(ascii: "G"), line[index + 7] == UInt8(ascii: " ") else { return nil }
        index = line.offset(of: UInt8(ascii: ":"), from: index + 8) ?? count
        guard index < count else { return nil }
        return UnsafeRawBufferPointer(rebasing: line[(index + 1)...])
    }
}

extension ByteBuffer {
    /// Writes `value` in decimal, without a String.
    @inline(__always)
    mutating func writeDecimal(_ value: UInt64) {
        var digits = 1
        var rest = value
        while rest >= 10 {
            rest /= 10
            digits += 1
        }
        writeWithUnsafeMutableBytes(minimumWritableBytes: digits) { buffer in
            var remaining = value
            var position = digits
            repeat {
                position -= 1
                buffer[position] = UInt8(ascii: "0") + UInt8(remaining % 10)
                remaining /= 10
            } while position > 0
            return digits
        }
    }
}

/// Reads three unsigned decimal numbers separated by spaces from the start of a payload:
/// sender, sequence number, send time (microseconds).
@inline(__always)
func parseNumbers(_ payload: UnsafeRawBufferPointer) -> (UInt64, UInt64, UInt64)? {
    var values: (UInt64, UInt64, UInt64) = (0, 0, 0)
    var field = 0
    var current: UInt64 = 0
    var digits = 0
    for byte in payload {
        if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
            current = current &* 10 &+ UInt64(byte &- UInt8(ascii: "0"))
            digits += 1
        } else {
            guard digits > 0 else { return nil }
            switch field {
            case 0: values.0 = current
            case 1: values.1 = current
            default:
                values.2 = current
                return values
            }
            field += 1
            current = 0
            digits = 0
        }
    }
    if field == 2 && digits > 0 {
        values.2 = current
        return values
    }
    return nil
}

/// Resident memory, CPU time and storage writes of a process, from /proc.
struct ProcessSample {
    let residentBytes: Int
    let cpuSeconds: Double
    /// Bytes the process caused to be written to storage (`write_bytes` of /proc/PID/io: the
    /// database and its WAL; socket writes are not counted); nil where unreadable (another
    /// user's process). Write calls are not given: SQLite's may run on the storage thread or on
    /// a libdispatch worker (GRDB's queue), and the process's count is mostly socket writes.
    var storageBytes: Int?

    static func read(pid: Int32) -> ProcessSample? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? ""),
              let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        var sample = ProcessSample(residentBytes: kilobytes * 1024, cpuSeconds: (user + system) / ticks)
        if let io = try? String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8),
           let line = io.split(separator: "\n").first(where: { $0.hasPrefix("write_bytes:") }) {
            sample.storageBytes = Int(line.dropFirst("write_bytes:".count).trimmingCharacters(in: .whitespaces))
        }
        return sample
    }
}
