import ArgumentParser
import Foundation
import Histogram
import NIOCore
import NIOPosix

@main
struct ParleyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley-bench",
        abstract: "Load generator for IRC servers (Parley, InspIRCd, ngircd, ...).",
        discussion: """
            Each run prints a progress line per second on standard error, then one line starting \
            with RESULT (JSON, for scripts) and a readable table on standard output. Build it in \
            release mode: swift build -c release --product parley-bench.
            """,
        subcommands: [Connect.self, Direct.self, Fanout.self, Offline.self])
}

struct Common: ParsableArguments {
    @Option(help: "Server address (IPv4 or IPv6).") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 6667
    @Option(help: "A name for the server in the output.") var server = "server"
    @Option(help: "The server's process id, to report its memory and CPU use.") var serverPid: Int32?
    @Option(help: "Spread client source addresses over 127.0.0.2 to 127.0.0.N+1 (IPv4 loopback only; 0: don't).") var sourceAddresses = 0
    @Option(help: "Log in with PASS nick:password (accounts must exist), or 'none'.") var password = "none"

    var login: Login { password == "none" ? .none : .pass(password) }

    func source(for index: Int) throws -> SocketAddress? {
        guard sourceAddresses > 0 else { return nil }
        return try SocketAddress(ipAddress: "127.0.0.\(2 + index % sourceAddresses)", port: 0)
    }
}

/// A run's figures.
struct Report {
    var mode: String
    var server: String
    var fields: [(String, String)] = []

    mutating func add(_ name: String, _ value: String) { fields.append((name, value)) }
    mutating func add(_ name: String, _ value: Double, digits: Int = 1) { fields.append((name, String(format: "%.\(digits)f", value))) }
    mutating func add(_ name: String, _ value: Int) { fields.append((name, String(value))) }

    func print() {
        let json = (["\"mode\":\"\(mode)\"", "\"server\":\"\(server)\""] + fields.map { "\"\($0.0)\":\(Double($0.1) != nil ? $0.1 : "\"\($0.1)\"")" }).joined(separator: ",")
        Swift.print("RESULT {\(json)}")
        let width = max(8, fields.map(\.0.count).max() ?? 8)
        Swift.print("\n\(mode) against \(server)")
        for (name, value) in fields {
            Swift.print("  " + name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value)
        }
    }

    mutating func addLatency(_ histogram: Histogram<UInt64>) {
        // Recorded in microseconds.
        add("p50_us", Int(histogram.valueAtPercentile(50)))
        add("p99_us", Int(histogram.valueAtPercentile(99)))
        add("p999_us", Int(histogram.valueAtPercentile(99.9)))
        add("max_us", Int(histogram.max))
    }
}

func progress(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
}

/// A short, distinct nick prefix per run, so runs never collide and nicks fit a NICKLEN of 9.
let runTag = String(UInt32.random(in: 0..<(36 * 36 * 36)), radix: 36)

/// Connects `count` clients (at most `parallel` connecting at once) and waits until all are
/// registered. Throws with a clear reason if the server refuses or drops any.
func connectAll(
    count: Int, parallel: Int, common: Common, loop: EventLoop, login: (Int) -> Login = { _ in .none },
    nick: (Int) -> String, capabilities: [String] = [], configure: (BenchConnection) -> Void = { _ in }
) async throws -> (connections: [BenchConnection], latencies: Histogram<UInt64>, seconds: Double) {
    var connections: [BenchConnection] = []
    for index in 0..<count {
        let connection = BenchConnection(index: index, nick: nick(index), login: login(index))
        connection.capabilities = capabilities
        configure(connection)
        connections.append(connection)
    }
    let start = monotonicNanoseconds()
    var latencies = Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
    var next = 0
    var lastProgress = start
    while next < count {
        let batch = connections[next..<min(count, next + parallel)]
        let sources = try batch.map { try common.source(for: $0.index) }
        var futures: [EventLoopFuture<Void>] = []
        for (connection, source) in zip(batch, sources) {
            let registered = loop.makePromise(of: Void.self)
            loop.execute {
                connection.onRegistered = { _ in registered.succeed(()) }
                connection.onClosed = { connection, reason in registered.fail(BenchFailure(description: "client \(connection.nick) was disconnected while registering: \(reason)")) }
            }
            BenchConnection.connect(connection, host: common.host, port: common.port, source: source, on: loop).cascadeFailure(to: registered)
            futures.append(registered.futureResult)
        }
        do {
            try await EventLoopFuture.andAllSucceed(futures, on: loop).get()
        } catch {
            throw BenchFailure(description: "the server refused or dropped a connection after \(next) registered: \(error)")
        }
        for connection in batch {
            _ = latencies.record((connection.registeredAt - connection.connectStartedAt) / 1000)
        }
        next += batch.count
        let now = monotonicNanoseconds()
        if now - lastProgress > 1_000_000_000 {
            lastProgress = now
            progress("connect: \(next)/\(count) registered")
        }
    }
    return (connections, latencies, Double(monotonicNanoseconds() - start) / 1e9)
}

/// Closes every client, lets the closes go out, and stops the event loop.
func finish(_ connections: [BenchConnection], loop: EventLoop, group: MultiThreadedEventLoopGroup) async throws {
    for connection in connections { loop.execute { connection.close() } }
    try await Task.sleep(for: .milliseconds(200))
    try await group.shutdownGracefully()
}

// MARK: - connect

struct Connect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "N clients connect, register and stay idle (answering PING).")
    @OptionGroup var common: Common
    @Option(help: "Clients.") var clients = 1000
    @Option(help: "Clients connecting at once.") var parallel = 200
    @Option(help: "Seconds to stay connected and idle afterwards.") var hold = 5.0

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let before = common.serverPid.flatMap(ProcessSample.read)
        let result = try await connectAll(count: clients, parallel: parallel, common: common, loop: loop, login: { _ in common.login }) { "c\(runTag)\(String($0, radix: 36))" }
        let after = common.serverPid.flatMap(ProcessSample.read)
        try await Task.sleep(for: .milliseconds(Int(hold * 1000)))
        let dropped = try await loop.submit { result.connections.filter(\.closed).count }.get()
        var report = Report(mode: "connect", server: common.server)
        report.add("clients", clients)
        report.add("connects_per_s", Double(clients) / result.seconds)
        report.addLatency(result.latencies)
        if let before, let after {
            report.add("server_bytes_per_conn", Double(after.residentBytes - before.residentBytes) / Double(clients), digits: 0)
            report.add("server_cpu_us_per_conn", (after.cpuSeconds - before.cpuSeconds) * 1e6 / Double(clients))
        }
        report.add("disconnected", dropped)
        report.print()
        try await finish(result.connections, loop: loop, group: group)
        if dropped > 0 { throw ExitCode(1) }
    }
}

