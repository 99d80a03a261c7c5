import Foundation
import IRCWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import ParleyCore
import ParleyStorage
import Prometheus
import ServiceLifecycle

/// The running server: listeners on every configured address, one chat domain behind them, and a
/// storage backend. Run it in a `ServiceGroup`; on graceful shutdown (SIGINT/SIGTERM) it stops
/// accepting, tells every client why, closes them, and waits for storage work to finish.
public final class ParleyServer: Service, Sendable {
    public let configuration: ServerConfiguration
    /// Internal, not private: tests wait on its background work (a password check in flight).
    let host: ChatHost
    private let group: any EventLoopGroup
    private let logger: Logger
    private let tlsContext: NIOSSLContext?
    /// The web client, read once at start-up (only when some listener speaks HTTP).
    private let webClient: WebClientFiles?
    private let metricsExposure: ServerConfiguration.MetricsExposure
    private let boundAddresses = NIOLockedValueBox<[SocketAddress]>([])
    private let ready = NIOLockedValueBox<[CheckedContinuation<Void, any Error>]>([])
    private let readiness = NIOLockedValueBox<Result<Void, any Error>?>(nil)
    private let boundMetricsAddress = NIOLockedValueBox<SocketAddress?>(nil)

    /// - Parameters:
    ///   - store: where accounts and messages live; it is loaded here and not closed by the server.
    ///   - cluster: the other nodes sharing `store`, when this server is one node of several.
    ///   - metricsRegistry: where the server's metrics are kept (one per server: see `ServerMetrics`).
    public init(
        configuration: ServerConfiguration, store: any ChatStore, cluster: (any ClusterTransport)? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        metricsRegistry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
        logger: Logger
    ) async throws {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.metricsExposure = try configuration.metricsExposure()
        var chat = try configuration.chatConfiguration()
        chat.version = "parley-0.1"
        if let cluster {
            chat.clusterNode = cluster.nodeNumber
            chat.clusterNodeName = cluster.nodeName
            (store as? any ClusterDeliveryStore)?.holdUndelivered(asNode: cluster.nodeName)
        }
        let accounts = try await store.loadAccounts()
        let groups = try await store.loadGroups()
        let delivery = try await store.loadDeliveryState(
            since: ChatHost.now().adding(milliseconds: -chat.historyRetentionMilliseconds), maxTrackedRecipients: chat.maxTrackedRecipients)
        let core = ChatServer(configuration: chat, accounts: accounts, groups: groups, delivery: delivery, startedAt: ChatHost.now())
        let metrics = ServerMetrics(registry: metricsRegistry)
        if let cluster { metrics.identify(node: cluster.nodeName, number: cluster.nodeNumber) }
        self.host = ChatHost(core: core, configuration: configuration, store: store, cluster: cluster, threadPool: NIOThreadPool.singleton,
                             metrics: metrics, logger: logger)
        if configuration.listeners.contains(where: \.tls) {
            guard let settings = configuration.tls else { throw ConfigurationError.tlsListenerWithoutCertificate }
            let certificates = try NIOSSLCertificate.fromPEMFile(settings.certificateFile)
            let key = try NIOSSLPrivateKey(file: settings.privateKeyFile, format: .pem)
            // swift-nio-ssl's server default accepts TLS 1.0; its default cipher list (kept) is
            // the modern one.
            var tls = TLSConfiguration.makeServerConfiguration(
                certificateChain: certificates.map { .certificate($0) }, privateKey: .privateKey(key))
            tls.minimumTLSVersion = settings.minimumVersion.nioSSLVersion
            self.tlsContext = try NIOSSLContext(configuration: tls)
        } else {
            self.tlsContext = nil
        }
        let webClient = configuration.listeners.contains(where: \.http) ? try WebClientFiles.bundled() : nil
        if let webClient, webClient.isEmpty {
            logger.warning("the web client's files (Parley_ParleyWeb.resources beside the executable) were not found: web listeners serve only /irc")
        }
        self.webClient = webClient
        logger.info("loaded accounts and groups", metadata: [
            "accounts": "\(accounts.count)", "groups": "\(groups.count)",
            "undelivered": "\(delivery.undelivered.values.reduce(0) { $0 + $1.count })",
        ])
    }

    /// The addresses actually bound, in configuration order (useful with port 0).
    public var localAddresses: [SocketAddress] { boundAddresses.withLockedValue { $0 } }

    /// The address of the metrics listener (`metrics.listen` set to an address), once bound.
    public var metricsAddress: SocketAddress? { boundMetricsAddress.withLockedValue { $0 } }

