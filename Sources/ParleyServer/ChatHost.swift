import Foundation
import IRCWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ParleyCore
import ParleyStorage

/// Owns the chat domain for the whole server and carries out its decisions.
///
/// Ownership rule: `ChatServer` and the connection registry live in one `NIOLockedValueBox`.
/// Every event takes the lock once, lets the domain decide, resolves target channels, and leaves
/// the lock before any write, so the lock is never held across I/O or waiting. Slow work
/// re-enters through the lock: password hashing on the thread pool, storage on its own thread
/// (`StorageWriter`); the results of hashing come back on the requesting connection's event loop,
/// which keeps its replies in order.
final class ChatHost: Sendable {
    struct State: Sendable {
        var core: ChatServer
        let connections: ConnectionTable
        var connectionsPerAddress: [String: Int] = [:]
        var isShuttingDown = false
        /// Starting over after the other nodes took this node for dead: its users are gone and
        /// its copy of the shared state is being read again (`ChatHost.catchUpWithPeers`).
        var isRejoining = false
        /// Emptied after each call; kept so its arrays keep their capacity.
        var outbox = Outbox()
    }

    /// A write (or close) resolved to its channel while the lock was held.
    struct ResolvedDelivery {
        let channel: Channel
        let connection: ConnectionID
        /// The connection table's token (`ConnectionTable.token`).
        let table: UInt64
        /// The receiver's slot in the connection table (the write batch indexes by it).
        let slot: Int
        /// The receiver's event loop.
        let loop: ObjectIdentifier
        let line: ByteBuffer?
        let closeAfter: Bool
    }

    private let state: NIOLockedValueBox<State>
    let configuration: ServerConfiguration
    /// Every connection's flood allowance (`limits.floodCommandsPerSecond`, `floodBurst`).
    let floodRate: TokenBucket.Rate
    let store: any ChatStore
    let logger: Logger
    let threadPool: NIOThreadPool
    let storageWriter: StorageWriter
    /// The other nodes, when this server is one node of several.
    let cluster: (any ClusterTransport)?
    let metrics: ServerMetrics
    private let backgroundWork = NIOLockedValueBox<Int>(0)
    /// Copies of stored messages handed to several nodes that came back (see `ReturnedCopies`).
    let returnedCopies = NIOLockedValueBox(ReturnedCopies())
    /// While this node catches up with the others after its hello: what they send meanwhile.
    let catchUp = NIOLockedValueBox<CatchUp?>(nil)

    init(core: ChatServer, configuration: ServerConfiguration, store: any ChatStore, cluster: (any ClusterTransport)? = nil,
         threadPool: NIOThreadPool, metrics: ServerMetrics, logger: Logger) {
        self.state = NIOLockedValueBox(State(core: core, connections: ConnectionTable(node: core.configuration.clusterNode)))
        self.cluster = cluster
        self.configuration = configuration
        self.floodRate = TokenBucket.Rate(perSecond: configuration.limits.floodCommandsPerSecond, burst: configuration.limits.floodBurst)
        self.store = store
        self.threadPool = threadPool
        self.logger = logger
        self.metrics = metrics
        self.storageWriter = StorageWriter(store: store, backlogLimit: configuration.limits.storageQueueLimit,
                                           commitDuration: metrics.storageCommitDuration, logger: logger)
        storageWriter.setCallbacks(.init(
            deliver: { [weak self] deliveries, requests in self?.writeAfterCommit(deliveries, committed: requests) },
            notStored: { [weak self] refused in
                guard let self else { return }
                Self.write(self.perform { core, outbox in
                    for (messages, request) in refused {
                        core.messagesNotStored(messages, sender: request, now: Self.now(), into: &outbox)
                    }
                })
            },
            historyLoaded: { [weak self] ticket, result in
                guard let self else { return }
                // On the requester's loop, like a password check's result: the connection's
                // later commands wait for this read and run right after its replies.
                let requester = self.state.withLockedValue { state in
                    state.core.connection(awaitingTicket: ticket).flatMap { state.connections.delivery(to: $0, line: nil)?.channel }
                }
                self.complete(on: requester, endingBackgroundWork: false) { core, outbox in
                    core.completeHistory(ticket: ticket, result: result, now: Self.now(), into: &outbox)
                }
            }))
    }