// MARK: - message traffic (direct and fanout share it)

/// Traffic bookkeeping, confined to the bench's single event loop.
final class Traffic: @unchecked Sendable {
    let window: Int
    var running = true
    var sent: [UInt64]
    var inFlight: [Int]
    var expected: [[UInt64]]  // [receiver][sender] next sequence number
    var received: UInt64 = 0
    var lost: UInt64 = 0
    var reordered: UInt64 = 0
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    /// Fan-out: how many deliveries each (sender, seq) still waits for, to free window slots.
    var remaining: [[UInt64: Int]]
    let padding: String

    init(clients: Int, window: Int, payloadBytes: Int) {
        self.window = window
        sent = Array(repeating: 0, count: clients)
        inFlight = Array(repeating: 0, count: clients)
        expected = Array(repeating: Array(repeating: 0, count: clients), count: clients)
        remaining = Array(repeating: [:], count: clients)
        padding = String(repeating: "x", count: max(0, payloadBytes))
    }

    /// Connections written to since the last flush. One flush task per burst of reads instead
    /// of a system call per message: the load generator must not be the bottleneck.
    private var unflushed: [BenchConnection] = []

    func needsFlush(_ connection: BenchConnection, on loop: EventLoop) {
        if unflushed.isEmpty {
            loop.execute {
                let pending = self.unflushed
                self.unflushed.removeAll(keepingCapacity: true)
                for connection in pending { connection.flush() }
            }
        }
        unflushed.append(connection)
    }

    func line(from sender: Int, to target: String) -> ByteBuffer {
        let sequence = sent[sender]
        sent[sender] += 1
        return ByteBuffer(string: "PRIVMSG \(target) :\(sender) \(sequence) \(monotonicNanoseconds()) \(padding)\r\n")
    }