    /// Waits until every listener is bound (or binding failed).
    public func waitUntilListening() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let result: Result<Void, any Error>? = readiness.withLockedValue { result in
                if result == nil { ready.withLockedValue { $0.append(continuation) } }
                return result
            }
            if let result { continuation.resume(with: result) }
        }
    }

    private func signalReadiness(_ result: Result<Void, any Error>) {
        let waiters = readiness.withLockedValue { state -> [CheckedContinuation<Void, any Error>] in
            state = result
            return ready.withLockedValue { waiters in
                defer { waiters.removeAll() }
                return waiters
            }
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    public func run() async throws {
        await host.resumeFollowing()
        // Caught up with the other nodes before any user comes in (`ChatHost.joinCluster`).
        await host.joinCluster()
        var listeners: [Channel] = []
        do {
            for listener in configuration.listeners {
                let channel = try await bind(listener)
                listeners.append(channel)
                if let address = channel.localAddress {
                    boundAddresses.withLockedValue { $0.append(address) }
                    logger.info("listening", metadata: ["address": "\(address)", "tls": "\(listener.tls)", "http": "\(listener.http)"])
                }
            }
            if case .listener(let listener) = metricsExposure {
                let channel = try await bindMetrics(listener)
                listeners.append(channel)
                boundMetricsAddress.withLockedValue { $0 = channel.localAddress }
                logger.info("serving metrics", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "-")"])
            }
        } catch {
            for channel in listeners { try? await channel.close() }
            signalReadiness(.failure(error))
            throw error
        }
        signalReadiness(.success(()))

        let host = self.host
        let ticker = group.next().scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            host.tick()
        }
        let lagProbe = metricsExposure == .off ? nil : EventLoopLagProbe(group: group, metrics: host.metrics)

        // Serve until a graceful shutdown is requested (SIGINT/SIGTERM via the ServiceGroup).
        try? await gracefulShutdown()

        logger.info("shutting down")
        ticker.cancel()
        lagProbe?.stop()
        for channel in listeners { try? await channel.close() }
        host.beginShutdown(reason: "Server shutting down")
        // Give clients a moment to receive ERROR; finish storage work already started.
        let deadline = ContinuousClock.now + .seconds(3)
        while (host.openChannelCount > 0 || host.backgroundWorkInFlight > 0) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        // The storage thread finishes what it was handed (even past the deadline: nothing
        // accepted is dropped), then ends, before the caller closes the store.
        await host.storageWriter.stop()
        await host.cluster?.leave()
        logger.info("stopped", metadata: ["unfinished": "\(host.backgroundWorkInFlight)"])
    }

    private func bind(_ listener: ServerConfiguration.Listener) async throws -> Channel {
        let host = self.host
        let logger = self.logger
        let tlsContext = listener.tls ? self.tlsContext : nil
        let sendQueue = max(1024, configuration.limits.sendQueueBytes)
        let maxLine = configuration.limits.maxLineBytes
        let web = listener.http
            ? WebSocketOriginPolicy(allowedOrigins: Set(configuration.web.allowedOrigins), secure: listener.tls,
                                    trustedProxies: Set(configuration.web.trustedProxies))
            : nil
        let site = webClient ?? WebClientFiles(sources: [:])
        let metrics: MetricsEndpoint? = if case .web(let allowRemote) = metricsExposure {
            MetricsEndpoint(host: host, allowsRemotePeers: allowRemote)
        } else {
            nil
        }
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // No child TCP_NODELAY: NIO sets it on the listening socket and accepted sockets
            // inherit it; setting it again cost a system call and a future per connection.
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Child options set here, synchronously: as bootstrap child options each one
                    // cost a chain of futures per connection.
                    guard let options = channel.syncOptions else { throw ChannelError.operationUnsupported }
                    try options.setOption(.writeBufferWaterMark, value: .init(low: sendQueue / 2, high: sendQueue))
                    try options.setOption(.maxMessagesPerRead, value: 16)
                    // NIO keeps each connection's receive buffer for reuse; its default first size
                    // (2 KB) was most of an idle connection's memory. IRC lines are short (a
                    // client's registration, NICK and USER, is about 50 bytes), and a busy
                    // connection's buffer still grows (and shrinks) with what it reads.
                    try options.setOption(.recvAllocator, value: CompactRecvByteBufferAllocator(minimum: 64, initial: 64, maximum: 65536))
                    let sync = channel.pipeline.syncOperations
                    if let tlsContext {
                        try sync.addHandler(NIOSSLServerHandler(context: tlsContext))
                    }
                    if let web {
                        try Self.addWebHandlers(to: channel, web, site: site, metrics: metrics, host: host, isSecure: tlsContext != nil,
                                                maximumLineBytes: maxLine, logger: logger)
                    } else {
                        try sync.addHandler(IRCConnectionHandler(host: host, isSecure: tlsContext != nil, maximumLineBytes: maxLine))
                    }
                }
            }
        if listener.address.contains(":") {
            // Without V6ONLY an IPv6 wildcard socket also claims the IPv4 port (see STACK.md).
            bootstrap = bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1)
        }
        return try await bootstrap.bind(host: listener.address, port: listener.port).get()
    }

    /// A plain HTTP listener that serves `/metrics` and nothing else, to whoever reaches it: its
    /// address is the operator's choice of who may.
    private func bindMetrics(_ listener: ServerConfiguration.Listener) async throws -> Channel {
        let endpoint = MetricsEndpoint(host: host, allowsRemotePeers: true)
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(WebHTTPHandler(origins: nil, site: WebClientFiles(sources: [:]), metrics: endpoint))
                }
            }
        if listener.address.contains(":") {
            bootstrap = bootstrap.serverChannelOption(ChannelOptions.Types.SocketOption(level: .ipv6, name: .ipv6_v6only), value: 1)
        }
        return try await bootstrap.bind(host: listener.address, port: listener.port).get()
    }
}

