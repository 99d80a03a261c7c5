import ArgumentParser
import Foundation
import Histogram
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

@main
struct ParleyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley-bench",
        abstract: "Load generator for IRC servers (Parley, InspIRCd, ngircd, ...).",
        discussion: """
            Each run prints a progress line per second on standard error, then one line starting \
            with RESULT (JSON, for scripts) and a readable table on standard output. Every result \
            reports the generator's own CPU (bench_cpu_pct, % of one core) beside the server's \
            (server_cpu_pct, with --server-pid); when the generator used more than 80 % of its \
            cores it measured itself, and says so (generator_bound 1). Build it in release mode: \
            swift build -c release --product parley-bench.
            """,
        subcommands: [Connect.self, Direct.self, Fanout.self, Offline.self])
}

struct Common: ParsableArguments {
    @Option(help: "Server address (IPv4 or IPv6).") var host = "127.0.0.1"
    @Option(name: .customLong("port"), help: ArgumentHelp(
        "Server port; repeat for the nodes of a cluster: client i connects to the (i mod N)th, so each direct pair is split across two nodes.",
        valueName: "port"))
    var ports: [Int] = [6667]
    @Option(help: "A name for the server in the output.") var server = "server"
    @Option(help: "The server's process id, to report its memory and CPU use.") var serverPid: Int32?
    @Option(help: "Spread client source addresses over this many addresses of 127.0.0.0/8 (IPv4 loopback only; 0: the kernel's choice).") var sourceAddresses = 254
    @Option(help: "Log in with PASS nick:password (accounts must exist), or 'none'.") var password = "none"
    @Flag(help: "Between accounts (Parley): create the accounts with REGISTER, then log each client in with PASS; their messages are stored.") var accounts = false
    @Option(help: "Event loop threads of the generator.") var threads = 1

    /// The password of this run's accounts (created with --accounts).
    var accountPassword: String { password == "none" ? "bench-\(runTag)-password" : password }

    var login: Login { accounts || password != "none" ? .pass(accountPassword) : .none }

    /// Client `index`'s source address: 127.a.b.c, spread over the loopback /8 (the server sees
    /// as many distinct peers as a real network would give it, and no address runs out of
    /// ephemeral ports).
    func source(for index: Int) throws -> SocketAddress? {
        guard sourceAddresses > 0, !host.contains(":") else { return nil }
        let spread = index % sourceAddresses
        let address = "127.\(1 + spread % 254).\(1 + (spread / 254) % 254).\(2 + (spread / 64_516) % 253)"
        return try SocketAddress(ipAddress: address, port: 0)
    }

    /// The server's addresses, one per port (client i connects to the (i mod N)th), resolved
    /// once rather than by the bootstrap per connection, whose resolver (getaddrinfo on a thread
    /// pool) and connection racing cost the generator about a third of its CPU when 10,000
    /// clients connect (`perf`), more than the server spent accepting them.
    func targets() throws -> [SocketAddress] {
        try ports.map { port in
            if let literal = try? SocketAddress(ipAddress: host, port: port) { return literal }
            return try SocketAddress.makeAddressResolvingHost(host, port: port)
        }
    }

    func makeLoops() -> (MultiThreadedEventLoopGroup, [EventLoop]) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        return (group, Array(group.makeIterator()))
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

    /// The generator's CPU and the server's over the measured interval, as % of one core. A
    /// generator above 80 % of the cores it may use is the bottleneck: its figures measure
    /// itself, and scripts must not compare servers with them.
    mutating func addCPU(_ usage: CPUUsage, threads: Int) {
        let benchPercent = usage.benchSeconds / usage.wallSeconds * 100
        add("bench_threads", threads)
        add("bench_cpu_pct", benchPercent)
        if let server = usage.serverSeconds { add("server_cpu_pct", server / usage.wallSeconds * 100) }
        let usable = Double(min(max(1, threads), System.coreCount))
        let bound = benchPercent > 80 * usable
        add("generator_bound", bound ? 1 : 0)
        if bound {
            progress(String(format: "warning: parley-bench used %.0f %% of its %@ (limit %.0f %%): it measured itself, not the server; make it cheaper (--threads) before comparing", benchPercent, usable == 1 ? "core" : "cores", 80 * usable))
        }
    }
}