    /// A message arrived at `receiver`; returns its sender.
    @inline(__always)
    func arrived(at receiver: Int, _ payload: ByteBuffer) -> Int? {
        guard let (sender, sequence, time) = parseNumbers(payload), Int(sender) < sent.count else { return nil }
        let now = monotonicNanoseconds()
        _ = histogram.record(now > time ? (now - time) / 1000 : 0)
        received += 1
        let next = expected[receiver][Int(sender)]
        if sequence != next {
            if sequence > next { lost += sequence - next } else { reordered += 1 }
        }
        expected[receiver][Int(sender)] = sequence + 1
        return Int(sender)
    }
}

struct TrafficOptions: ParsableArguments {
    @Option(help: "Unacknowledged messages per sender (closed loop); ignored with --rate.") var window = 16
    @Option(help: "Fixed total send rate in messages/s (open loop) instead of a window.") var rate: Int?
    @Option(help: "Seconds of traffic.") var duration = 10.0
    @Option(help: "Padding bytes per message.") var payload = 16
}

/// Runs traffic from `senders` to their targets and prints the report.
func runTraffic(
    mode: String, common: Common, options: TrafficOptions, loop: EventLoop, connections: [BenchConnection], traffic: Traffic,
    senders: [Int], target: @escaping @Sendable (Int) -> String, deliveriesPerMessage: Int
) async throws {
    let start = monotonicNanoseconds()
    let before = common.serverPid.flatMap(ProcessSample.read)
    let disconnected = NIOLoopBoundBox.makeBoxSendingValue(0, eventLoop: loop)
    try await loop.submit {
        for connection in connections {
            connection.onClosed = { _, _ in disconnected.value += 1 }
        }
        if options.rate == nil {
            for sender in senders {
                let connection = connections[sender]
                for _ in 0..<traffic.window {
                    connection.write(traffic.line(from: sender, to: target(sender)))
                    traffic.inFlight[sender] += 1
                }
                connection.flush()
            }
        }
    }.get()
    let ticker: RepeatedTask?
    if let rate = options.rate {
        // About every 200 us, send what is due by the clock, round-robin over the senders: small
        // bursts, as from many independent clients (a 1 ms tick sent bursts of 70 that queued
        // behind each other). Due by the clock, not a fixed count per tick: the timer fires
        // later than asked (a count per tick gave 36,000 msgs/s when 50,000 were asked for).
        let ratePerNanosecond = Double(rate) / 1e9
        let sendingSince = monotonicNanoseconds()
        let due = NIOLoopBoundBox.makeBoxSendingValue((sent: 0, next: 0), eventLoop: loop)
        ticker = loop.scheduleRepeatedTask(initialDelay: .zero, delay: .microseconds(200)) { _ in
            guard traffic.running else { return }
            let dueByNow = Int(Double(monotonicNanoseconds() - sendingSince) * ratePerNanosecond)
            var touched: Set<Int> = []
            while due.value.sent < dueByNow {
                due.value.sent += 1
                let sender = senders[due.value.next % senders.count]
                due.value.next += 1
                connections[sender].write(traffic.line(from: sender, to: target(sender)))
                touched.insert(sender)
            }
            for sender in touched { connections[sender].flush() }
        }
    } else {
        ticker = nil
    }
    let end = start + UInt64(options.duration * 1e9)
    var lastReceived: UInt64 = 0
    var lastTime = start
    while monotonicNanoseconds() < end {
        try await Task.sleep(for: .seconds(1))
        let (received, p99) = try await loop.submit { (traffic.received, traffic.histogram.valueAtPercentile(99)) }.get()
        let now = monotonicNanoseconds()
        let rate = Double(received - lastReceived) / (Double(now - lastTime) / 1e9)
        progress(String(format: "%@: %4.0fs  %10llu delivered  %10.0f/s  p99 %llu us", mode, Double(now - start) / 1e9, received, rate, p99))
        lastReceived = received
        lastTime = now
    }
    let sentTotal = try await loop.submit { () -> UInt64 in
        traffic.running = false
        ticker?.cancel()
        return traffic.sent.reduce(0, +)
    }.get()
    let trafficEnd = monotonicNanoseconds()
    // Let what is in flight arrive.
    let expectedDeliveries = sentTotal * UInt64(deliveriesPerMessage)
    let drainDeadline = monotonicNanoseconds() + 5_000_000_000
    var receivedAtEnd = try await loop.submit { traffic.received }.get()
    while receivedAtEnd < expectedDeliveries && monotonicNanoseconds() < drainDeadline {
        try await Task.sleep(for: .milliseconds(20))
        receivedAtEnd = try await loop.submit { traffic.received }.get()
    }
    let after = common.serverPid.flatMap(ProcessSample.read)
    let (histogram, reordered, dropped, deliveredInWindow) = try await loop.submit { (traffic.histogram, traffic.reordered, disconnected.value, traffic.received) }.get()
    let seconds = Double(trafficEnd - start) / 1e9
    var report = Report(mode: mode, server: common.server)
    report.add("clients", connections.count)
    report.add("senders", senders.count)
    if let rate = options.rate { report.add("target_rate", rate) } else { report.add("window", options.window) }
    report.add("seconds", seconds)
    report.add("sent", Int(sentTotal))
    report.add("delivered", Int(receivedAtEnd))
    report.add("delivered_per_s", Double(min(deliveredInWindow, receivedAtEnd)) / seconds, digits: 0)
    report.addLatency(histogram)
    report.add("lost", Int(expectedDeliveries > receivedAtEnd ? expectedDeliveries - receivedAtEnd : 0))
    report.add("reordered", Int(reordered))
    report.add("disconnected", dropped)
    if let before, let after {
        report.add("server_cpu_s", after.cpuSeconds - before.cpuSeconds, digits: 2)
    }
    report.print()
}

