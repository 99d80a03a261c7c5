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

/// How a bench client logs in.
enum Login: Equatable {
    case none
    /// `PASS account:password` (Parley) before NICK/USER.
    case pass(String)
    /// Create the account with IRCv3 REGISTER after connecting (Parley).
    case register(String)
}

/// One bench client. Everything here runs on its channel's event loop; with one loop for the
/// whole bench (the default), all clients and the coordinator share a thread and need no locks.
final class BenchConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = IRCLineFrame

    let index: Int
    let nick: String
    let login: Login
    var capabilities: [String] = []
    private(set) var channel: Channel?
    private(set) var registered = false
    private(set) var closed = false
    var registeredAt: UInt64 = 0
    var connectStartedAt: UInt64 = 0

    /// Called with each PRIVMSG payload (the text after " :"), the line, and this connection.
    var onMessage: ((BenchConnection, ByteBuffer) -> Void)?
    var onRegistered: ((BenchConnection) -> Void)?
    var onClosed: ((BenchConnection, String) -> Void)?
    /// Any other line (numerics, REGISTER replies, echoes without payload parsing).
    var onOtherLine: ((BenchConnection, IRCMessage) -> Void)?
    var lastError: String?

    init(index: Int, nick: String, login: Login) {
        self.index = index
        self.nick = nick
        self.login = login
    }

    static func connect(
        _ connection: BenchConnection, host: String, port: Int, source: SocketAddress?, on loop: EventLoop
    ) -> EventLoopFuture<Void> {
        connection.connectStartedAt = monotonicNanoseconds()
        var bootstrap = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(30))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(IRCLineDecoder(maximumLineBytes: 16 * 1024)))
                    try channel.pipeline.syncOperations.addHandler(connection)
                }
            }
        if let source { bootstrap = bootstrap.bind(to: source) }
        return bootstrap.connect(host: host, port: port).map { channel in
            connection.channel = channel
            connection.sendRegistration()
        }
    }

    private func sendRegistration() {
        var lines: [String] = []
        switch login {
        case .none:
            if !capabilities.isEmpty { lines.append("CAP LS 302") }
        case .pass(let password):
            if !capabilities.isEmpty { lines.append("CAP LS 302") }
            lines.append("PASS :\(nick):\(password)")
        case .register:
            lines.append("CAP LS 302")
        }
        if !capabilities.isEmpty || login.isRegister {
            let caps = capabilities + (login.isRegister ? ["draft/account-registration"] : [])
            lines.append("CAP REQ :\(caps.joined(separator: " "))")
        }
        lines.append("NICK \(nick)")
        lines.append("USER \(nick) 0 * :parley-bench")
        if !capabilities.isEmpty || login.isRegister { lines.append("CAP END") }
        if case .register(let password) = login { lines.append("REGISTER * * \(password)") }
        send(lines)
    }

    func send(_ lines: [String]) {
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

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .line(let line) = unwrapInboundIn(data) else { return }
        // The hot path: PRIVMSG lines are recognised on bytes and their payload handed over.
        if let payload = Self.privmsgPayload(line) {
            onMessage?(self, payload)
            return
        }
        guard let message = try? IRCMessage(parsing: line) else { return }
        switch message.command {
        case "PING":
            send(["PONG :\(message.parameters.last ?? "")"])
        case "001":
            registered = true
            registeredAt = monotonicNanoseconds()
            onRegistered?(self)
        case "433", "432", "464", "465":
            lastError = "\(message.command) \(message.parameters.last ?? "")"
            context.close(promise: nil)
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

    /// The text of a PRIVMSG line (after " PRIVMSG target :"), or nil for any other line.
    static func privmsgPayload(_ line: ByteBuffer) -> ByteBuffer? {
        let view = line.readableBytesView
        // Skip tags and source, then expect the command.
        var index = view.startIndex
        if view.first == UInt8(ascii: "@") {
            guard let space = view.firstIndex(of: UInt8(ascii: " ")) else { return nil }
            index = space + 1
        }
        if index < view.endIndex && view[index] == UInt8(ascii: ":") {
            guard let space = view[index...].firstIndex(of: UInt8(ascii: " ")) else { return nil }
            index = space + 1
        }
        let command = Array("PRIVMSG ".utf8)
        guard view.endIndex - index > command.count, view[index..<(index + command.count)].elementsEqual(command) else { return nil }
        index += command.count
        guard let marker = view[index...].firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let start = marker + 1 - view.startIndex
        return line.getSlice(at: line.readerIndex + start, length: view.endIndex - marker - 1)
    }
}

extension Login {
    var isRegister: Bool {
        if case .register = self { return true }
        return false
    }
}

/// Reads three unsigned decimal numbers separated by spaces from the start of a payload:
/// sender, sequence number, send time.
@inline(__always)
func parseNumbers(_ payload: ByteBuffer) -> (UInt64, UInt64, UInt64)? {
    var values: (UInt64, UInt64, UInt64) = (0, 0, 0)
    var field = 0
    var current: UInt64 = 0
    var digits = 0
    for byte in payload.readableBytesView {
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

/// Resident memory and CPU time of a process, from /proc.
struct ProcessSample {
    let residentBytes: Int
    let cpuSeconds: Double

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
        return ProcessSample(residentBytes: kilobytes * 1024, cpuSeconds: (user + system) / ticks)
    }
}