extension ParleyServer {
    /// A web listener's pipeline: HTTP (the web client's files), upgraded at `/irc` to IRCv3 WebSocket, after which the
    /// connection is an ordinary IRC session behind `IRCWebSocketAdapter`. An upgrade request at `/` is accepted too:
    /// generic IRC WebSocket clients are given a bare `ws://host:port` address, and a browser asking for the page at `/`
    /// never sends `Upgrade`, so the two do not collide.
    static func addWebHandlers(to channel: Channel, _ origins: WebSocketOriginPolicy, site: WebClientFiles, metrics: MetricsEndpoint?, host: ChatHost, isSecure: Bool,
                               maximumLineBytes: Int, logger: Logger) throws {
        let upgrader = NIOWebSocketServerUpgrader(
            // Room for a line over the limit, so that it is answered with 417 as on TCP rather
            // than by closing the WebSocket.
            maxFrameSize: max(16_384, 2 * maximumLineBytes),
            shouldUpgrade: { channel, head in
                let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
                guard WebSocketOriginPolicy.upgradePaths.contains(path), origins.allows(head) else { return channel.eventLoop.makeSucceededFuture(nil) }
                var headers = HTTPHeaders()
                if let chosen = WebSocketSubprotocol.choose(from: head.headers) {
                    headers.add(name: "Sec-WebSocket-Protocol", value: chosen.rawValue)
                }
                return channel.eventLoop.makeSucceededFuture(headers)
            },
            upgradePipelineHandler: { channel, head in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(IRCWebSocketAdapter(subprotocol: WebSocketSubprotocol.choose(from: head.headers), maximumLineBytes: maximumLineBytes))
                    let peer = IRCConnectionHandler.normalizedAddress(channel.remoteAddress)
                    let client = ForwardedFor.clientAddress(peer: peer, headers: head.headers, trustedProxies: origins.trustedProxies)
                    try sync.addHandler(IRCConnectionHandler(
                        host: host, isSecure: isSecure, maximumLineBytes: maximumLineBytes,
                        forwardedAddress: client == peer ? nil : client, isWebSocket: true))
                }
            })
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                // The HTTP handler has no part in a WebSocket connection.
                context.pipeline.removeHandler(name: WebHTTPHandler.name, promise: nil)
            }))
        try channel.pipeline.syncOperations.addHandler(WebHTTPHandler(origins: origins, site: site, metrics: metrics), name: WebHTTPHandler.name)
    }
}

extension ServerConfiguration.TLSVersion {
    var nioSSLVersion: NIOSSL.TLSVersion {
        switch self {
        case .v1_0: .tlsv1
        case .v1_1: .tlsv11
        case .v1_2: .tlsv12
        case .v1_3: .tlsv13
        }
    }
}

/// NIO's `AdaptiveRecvByteBufferAllocator`, in 13 bytes instead of 41: a channel keeps its
/// receive allocator as an existential, and one larger than three words is boxed, a heap object
/// per connection (about 64 bytes of an idle connection's memory). The same policy: sizes are
/// powers of two; the next buffer doubles after a read that filled the last one, and halves
/// after two reads in a row that would have fitted in half.
struct CompactRecvByteBufferAllocator: RecvByteBufferAllocator {
    private let minimum: UInt32
    private let maximum: UInt32
    private var next: UInt32
    private var decreaseNow = false

    init(minimum: Int, initial: Int, maximum: Int) {
        precondition(0 < minimum && minimum <= initial && initial <= maximum && maximum <= 1 << 30)
        func powerOfTwo(atMost value: Int) -> UInt32 { UInt32(1) << (Int.bitWidth - 1 - value.leadingZeroBitCount) }
        self.minimum = powerOfTwo(atMost: minimum)
        self.next = powerOfTwo(atMost: initial)
        self.maximum = powerOfTwo(atMost: maximum)
    }

    func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
        allocator.buffer(capacity: Int(next))
    }

    func nextBufferSize() -> Int? { Int(next) }

    mutating func record(actualReadBytes: Int) -> Bool {
        let half = next >> 1
        if actualReadBytes <= Int(half) && half >= minimum {
            if decreaseNow { next = half }
            decreaseNow.toggle()
            return false
        }
        decreaseNow = false
        if actualReadBytes >= Int(next) && next << 1 <= maximum {
            next <<= 1
            return true
        }
        return false
    }
}