// MARK: - direct

struct Direct: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "P pairs exchange PRIVMSGs; loss, order and latency are checked at the receivers.")
    @OptionGroup var common: Common
    @OptionGroup var options: TrafficOptions
    @Option(help: "Pairs of clients.") var pairs = 500

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let count = pairs * 2
        let traffic = Traffic(clients: count, window: options.window, payloadBytes: options.payload)
        let nicks = (0..<count).map { "d\(runTag)\(String($0, radix: 36))" }
        let result = try await connectAll(count: count, parallel: 200, common: common, loop: loop, login: { _ in common.login }, nick: { nicks[$0] })
        let connections = result.connections
        let windowed = options.rate == nil
        try await loop.submit {
            for connection in connections {
                connection.onMessage = { receiver, payload in
                    guard let sender = traffic.arrived(at: receiver.index, payload) else { return }
                    guard windowed else { return }
                    traffic.inFlight[sender] -= 1
                    if traffic.running {
                        let peer = sender ^ 1
                        connections[sender].write(traffic.line(from: sender, to: nicks[peer]))
                        traffic.needsFlush(connections[sender], on: loop)
                        traffic.inFlight[sender] += 1
                    }
                }
            }
        }.get()
        try await runTraffic(mode: "direct", common: common, options: options, loop: loop, connections: connections, traffic: traffic,
                             senders: Array(0..<count), target: { nicks[$0 ^ 1] }, deliveriesPerMessage: 1)
        try await finish(connections, loop: loop, group: group)
    }
}

// MARK: - fanout

struct Fanout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A group of M members with S senders: deliveries/s and latency.")
    @OptionGroup var common: Common
    @OptionGroup var options: TrafficOptions
    @Option(help: "Members of the group.") var members = 1000
    @Option(help: "Members that send.") var senders = 1

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let traffic = Traffic(clients: members, window: options.window, payloadBytes: options.payload)
        let channelName = "#f\(runTag)"
        let result = try await connectAll(count: members, parallel: 200, common: common, loop: loop, login: { _ in common.login }) { "f\(runTag)\(String($0, radix: 36))" }
        let connections = result.connections
        // Everyone joins; wait until the last member's join is seen by the first.
        let joined = loop.makePromise(of: Void.self)
        let lastNick = connections.last!.nick
        try await loop.submit {
            connections[0].onOtherLine = { _, message in
                if message.command == "JOIN", message.source?.hasPrefix(lastNick + "!") == true { joined.succeed(()) }
            }
            connections[0].send(["JOIN \(channelName)"])
        }.get()
        try await Task.sleep(for: .milliseconds(200))
        for connection in connections.dropFirst() {
            try await loop.submit { connection.send(["JOIN \(channelName)"]) }.get()
        }
        if members == 1 { joined.succeed(()) }
        try await joined.futureResult.get()
        let senderIndexes = Array(0..<min(senders, members))
        let windowed = options.rate == nil
        try await loop.submit {
            for connection in connections {
                connection.onMessage = { receiver, payload in
                    guard let (senderValue, sequence, _) = parseNumbers(payload), traffic.arrived(at: receiver.index, payload) != nil else { return }
                    guard windowed else { return }
                    let sender = Int(senderValue)
                    let left = (traffic.remaining[sender][sequence] ?? (members - 1)) - 1
                    if left > 0 {
                        traffic.remaining[sender][sequence] = left
                        return
                    }
                    traffic.remaining[sender][sequence] = nil
                    traffic.inFlight[sender] -= 1
                    if traffic.running {
                        connections[sender].write(traffic.line(from: sender, to: channelName))
                        traffic.needsFlush(connections[sender], on: loop)
                        traffic.inFlight[sender] += 1
                    }
                }
            }
        }.get()
        try await runTraffic(mode: "fanout", common: common, options: options, loop: loop, connections: connections, traffic: traffic,
                             senders: senderIndexes, target: { _ in channelName }, deliveriesPerMessage: members - 1)
        try await finish(connections, loop: loop, group: group)
    }
}