    /// Writes lines the domain held back until their messages were committed. The senders'
    /// commits are reported to the domain on each sender's event loop after these writes: a line
    /// read before that still queues its replies behind the writer, so none can overtake them.
    func writeAfterCommit(_ deliveries: [Outbox.Delivery], committed requests: [StoreRequest]) {
        // One hand-over per event loop for the whole commit (its echoes and the report of its
        // commits), through the loop's inbox: a task per receiving connection and another per
        // sender cost two wake-ups and two tasks per message when commits were small.
        // By loop in a short array, not a dictionary: there are a few loops (one per core at
        // most), and hashing the key for each echo and each report was a good part of this
        // hand-off's cost (callgrind, offline workload).
        var byLoop: [(id: ObjectIdentifier, loop: any EventLoop, deliveries: [ResolvedDelivery], requests: [StoreRequest])] = []
        func group(_ id: ObjectIdentifier, _ loop: @autoclosure () -> any EventLoop) -> Int {
            if let index = byLoop.firstIndex(where: { $0.id == id }) { return index }
            byLoop.append((id, loop(), [], []))
            return byLoop.count - 1
        }
        state.withLockedValue { state in
            for request in requests {
                guard let loop = state.connections.loop(of: request.connection) else {
                    state.core.storesCommitted([request])
                    continue
                }
                byLoop[group(loop, state.connections.channel(of: request.connection).eventLoop)].requests.append(request)
            }
            for delivery in deliveries {
                guard let resolved = state.connections.delivery(to: delivery.connection, line: delivery.line) else { continue }
                byLoop[group(resolved.loop, resolved.channel.eventLoop)].deliveries.append(resolved)
            }
        }
        for (_, loop, deliveries, committed) in byLoop {
            let state = self.state
            LoopInbox.of(loop).deliver(deliveries, thenOnLoop: committed.isEmpty ? nil : { @Sendable in
                state.withLockedValue { $0.core.storesCommitted(committed) }
            })
        }
    }