/// CPU time over an interval: the generator's (getrusage) and the server's (/proc/PID/stat).
struct CPUUsage {
    var benchSeconds: Double
    var serverSeconds: Double?
    var wallSeconds: Double
    /// The server's storage writes over the interval (`ProcessSample`), logins excluded.
    var serverStorageBytes: Int?

    struct Start {
        let bench = ownCPUSeconds()
        let server: ProcessSample?
        let wall = monotonicNanoseconds()
        init(serverPid: Int32?) { server = serverPid.flatMap(ProcessSample.read) }

        func end(serverPid: Int32?) -> CPUUsage {
            let after = serverPid.flatMap(ProcessSample.read)
            return CPUUsage(
                benchSeconds: ownCPUSeconds() - bench,
                serverSeconds: server.flatMap { before in after.map { $0.cpuSeconds - before.cpuSeconds } },
                wallSeconds: max(1e-6, Double(monotonicNanoseconds() - wall) / 1e9),
                serverStorageBytes: server?.storageBytes.flatMap { before in after?.storageBytes.map { $0 - before } })
        }
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
    count: Int, parallel: Int, rate: Double = 0, ownSockets: Bool = false, common: Common, loops: [EventLoop], loopIndex: (Int) -> Int = { $0 },
    login: (Int) -> Login = { _ in .none },
    nick: (Int) -> String, capabilities: [String] = [], configure: (BenchConnection) -> Void = { _ in }
) async throws -> (connections: [BenchConnection], latencies: Histogram<UInt64>, seconds: Double) {
    var connections: [BenchConnection] = []
    for index in 0..<count {
        let loop = loopIndex(index) % loops.count
        let connection = BenchConnection(index: index, nick: nick(index), login: login(index), eventLoop: loops[loop], loopIndex: loop)
        connection.capabilities = capabilities
        configure(connection)
        connections.append(connection)
    }
    let start = monotonicNanoseconds()
    var latencies = Histogram<UInt64>(highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
    let targets = try common.targets()
    var next = 0
    var lastProgress = start
    while next < count {
        if rate > 0 {
            // Open loop: the next batch starts when its first client is due, not sooner.
            let due = start + UInt64(Double(next) / rate * 1e9)
            let now = monotonicNanoseconds()
            if due > now { try await Task.sleep(nanoseconds: due - now) }
        }
        let batch = connections[next..<min(count, next + parallel)]
        let sources = try batch.map { try common.source(for: $0.index) }
        var futures: [EventLoopFuture<Void>] = []
        for (connection, source) in zip(batch, sources) {
            let loop = connection.eventLoop
            let registered = loop.makePromise(of: Void.self)
            loop.execute {
                connection.onRegistered = { _ in registered.succeed(()) }
                connection.onClosed = { connection, reason in registered.fail(BenchFailure(description: "client \(connection.nick) was disconnected while registering: \(reason)")) }
            }
            BenchConnection.connect(connection, to: targets[connection.index % targets.count], source: source, ownSocket: ownSockets)
                .cascadeFailure(to: registered)
            futures.append(registered.futureResult)
        }
        do {
            try await EventLoopFuture.andAllSucceed(futures, on: loops[0]).get()
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

/// Creates accounts named `nicks` (IRCv3 REGISTER, Parley), then disconnects them, so that the
/// run's clients log in with PASS.
func createAccounts(_ nicks: [String], password: String, common: Common, loops: [EventLoop]) async throws {
    progress("creating \(nicks.count) accounts")
    let registeredAll = loops[0].makePromise(of: Void.self)
    let closedAll = loops[0].makePromise(of: Void.self)
    let counts = NIOLockedValueBox((registered: 0, closed: 0))
    // Set before connecting: a REGISTER reply can come before connectAll returns.
    let created = try await connectAll(count: nicks.count, parallel: 100, common: common, loops: loops,
                                       login: { _ in .register(password) }, nick: { nicks[$0] }) { connection in
        connection.onOtherLine = { connection, message in
            if message.command == "REGISTER" {
                if counts.withLockedValue({ $0.registered += 1; return $0.registered }) == nicks.count { registeredAll.succeed(()) }
            } else if message.command == "FAIL" {
                registeredAll.fail(BenchFailure(description: "account creation failed for \(connection.nick): \(message.parameters.joined(separator: " "))"))
            }
        }
    }
    try await registeredAll.futureResult.get()
    for connection in created.connections {
        try await connection.eventLoop.submit {
            connection.onClosed = { _, _ in
                if counts.withLockedValue({ $0.closed += 1; return $0.closed }) == nicks.count { closedAll.succeed(()) }
            }
            connection.send(["QUIT :accounts created"])
        }.get()
    }
    try await closedAll.futureResult.get()
}

/// Closes every client, lets the closes go out, and stops the event loops.
func finish(_ connections: [BenchConnection], group: MultiThreadedEventLoopGroup) async throws {
    for connection in connections { connection.eventLoop.execute { connection.close() } }
    try await Task.sleep(for: .milliseconds(200))
    try await group.shutdownGracefully()
}

// MARK: - connect

struct Connect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "N clients connect, register and stay idle (answering PING): server CPU per connection and memory per idle connection.")
    @OptionGroup var common: Common
    @Option(help: "Clients.") var clients = 1000
    @Option(help: "Clients connecting at once.") var parallel = 200
    @Option(help: "Connections started per second, in batches of --parallel (0: each batch as soon as the last one registered). A fixed rate keeps the generator, which spends more CPU per connection than a server (the kernel's work for both ends of a loopback connection is mostly its), from being what is measured.")
    var rate = 0.0
    @Option(help: "Seconds to stay connected and idle afterwards.") var hold = 5.0

    func run() async throws {
        let (group, loops) = common.makeLoops()
        let before = common.serverPid.flatMap(ProcessSample.read)
        let cpu = CPUUsage.Start(serverPid: common.serverPid)
        let result = try await connectAll(count: clients, parallel: parallel, rate: rate, common: common, loops: loops,
                                          login: { _ in common.login }) { "c\(runTag)\(String($0, radix: 36))" }
        let usage = cpu.end(serverPid: common.serverPid)
        let after = common.serverPid.flatMap(ProcessSample.read)
        try await Task.sleep(for: .milliseconds(Int(hold * 1000)))
        var dropped = 0
        for connection in result.connections where try await connection.eventLoop.submit({ connection.closed }).get() { dropped += 1 }
        var report = Report(mode: "connect", server: common.server)
        report.add("clients", clients)
        report.add("connects_per_s", Double(clients) / result.seconds)
        report.addLatency(result.latencies)
        if let before, let after {
            report.add("server_bytes_per_conn", Double(after.residentBytes - before.residentBytes) / Double(clients), digits: 0)
            report.add("server_cpu_us_per_conn", (after.cpuSeconds - before.cpuSeconds) * 1e6 / Double(clients))
        }
        report.addCPU(usage, threads: loops.count)
        report.add("disconnected", dropped)
        report.print()
        try await finish(result.connections, group: group)
        if dropped > 0 { throw ExitCode(1) }
    }
}

// MARK: - message traffic (direct and fanout share it)

/// What one of the generator's loops sees: its receivers' counts, order checks and latencies,
/// and the list of its connections with bytes to write. Set up on its NIO event loop, then
/// touched only by its `RawTrafficLoop` thread.
final class LoopTraffic: @unchecked Sendable {
    let loop: EventLoop
    var running = true
    var received: UInt64 = 0
    var lost: UInt64 = 0
    var reordered: UInt64 = 0
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    /// The next sequence number expected, per receiver and sender slot.
    private var expected: [UInt64]
    /// A sender's slot (its place among the senders), by client index; -1 for non-senders.
    private let slotOfSender: [Int]
    private let senderSlots: Int
    private var unflushed: [BenchConnection] = []

    init(loop: EventLoop, clients: Int, senderSlots: Int, slotOfSender: [Int]) {
        self.loop = loop
        self.senderSlots = senderSlots
        self.slotOfSender = slotOfSender
        expected = Array(repeating: 0, count: clients * senderSlots)
    }

    /// Writes the connection's gathered bytes at the end of this round of `RawTrafficLoop`
    /// (one system call per connection per round, not one per message).
    func needsFlush(_ connection: BenchConnection) {
        if !connection.awaitsFlush {
            connection.awaitsFlush = true
            unflushed.append(connection)
        }
    }

    /// Writes what every connection gathered; one whose socket buffer is full keeps the rest
    /// for the next round.
    func flushAll() {
        var waiting = 0
        for index in unflushed.indices {
            let connection = unflushed[index]
            if connection.writeOutgoingToSocket() {
                connection.awaitsFlush = false
            } else {
                unflushed[waiting] = connection
                waiting += 1
            }
        }
        unflushed.removeLast(unflushed.count - waiting)
    }

    /// A message arrived at `receiver`; returns its sender and sequence number.
    @inline(__always)
    func arrived(at receiver: Int, _ payload: UnsafeRawBufferPointer, readAt now: UInt64) -> (sender: Int, sequence: UInt64)? {
        guard let (senderValue, sequence, time) = parseNumbers(payload), senderValue < UInt64(slotOfSender.count) else { return nil }
        let sender = Int(senderValue)
        let slot = slotOfSender[sender]
        guard slot >= 0 else { return nil }
        _ = histogram.record(now > time ? now - time : 0)
        received += 1
        let key = receiver * senderSlots + slot
        let next = expected[key]
        if sequence != next {
            if sequence > next { lost += sequence - next } else { reordered += 1 }
        }
        expected[key] = sequence + 1
        return (sender, sequence)
    }
}

struct TrafficOptions: ParsableArguments {
    @Option(help: "Unacknowledged messages per sender (closed loop); ignored with --rate.") var window = 16
    @Option(help: "Fixed total send rate in messages/s (open loop) instead of a window.") var rate: Int?
    @Option(help: "Seconds of traffic.") var duration = 10.0
    @Option(help: "Bytes of each message's text (its numbers, padded).") var payload = 32
}

/// Runs traffic from `senders` and prints the report. Each sender's messages have been
/// prepared (`prepareMessages`); `onMessage` handlers are set by the caller. The connections
/// must have their own sockets (`connectAll(ownSockets: true)`): NIO stops reading them, and a
/// `RawTrafficLoop` per generator loop carries the traffic.
func runTraffic(
    mode: String, common: Common, options: TrafficOptions, traffic: [LoopTraffic], connections: [BenchConnection],
    senders: [Int], deliveriesPerMessage: Int, extraFields: [(String, String)] = []
) async throws {
    var rawLoops: [RawTrafficLoop] = []
    for (loopIndex, loopTraffic) in traffic.enumerated() {
        let mine = connections.filter { $0.loopIndex == loopIndex }
        let mySenders = senders.map { connections[$0] }.filter { $0.loopIndex == loopIndex }
        try await loopTraffic.loop.submit {
            for connection in mine {
                // Read by the raw loop from now on; a close is counted there.
                try connection.channel?.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
                connection.onClosed = nil
                connection.onOtherLine = nil  // set up for the joins; nothing else runs on the raw loop's thread
                connection.rawTraffic = loopTraffic
            }
        }.get()
        let rate = options.rate.map { Double($0) * Double(mySenders.count) / Double(max(1, senders.count)) / 1e9 }
        rawLoops.append(RawTrafficLoop(traffic: loopTraffic, clients: mine, senders: mySenders,
                                       window: options.rate == nil ? options.window : nil, ratePerNanosecond: rate))
    }
    let cpu = CPUUsage.Start(serverPid: common.serverPid)
    let start = monotonicNanoseconds()
    for rawLoop in rawLoops { rawLoop.start() }
    func receivedSoFar() -> (received: UInt64, p99: UInt64) {
        rawLoops.reduce((0, 0)) { sum, rawLoop in
            rawLoop.shared.withLockedValue { (sum.0 + $0.received, max(sum.1, $0.p99)) }
        }
    }
    let end = start + UInt64(options.duration * 1e9)
    var lastReceived: UInt64 = 0
    var lastTime = start
    while monotonicNanoseconds() < end {
        try await Task.sleep(for: .seconds(1))
        let (received, p99) = receivedSoFar()
        let now = monotonicNanoseconds()
        let rate = Double(received - lastReceived) / (Double(now - lastTime) / 1e9)
        progress(String(format: "%@: %4.0fs  %10llu delivered  %10.0f/s  p99 %llu us", mode, Double(now - start) / 1e9, received, rate, p99))
        lastReceived = received
        lastTime = now
    }
    for rawLoop in rawLoops { rawLoop.shared.withLockedValue { $0.sending = false } }
    let usage = cpu.end(serverPid: common.serverPid)
    let deliveredInWindow = receivedSoFar().received
    let trafficEnd = monotonicNanoseconds()
    /// Polls the raw loops' threads until `body` has an answer.
    func whenAvailable<Value>(_ body: () -> Value?) async throws -> Value {
        while true {
            if let value = body() { return value }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
    var sentTotal: UInt64 = 0
    for rawLoop in rawLoops {
        sentTotal += try await whenAvailable { rawLoop.shared.withLockedValue { $0.sent } }
    }
    // Let what is in flight arrive.
    let expectedDeliveries = sentTotal * UInt64(deliveriesPerMessage)
    let drainDeadline = monotonicNanoseconds() + 10_000_000_000
    var receivedAtEnd = receivedSoFar().received
    while receivedAtEnd < expectedDeliveries && monotonicNanoseconds() < drainDeadline {
        try await Task.sleep(for: .milliseconds(20))
        receivedAtEnd = receivedSoFar().received
    }
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    var reordered: UInt64 = 0
    var disconnected = 0
    for rawLoop in rawLoops {
        rawLoop.shared.withLockedValue { $0.stop = true }
        let results = try await whenAvailable { rawLoop.results() }
        histogram.add(results.histogram)
        reordered += results.reordered
        disconnected += results.disconnected
    }
    let seconds = Double(trafficEnd - start) / 1e9
    var report = Report(mode: mode, server: common.server)
    report.add("clients", connections.count)
    report.add("senders", senders.count)
    report.add("accounts", common.login == .none ? 0 : 1)
    if let rate = options.rate { report.add("target_rate", rate) } else { report.add("window", options.window) }
    report.add("payload_bytes", options.payload)
    for (name, value) in extraFields { report.add(name, value) }
    report.add("seconds", seconds)
    report.add("sent", Int(sentTotal))
    report.add("delivered", Int(receivedAtEnd))
    // Deliveries counted within the measured interval (the rate's and the CPU's).
    let deliveredInInterval = min(deliveredInWindow, receivedAtEnd)
    report.add("delivered_per_s", Double(deliveredInInterval) / seconds, digits: 0)
    report.addLatency(histogram)
    report.add("lost", Int(expectedDeliveries > receivedAtEnd ? expectedDeliveries - receivedAtEnd : 0))
    report.add("reordered", Int(reordered))
    report.add("disconnected", disconnected)
    if let server = usage.serverSeconds { report.add("server_cpu_s", server, digits: 2) }
    // The server's CPU per delivery over the same interval: what a server's capacity on one core
    // follows, measurable at a fixed rate that leaves the generator room (`--rate`).
    if let server = usage.serverSeconds, deliveredInInterval > 0 {
        report.add("server_cpu_ns_per_delivery", server * 1e9 / Double(deliveredInInterval), digits: 0)
    }
    // Per delivered message: what the store costs, steadier than rates on a shared machine.
    if let bytes = usage.serverStorageBytes, receivedAtEnd > 0 { report.add("server_disk_bytes_per_msg", Double(bytes) / Double(receivedAtEnd), digits: 0) }
    report.addCPU(usage, threads: traffic.count)
    report.print()
}

// MARK: - direct

struct Direct: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "P pairs exchange PRIVMSGs; loss, order and latency are checked at the receivers.")
    @OptionGroup var common: Common
    @OptionGroup var options: TrafficOptions
    @Option(help: "Pairs of clients.") var pairs = 500

    func run() async throws {
        let (group, loops) = common.makeLoops()
        let count = pairs * 2
        let nicks = (0..<count).map { "d\(runTag)\(String($0, radix: 36))" }
        if common.accounts { try await createAccounts(nicks, password: common.accountPassword, common: common, loops: loops) }
        // Both clients of a pair on the same loop: a delivery refills its peer's window there.
        let result = try await connectAll(count: count, parallel: 200, ownSockets: true, common: common, loops: loops, loopIndex: { $0 / 2 },
                                          login: { _ in common.login }, nick: { nicks[$0] })
        let connections = result.connections
        if common.ports.count > 1 {
            // The nodes of a cluster hear of each other's users a moment after they register;
            // a message sent before that to a guest on another node would find nobody.
            try await Task.sleep(for: .seconds(2))
        }
        let traffic = loops.map { LoopTraffic(loop: $0, clients: count, senderSlots: 1, slotOfSender: Array(repeating: 0, count: count)) }
        let windowed = options.rate == nil
        for connection in connections {
            let loopTraffic = traffic[connection.loopIndex]
            try await connection.eventLoop.submit {
                connection.prepareMessages(to: nicks[connection.index ^ 1], payloadBytes: options.payload, window: options.window, deliveriesPerMessage: 1)
                connection.onMessage = { receiver, payload, readAt in
                    guard let (sender, _) = loopTraffic.arrived(at: receiver.index, payload, readAt: readAt), windowed, sender == receiver.index ^ 1 else { return }
                    let peer = connections[sender]
                    peer.inFlight -= 1
                    if loopTraffic.running {
                        peer.appendMessage(sentAt: readAt)
                        peer.inFlight += 1
                        loopTraffic.needsFlush(peer)
                    }
                }
            }.get()
        }
        try await runTraffic(mode: "direct", common: common, options: options, traffic: traffic, connections: connections,
                             senders: Array(0..<count), deliveriesPerMessage: 1)
        try await finish(connections, group: group)
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
        let (group, loops) = common.makeLoops()
        let channelName = "#f\(runTag)"
        let nicks = (0..<members).map { "f\(runTag)\(String($0, radix: 36))" }
        if common.accounts { try await createAccounts(nicks, password: common.accountPassword, common: common, loops: loops) }
        let result = try await connectAll(count: members, parallel: 200, ownSockets: true, common: common, loops: loops,
                                            login: { _ in common.login }, nick: { nicks[$0] })
        let connections = result.connections
        // Everyone joins; wait until the last member's join is seen by the first. Between
        // accounts the first makes a group, closed until it opens it (MODE -i).
        let joinStart = monotonicNanoseconds()
        let joinCPU = CPUUsage.Start(serverPid: common.serverPid)
        let opened = connections[0].eventLoop.makePromise(of: Void.self)
        let joined = connections[0].eventLoop.makePromise(of: Void.self)
        let lastNick = connections.last!.nick
        let accounts = common.accounts
        try await connections[0].eventLoop.submit {
            connections[0].onOtherLine = { _, message in
                if message.command == "JOIN", message.source?.hasPrefix(lastNick + "!") == true { joined.succeed(()) }
                if message.command == "JOIN", message.source?.hasPrefix(connections[0].nick + "!") == true, !accounts { opened.succeed(()) }
                if message.command == "MODE", message.parameters.first == channelName { opened.succeed(()) }
                if message.command == "FAIL" || message.command.first == "4" { opened.fail(BenchFailure(description: "JOIN refused: \(message.command) \(message.parameters.joined(separator: " "))")) }
            }
            connections[0].send(["JOIN \(channelName)"] + (accounts ? ["MODE \(channelName) -i"] : []))
        }.get()
        try await opened.futureResult.get()
        for connection in connections.dropFirst() {
            try await connection.eventLoop.submit { connection.send(["JOIN \(channelName)"]) }.get()
        }
        if members == 1 { joined.succeed(()) }
        try await joined.futureResult.get()
        let joinSeconds = Double(monotonicNanoseconds() - joinStart) / 1e9
        let joinUsage = joinCPU.end(serverPid: common.serverPid)
        // The joins' CPU beside the traffic's: a generator busy for most of the join measures
        // itself, not the server.
        let joinBenchPercent = joinUsage.benchSeconds / joinUsage.wallSeconds * 100
        let joinServerPercent = joinUsage.serverSeconds.map { $0 / joinUsage.wallSeconds * 100 }
        progress(String(format: "fanout: %d members joined in %.2f s (generator CPU %.0f %%, server CPU %@)", members, joinSeconds,
                        joinBenchPercent, joinServerPercent.map { String(format: "%.0f %%", $0) } ?? "unknown"))

        let senderIndexes = Array(0..<min(senders, members))
        var slotOfSender = Array(repeating: -1, count: members)
        for (slot, sender) in senderIndexes.enumerated() { slotOfSender[sender] = slot }
        let traffic = loops.map { LoopTraffic(loop: $0, clients: members, senderSlots: senderIndexes.count, slotOfSender: slotOfSender) }
        // A sender's window slot frees once every member on the sender's own loop has the
        // message (with one loop: every member); the other loops only count and time it.
        var membersOnLoop = Array(repeating: 0, count: loops.count)
        for connection in connections { membersOnLoop[connection.loopIndex] += 1 }
        for sender in senderIndexes where membersOnLoop[connections[sender].loopIndex] < 2 {
            throw BenchFailure(description: "sender \(sender) has no other member on its event loop: use fewer --threads")
        }
        let windowed = options.rate == nil
        for connection in connections {
            let loopTraffic = traffic[connection.loopIndex]
            let needed = membersOnLoop[connection.loopIndex] - 1
            try await connection.eventLoop.submit {
                connection.prepareMessages(to: channelName, payloadBytes: options.payload, window: options.window, deliveriesPerMessage: needed)
                connection.onMessage = { receiver, payload, readAt in
                    guard let (sender, sequence) = loopTraffic.arrived(at: receiver.index, payload, readAt: readAt), windowed else { return }
                    let source = connections[sender]
                    guard source.loopIndex == receiver.loopIndex, source.delivered(sequence) else { return }
                    source.inFlight -= 1
                    if loopTraffic.running {
                        source.appendMessage(sentAt: readAt)
                        source.inFlight += 1
                        loopTraffic.needsFlush(source)
                    }
                }
            }.get()
        }
        try await runTraffic(mode: "fanout", common: common, options: options, traffic: traffic, connections: connections,
                             senders: senderIndexes, deliveriesPerMessage: members - 1,
                             extraFields: [("members", String(members)), ("join_seconds", String(format: "%.2f", joinSeconds)),
                                           ("join_bench_cpu_pct", String(format: "%.1f", joinBenchPercent))]
                                 + (joinServerPercent.map { [("join_server_cpu_pct", String(format: "%.1f", $0))] } ?? []))
        try await finish(connections, group: group)
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
        // One loop: the senders share their bookkeeping without locks.
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let loops = [loop]
        let password = "bench-\(runTag)-password"
        let senders = max(1, self.senders)
        // Senders first, then the recipients.
        let nicks = (0..<(senders + recipients)).map { "o\(runTag)\(String($0, radix: 36))" }
        let recipientNicks = Array(nicks[senders...])
        // Create the accounts (REGISTER), then log the recipients out.
        try await createAccounts(nicks, password: password, common: common, loops: loops)
        let senderLogins = try await connectAll(count: senders, parallel: senders, common: common, loops: loops,
                                                login: { _ in .pass(password) }, nick: { nicks[$0] })

        // Send: with echo-message, each echo is the server's word that the message is on disk.
        // Each sender sends its share to the recipients in turn; message n goes to recipient
        // n mod recipients overall, so every recipient gets the same count as with one sender.
        let sending = senderLogins.connections
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
            sending[sender].write(ByteBuffer(string: "PRIVMSG \(target) :\(sender) \(number) \(monotonicMicroseconds()) \(padding)\r\n"))
        }
        var storeLatency = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        let latencies = NIOLoopBoundBox.makeBoxSendingValue(storeLatency, eventLoop: loop)
        let cpu = CPUUsage.Start(serverPid: common.serverPid)
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
                sender.onMessage = { _, payload, readAt in
                    // Our echo: the message is stored.
                    if let (_, _, time) = parseNumbers(payload) { _ = latencies.value.record(readAt > time ? readAt - time : 0) }
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
        let storeCPU = cpu.end(serverPid: common.serverPid)
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
            let returning = try await connectAll(count: 1, parallel: 1, common: common, loops: loops, login: { _ in .pass(password) },
                                                 nick: { _ in recipientNicks[recipient] }, capabilities: ["batch", "server-time", "message-tags"]) { connection in
                connection.onMessage = { connection, payload, _ in
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
            let secondDevice = try await connectAll(count: 1, parallel: 1, common: common, loops: loops, login: { _ in .pass(password) },
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
        // CPU while storing (the replay is one client at a time).
        report.addCPU(storeCPU, threads: 1)
        report.print()
        try await finish(sending + returningConnections, group: group)
    }
}