// MARK: - offline (Parley only)

struct Offline: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Parley only: messages to logged-out accounts (each echo means stored on disk), then the backlog replay rate.")
    @OptionGroup var common: Common
    @Option(help: "Recipient accounts.") var recipients = 20
    @Option(help: "Messages in all (Parley keeps at most 5,000 per offline account by default).") var messages = 50_000
    @Option(help: "Sending accounts, each with its own connection and window.") var senders = 1
    @Option(help: "Unacknowledged messages (echo not yet seen) per sender at a time.") var window = 64
    @Option(help: "Padding bytes per message.") var payload = 16

    func run() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let password = "bench-\(runTag)-password"
        let senders = max(1, self.senders)
        // Senders first, then the recipients.
        let nicks = (0..<(senders + recipients)).map { "o\(runTag)\(String($0, radix: 36))" }
        let recipientNicks = Array(nicks[senders...])
        // Create the accounts (REGISTER), then log the recipients out.
        progress("offline: creating \(nicks.count) accounts")
        let created = try await connectAll(count: nicks.count, parallel: 50, common: common, loop: loop, login: { _ in .register(password) }, nick: { nicks[$0] })
        let registeredAll = loop.makePromise(of: Void.self)
        let pending = NIOLoopBoundBox.makeBoxSendingValue(nicks.count, eventLoop: loop)
        try await loop.submit {
            for connection in created.connections {
                connection.onOtherLine = { connection, message in
                    if message.command == "REGISTER" {
                        pending.value -= 1
                        if pending.value == 0 { registeredAll.succeed(()) }
                    } else if message.command == "FAIL" {
                        registeredAll.fail(BenchFailure(description: "account creation failed for \(connection.nick): \(message.parameters.last ?? "")"))
                    }
                }
            }
        }.get()
        try await registeredAll.futureResult.get()
        try await loop.submit { for connection in created.connections.dropFirst(senders) { connection.send(["QUIT :bench"]) } }.get()
        try await Task.sleep(for: .milliseconds(500))

        // Send: with echo-message, each echo is the server's word that the message is on disk.
        // Each sender sends its share to the recipients in turn; message n goes to recipient
        // n mod recipients overall, so every recipient gets the same count as with one sender.
        let sending = Array(created.connections.prefix(senders))
        let padding = String(repeating: "x", count: payload)
        let share = (0..<senders).map { messages / senders + ($0 < messages % senders ? 1 : 0) }
        let state = NIOLoopBoundBox.makeBoxSendingValue(
            (sent: Array(repeating: 0, count: senders), echoed: 0, nextMessage: 0, unflushed: [Int](), flushScheduled: false), eventLoop: loop)
        let done = loop.makePromise(of: Void.self)
        @Sendable func sendOne(_ sender: Int) {
            let number = state.value.sent[sender]
            state.value.sent[sender] += 1
            let target = recipientNicks[state.value.nextMessage % recipients]
            state.value.nextMessage += 1
            sending[sender].write(ByteBuffer(string: "PRIVMSG \(target) :\(sender) \(number) \(monotonicNanoseconds()) \(padding)\r\n"))
        }
        var storeLatency = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        let latencies = NIOLoopBoundBox.makeBoxSendingValue(storeLatency, eventLoop: loop)
        let start = monotonicNanoseconds()
        try await loop.submit {
            for (index, sender) in sending.enumerated() {
                sender.send(["CAP REQ :echo-message"])
                // A refusal (a full offline queue, storage failing) would otherwise leave us waiting.
                sender.onOtherLine = { _, message in
                    if message.command == "FAIL" || message.command == "ERROR" {
                        done.fail(BenchFailure(description: "the server refused a message: \(message.parameters.joined(separator: " "))"))
                    }
                }
                sender.onMessage = { _, payload in
                    // Our echo: the message is stored.
                    if let (_, _, time) = parseNumbers(payload) { _ = latencies.value.record((monotonicNanoseconds() - time) / 1000) }
                    state.value.echoed += 1
                    if state.value.echoed == messages { done.succeed(()); return }
                    guard state.value.sent[index] < share[index] else { return }
                    sendOne(index)
                    // One flush per burst of echoes read, as in the direct mode: a system call
                    // per message made the load generator the bottleneck.
                    state.value.unflushed.append(index)
                    if !state.value.flushScheduled {
                        state.value.flushScheduled = true
                        loop.execute {
                            state.value.flushScheduled = false
                            for sender in Set(state.value.unflushed) { sending[sender].flush() }
                            state.value.unflushed.removeAll(keepingCapacity: true)
                        }
                    }
                }
            }
            for index in sending.indices {
                for _ in 0..<min(window, share[index]) { sendOne(index) }
                sending[index].flush()
            }
        }.get()
        try await done.futureResult.get()
        let storeSeconds = Double(monotonicNanoseconds() - start) / 1e9
        storeLatency = try await loop.submit { latencies.value }.get()

        // Replay: the recipients come back one after another. The server prepares the backlog
        // before its welcome leaves, so the replay time is the time from connecting to the last
        // missed message, less the time the same login takes with nothing missed (a second
        // device of the same account, right after): logging in is slow password hashing on
        // purpose, and is not replay.
        progress("offline: \(messages) stored in \(String(format: "%.2f", storeSeconds)) s; recipients log in one by one")
        var replayNanoseconds: Int64 = 0
        var reordered = 0
        var returningConnections: [BenchConnection] = []
        for recipient in 0..<recipients {
            let expected = messages / recipients + (recipient < messages % recipients ? 1 : 0)
            // Order is checked per sender: messages from different senders may be stored in
            // either order, each sender's in the order sent.
            let replayState = NIOLoopBoundBox.makeBoxSendingValue((received: 0, reordered: 0, last: Array(repeating: -1, count: senders)), eventLoop: loop)
            let replayed = loop.makePromise(of: UInt64.self)
            let returning = try await connectAll(count: 1, parallel: 1, common: common, loop: loop, login: { _ in .pass(password) },
                                                 nick: { _ in recipientNicks[recipient] }, capabilities: ["batch", "server-time", "message-tags"]) { connection in
                connection.onMessage = { connection, payload in
                    guard let (sender, number, _) = parseNumbers(payload), Int(sender) < senders else { return }
                    if Int(number) <= replayState.value.last[Int(sender)] { replayState.value.reordered += 1 }
                    replayState.value.last[Int(sender)] = Int(number)
                    replayState.value.received += 1
                    if replayState.value.received == expected { replayed.succeed(monotonicNanoseconds()) }
                }
            }
            let timeout = loop.scheduleTask(in: .seconds(60)) { replayed.fail(BenchFailure(description: "replay incomplete after 60 s")) }
            let lastArrival = try await replayed.futureResult.get()
            timeout.cancel()
            let secondDevice = try await connectAll(count: 1, parallel: 1, common: common, loop: loop, login: { _ in .pass(password) },
                                                    nick: { _ in recipientNicks[recipient] }, capabilities: ["batch", "server-time", "message-tags"])
            let loginOnly = secondDevice.connections[0].registeredAt - secondDevice.connections[0].connectStartedAt
            replayNanoseconds += Int64(lastArrival - returning.connections[0].connectStartedAt) - Int64(loginOnly)
            reordered += try await loop.submit { replayState.value.reordered }.get()
            returningConnections += returning.connections + secondDevice.connections
        }
        let replaySeconds = max(Double(replayNanoseconds) / 1e9, 1e-6)

        var report = Report(mode: "offline", server: common.server)
        report.add("recipients", recipients)
        report.add("messages", messages)
        report.add("senders", senders)
        report.add("window", window)
        report.add("stored_per_s", Double(messages) / storeSeconds, digits: 0)
        report.add("store_p50_us", Int(storeLatency.valueAtPercentile(50)))
        report.add("store_p99_us", Int(storeLatency.valueAtPercentile(99)))
        report.add("replayed_per_s", Double(messages) / replaySeconds, digits: 0)
        report.add("replay_seconds", replaySeconds, digits: 3)
        report.add("reordered", reordered)
        report.print()
        try await finish(created.connections + returningConnections, loop: loop, group: group)
    }
}