    static func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(millisecondsSince1970: Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000)
    }

    // MARK: Connections

    enum Admission {
        case admitted(ConnectionID)
        case refused(String)
    }

    func admit(_ channel: Channel, address: String, isSecure: Bool) -> Admission {
        let limits = configuration.limits
        return state.withLockedValue { state in
            if state.isShuttingDown { return .refused("Server is shutting down") }
            if state.isRejoining { return .refused("Server is rejoining its network; try again in a moment") }
            if limits.maxConnectionsPerAddress > 0, state.connectionsPerAddress[address, default: 0] >= limits.maxConnectionsPerAddress {
                return .refused("Too many connections from your address")
            }
            if limits.maxUnregisteredConnections > 0,
               state.core.unregisteredConnectionCount >= limits.maxUnregisteredConnections {
                return .refused("Too many connections are registering; try again shortly")
            }
            let id = state.connections.insert(channel, address: address)
            state.connectionsPerAddress[address, default: 0] += 1
            state.core.connectionOpened(id, host: Self.displayHost(address), isSecure: isSecure, now: Self.now())
            return .admitted(id)
        }
    }

    /// IPv6 addresses starting with ':' would be misread as a trailing parameter in replies.
    static func displayHost(_ address: String) -> String {
        address.hasPrefix(":") ? "0" + address : address
    }

    /// Runs one domain call under the lock and returns the writes it decided on, resolved.
    func perform(_ body: (inout ChatServer, inout Outbox) -> Void) -> [ResolvedDelivery] {
        var resolved: [ResolvedDelivery] = []
        var noHold: StorageWriter.Hold?
        perform(into: &resolved, storageHold: &noHold, holding: false, body)
        return resolved
    }

    /// The message path: like `perform(_:)`, but appending to this thread's write batch (one
    /// array reused, not one per message), and storage work waits for the end of the batch
    /// (`WriteBatch.flush()` releases the hold), so the messages of one read burst are committed
    /// together.
    /// The lines go straight into the batch (`loop` is the calling thread's event loop): no
    /// resolved copy per line, and a receiver's channel is looked up only for its first line of
    /// the round. A line for one receiver alone is encoded in place in the receiver's output
    /// (`Outbox.sink`).
    func perform(into batch: WriteBatch, onLoop loop: ObjectIdentifier, _ body: (inout ChatServer, inout Outbox) -> Void) {
        var unused: [ResolvedDelivery] = []
        batch.begin(onLoop: loop)
        perform(into: &unused, batch: batch, storageHold: &batch.storageHold, holding: true, body)
    }

    private func perform(into resolved: inout [ResolvedDelivery], batch: WriteBatch? = nil, storageHold: inout StorageWriter.Hold?, holding: Bool,
                         _ body: (inout ChatServer, inout Outbox) -> Void) {
        var actions: [(CoreAction, requester: Channel?)] = []
        state.withLockedValue { state in
            if let batch {
                // Lines for one receiver are encoded straight into its output in the batch.
                batch.lend(state.connections)
                state.outbox.sink = batch
            }
            body(&state.core, &state.outbox)
            state.outbox.sink = nil
            // Nothing to clear when the domain's lines all went into the batch (a direct message).
            guard !state.outbox.isEmpty else { return }
            defer { state.outbox.removeAll() }
            // Lines for other nodes' connections, by node, in order.
            var remote: [UInt16: ByteBuffer] = [:]
            // Channel lines go to every node that writes them to its own members, in their
            // place among the lines for single connections.
            let channelLines = state.outbox.channelLines
            var nextChannelLine = 0
            func appendChannelLines(queuedBefore position: Int) {
                while nextChannelLine < channelLines.count, channelLines[nextChannelLine].afterDeliveries <= position {
                    let channelLine = channelLines[nextChannelLine]
                    nextChannelLine += 1
                    var record = ByteBuffer()
                    ClusterCodec.append(.channelLine(channel: channelLine.channel, statusPrefix: channelLine.statusPrefix, line: channelLine.line),
                                        to: &record)
                    for node in state.core.channelLineNodes { remote[node, default: ByteBuffer()].writeImmutableBuffer(record) }
                }
            }
            for (position, delivery) in state.outbox.deliveries.enumerated() {
                if !channelLines.isEmpty { appendChannelLines(queuedBefore: position) }
                if let batch {
                    if batch.add(delivery.line, to: delivery.connection, in: state.connections) { continue }
                } else if let resolvedDelivery = state.connections.delivery(to: delivery.connection, line: delivery.line) {
                    resolved.append(resolvedDelivery)
                    continue
                }
                // Not a connection of this node (any more).
                if cluster != nil, !state.core.isLocal(delivery.connection) {
                    ClusterCodec.append(.lines(delivery.connection, delivery.line), to: &remote[delivery.connection.node, default: ByteBuffer()])
                }
            }
            if !channelLines.isEmpty { appendChannelLines(queuedBefore: .max) }
            if let cluster {
                // Sent while the lock is held: the order of the domain's decisions is the order
                // in which the other nodes see them.
                if !state.outbox.clusterEvents.isEmpty {
                    var events = ByteBuffer()
                    for event in state.outbox.clusterEvents { ClusterCodec.append(.event(event), to: &events) }
                    cluster.send(events, to: nil)
                }
                // In the same payload as the lines they mark, so that both come back together.
                for handOver in state.outbox.handOvers {
                    let record: ClusterRecord = handOver.alsoVia.isEmpty
                        ? .handedOver(messageID: handOver.messageID, account: handOver.account)
                        : .handedOverToSeveral(messageID: handOver.messageID, account: handOver.account, alsoVia: handOver.alsoVia)
                    ClusterCodec.append(record, to: &remote[handOver.node, default: ByteBuffer()])
                }
                for action in state.outbox.actions {
                    if case .close(let id) = action, !state.core.isLocal(id) {
                        ClusterCodec.append(.close(id), to: &remote[id.node, default: ByteBuffer()])
                    }
                }
                for (node, payload) in remote { cluster.send(payload, to: node) }
            }
            guard !state.outbox.actions.isEmpty else { return }
            var writes: [CoreAction] = []
            for action in state.outbox.actions {
                if case .close(let id) = action {
                    // The channel stays registered until it is inactive, so that shutdown can
                    // wait for the final ERROR lines to leave.
                    if let batch {
                        _ = batch.add(nil, closeAfter: true, to: id, in: state.connections)
                    } else if let closing = state.connections.delivery(to: id, line: nil, closeAfter: true) {
                        resolved.append(closing)
                    }
                } else if action.isOrderedStorageWrite {
                    writes.append(action)
                } else {
                    let requester = state.core.connection(awaiting: action).flatMap { state.connections.delivery(to: $0, line: nil)?.channel }
                    actions.append((action, requester))
                }
            }
            if !writes.isEmpty { storageWriter.enqueue(writes, hold: &storageHold, holding: holding) }
        }
        for (action, requester) in actions { start(action, requester: requester) }
    }

    /// While true, new connections are refused (`State.isRejoining`).
    func setRejoining(_ rejoining: Bool) {
        state.withLockedValue { $0.isRejoining = rejoining }
    }

    /// Reads the domain under the lock.
    func withCore<Result>(_ body: (ChatServer) -> Result) -> Result {
        state.withLockedValue { body($0.core) }
    }

    /// A write to one of this node's connections, resolved to its channel.
    func resolve(_ connection: ConnectionID, line: ByteBuffer?, closeAfter: Bool) -> ResolvedDelivery? {
        state.withLockedValue { $0.connections.delivery(to: connection, line: line, closeAfter: closeAfter) }
    }

    private func forget(_ id: ConnectionID, in state: inout State) {
        if let address = state.connections.remove(id) {
            let remaining = state.connectionsPerAddress[address, default: 1] - 1
            state.connectionsPerAddress[address] = remaining > 0 ? remaining : nil
        }
    }

    /// The socket is gone: tell the domain (which may notify others) and forget the channel.
    func connectionClosed(_ id: ConnectionID, reason: String) {
        let deliveries = perform { core, outbox in core.connectionClosed(id, reason: reason, now: Self.now(), into: &outbox) }
        state.withLockedValue { forget(id, in: &$0) }
        Self.write(deliveries)
    }

    /// Writes deliveries from outside any connection's pipeline: one hop per event loop, where
    /// they join that loop's round write (`WriteBatch`), each receiver's lines in one buffer.
    static func write(_ deliveries: [ResolvedDelivery]) {
        guard !deliveries.isEmpty else { return }
        var byLoop: [ObjectIdentifier: (any EventLoop, [ResolvedDelivery])] = [:]
        var order: [ObjectIdentifier] = []
        for delivery in deliveries {
            if byLoop[delivery.loop] == nil { order.append(delivery.loop); byLoop[delivery.loop] = (delivery.channel.eventLoop, []) }
            byLoop[delivery.loop]!.1.append(delivery)
        }
        for key in order {
            let (loop, items) = byLoop[key]!
            loop.execute {
                WriteBatch.current.queue(items, onLoop: loop)
            }
        }
    }

    /// On the channel's own loop, at the end of a round (`WriteBatch`): the lines and the flush
    /// in one pass through the pipeline; a close waits until they have gone out.
    static func send(_ bytes: ByteBuffer, closing: Bool, to channel: Channel) {
        if closing {
            if bytes.readableBytes > 0 { channel.write(bytes, promise: nil) }
            closeAfterFlush(channel)
        } else {
            channel.writeAndFlush(bytes, promise: nil)
        }
    }

    /// Flushes, then closes once the data has gone out (the client sees its ERROR line).
    static func closeAfterFlush(_ channel: Channel) {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(ByteBuffer(), promise: promise)
        promise.futureResult.whenComplete { _ in channel.close(promise: nil) }
        // A client that stops reading never lets the flush finish: close anyway.
        channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
    }

    // MARK: Slow work

    /// Hands the result of slow work back to the domain on the requesting connection's event
    /// loop, where its reads are handled: the replies then come in the order the domain decided
    /// them, before those of any line read later (written from the pool thread, they could be
    /// overtaken by the connection's next read batch, or by the next check's result). Ends the
    /// background work begun for it.
    private func complete(on requester: Channel?, endingBackgroundWork: Bool = true,
                          _ body: @escaping @Sendable (inout ChatServer, inout Outbox) -> Void) {
        guard let requester else {
            Self.write(perform(body))
            if endingBackgroundWork { endBackgroundWork() }
            return
        }
        requester.eventLoop.execute { [self] in
            let batch = WriteBatch.current
            perform(into: batch, onLoop: ObjectIdentifier(requester.eventLoop), body)
            batch.flush()
            if endingBackgroundWork { endBackgroundWork() }
        }
    }

    private func start(_ action: CoreAction, requester: Channel?) {
        switch action {
        case .close:
            break
        case .checkPassword(let ticket, let credential, let password):
            beginBackgroundWork()
            threadPool.submit { [self] _ in
                let succeeded = credential.verify(password: password)
                complete(on: requester) { core, outbox in
                    core.completePasswordCheck(ticket: ticket, succeeded: succeeded, now: Self.now(), into: &outbox)
                }
            }
        case .createAccount(let ticket, let name, let key, let password, let email, let iterations):
            beginBackgroundWork()
            let store = self.store
            let pool = self.threadPool
            Task { [self] in
                let result: AccountCreationResult
                do {
                    let credential = try await pool.runIfActive {
                        PasswordCredential.derive(password: password, iterations: iterations)
                    }
                    let record = AccountRecord(name: name, key: key, credential: credential, createdAt: Date(), lastSeen: nil, email: email)
                    try await store.insertAccount(record)
                    result = .created(record)
                    logger.info("account registered", metadata: ["account": "\(name)"])
                } catch StoreError.accountExists {
                    result = .nameTaken
                } catch {
                    logger.error("account registration failed", metadata: ["account": "\(name)", "error": "\(error)"])
                    result = .failed("storage is unavailable")
                }
                complete(on: requester) { core, outbox in
                    core.completeAccountCreation(ticket: ticket, result: result, now: Self.now(), into: &outbox)
                }
            }
        case .recordLastSeen, .createGroup, .saveGroup, .saveGroupSettings, .saveGroupMember, .deleteGroup, .storeMessages, .updateRecipients, .saveReadMarker,
             .saveGroupReadPosition, .saveReceiptsPendingSince, .saveAccountSettings, .pruneHistory, .deleteMessage, .loadHistory:
            break  // ordered storage work goes through `storageWriter`
        }
    }

    private func beginBackgroundWork() { backgroundWork.withLockedValue { $0 += 1 } }
    private func endBackgroundWork() { backgroundWork.withLockedValue { $0 -= 1 } }

    var backgroundWorkInFlight: Int { backgroundWork.withLockedValue { $0 } + (storageWriter.isIdle ? 0 : 1) }

    // MARK: Timers and shutdown

    func tick() {
        let workingSince = storageWriter.workingSince
        Self.write(perform { core, outbox in
            let now = Self.now()
            core.tick(now: now, into: &outbox)
            if let workingSince { core.storageIsWorking(since: workingSince, now: now, into: &outbox) }
        })
    }

    /// Refuses new connections, tells every client why, and closes them.
    func beginShutdown(reason: String) {
        let deliveries = perform { core, outbox in core.shutdown(reason: reason, now: Self.now(), into: &outbox) }
        state.withLockedValue { $0.isShuttingDown = true }
        Self.write(deliveries)
    }

    var passwordChecksInFlight: Int { state.withLockedValue { $0.core.passwordChecksInFlight } }

    /// The metrics exposition: the domain's totals and the lines it queued, read under the lock.
    func metricsExposition() -> [UInt8] {
        let (counters, lines, passwordChecks) = state.withLockedValue { ($0.core.counters, $0.outbox.linesQueued, $0.core.passwordChecksInFlight) }
        return metrics.exposition(counters: counters, linesQueued: lines, storageQueue: storageWriter.queueDepth, passwordChecks: passwordChecks)
    }
    var openChannelCount: Int { state.withLockedValue { $0.connections.count } }
    var connectionCount: Int { state.withLockedValue { $0.core.connectionCount } }
}
