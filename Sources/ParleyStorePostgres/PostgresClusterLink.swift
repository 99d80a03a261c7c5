import Foundation
import Logging
import NIOCore
import NIOPosix
import ParleyStorage
import PostgresNIO
import Synchronization

/// The cluster's transport through the shared PostgreSQL database.
///
/// - A node is alive while it holds a session-level advisory lock on its number (on `control`,
///   a connection with TCP keepalives, so that even a node that lost power lets go within
///   about half a minute). Each node checks the others' locks every `checkInterval`, and takes
///   a node for dead when `missedChecksBeforeDead` checks in a row find its lock missing.
/// - A payload for a node is a row in `cluster_events` (its target's), followed by
///   `pg_notify('parley_node_<number>')` in the same statement. The receiver reads its rows
///   when notified, and every second in case a notification was missed (a notification nobody
///   listens to is lost; the row is not), applies them in order of id, then deletes them by id.
///   Rows are written by one connection per node in order, so each sender's rows arrive in the
///   order it sent them. A read that fails loses nothing (a plain SELECT changes nothing, and
///   is not held up by rows another transaction locked); rows applied whose DELETE failed or
///   timed out (it may still complete on the server) are remembered by id: skipped by the next
///   reads, and deleted again until a DELETE succeeds. So each payload is applied once.
/// - A row whose INSERT failed or timed out (it may still commit on the server) is written
///   again as it was, before anything newer, with the same sequence number of its sender's run:
///   its receiver skips a row whose sequence it has applied already from that run.
/// - What is queued while writes fail (the database is down) is kept and sent when it is back,
///   up to `maxQueuedPayloads`; past that the oldest are dropped (and logged), since a node that
///   long apart from the others will be taken for dead by them anyway.
/// - A node is declared dead by a peer that takes its lock: so one peer at a time does it, and
///   a node that was only cut off cannot take its lock back meanwhile. While holding it the
///   peer returns the dead node's untaken rows to their senders (`returned_from`), counts the
///   death in `cluster_nodes.declared_dead` (how a node that was only cut off learns it was
///   taken for dead), and lets the shell take over what the dead node held.
public final class PostgresClusterLink: ClusterTransport {
    public let nodeNumber: UInt16
    public let nodeName: String
    private let url: PostgresDatabaseURL
    private let logger: Logger
    private let eventLoopGroup: any EventLoopGroup
    private let checkInterval: Duration
    private let maxQueuedPayloads = 100_000
    /// The first int of the advisory lock pair: "parl". The second is the node number.
    public static let lockClass: Int64 = 0x7061_726C
    /// How many checks in a row must find a peer's lock missing before it is taken for dead. A
    /// node whose connection to the database dropped for a moment (a backend terminated, a
    /// network blip; its notifications go with it) takes its lock back within a couple of
    /// seconds: taken for dead at the first check, it disconnected all its users when back (it
    /// starts over); with a second check, it carries on and takes what was sent to it meanwhile.
    static let missedChecksBeforeDead = 2

    private struct State {
        var control: PostgresConnection
        var writer: PostgresConnection
        var queue: [(target: UInt16?, payload: ByteBuffer)] = []
        var peers: Set<UInt16> = []
        var leaving = false
        var tasks: [Task<Void, Never>] = []
        var rejoined: (@Sendable (_ wasTakenForDead: Bool) -> Void)?
        var returned: (@Sendable (UInt16, ByteBuffer) -> Void)?
        /// Nodes this node declared dead, until they are heard from again: what is still
        /// queued for them goes back to the shell as returned instead of into a row nobody reads.
        var departed: Set<UInt16> = []
        /// `cluster_nodes.declared_dead` of this node when it last held its lock.
        var declaredDead: Int64 = 0
        /// Whether `control` holds this node's lock. After the database was lost, a connection of
        /// this node that the database has not yet seen close may still hold it: `control` is
        /// opened again without it, and each liveness check tries to take it back.
        var holdsOwnLock = true
        /// While `control` is being opened again: the listener, the reader and the liveness check
        /// each notice a closed connection, and a second fresh one would find the lock taken by
        /// the first and replace it (leaving the lock on a connection nobody uses).
        var reconnectingControl = false
        /// When `control` was last opened again: for a while after, a peer whose lock is
        /// missing may just not have reconnected yet, so it is not taken for dead.
        var reconnectedAt: ContinuousClock.Instant?
        /// Peers whose lock the last checks found missing, and how many checks in a row.
        var missedChecks: [UInt16: Int] = [:]
        /// Ids of `cluster_events` rows applied whose DELETE has not succeeded yet.
        var appliedNotDeleted: Set<Int64> = []
        /// The next row's sequence number in this run.
        var nextSequence: Int64 = 1
        /// Rows whose INSERT failed, in order: written again, as they are, before anything newer.
        var unsent: [Row] = []
        /// Per sender, its run and the highest sequence applied from it.
        var lastApplied: [UInt16: (run: Int64, sequence: Int64)] = [:]
    }
    private struct Row {
        var target: UInt16
        var payload: ByteBuffer
        var sequence: Int64
    }
    /// This run's number, random: a row's sender run and sequence tell a row written again.
    private let run = Int64.random(in: 1...Int64.max)
    private let state: Mutex<State>
    private let writerWake: AsyncStream<Void>.Continuation
    private let writerWakes: AsyncStream<Void>
    private let readerWake: AsyncStream<Void>.Continuation
    private let readerWakes: AsyncStream<Void>
    private let writerIdle = Mutex<[CheckedContinuation<Void, Never>]>([])

    private init(number: UInt16, name: String, url: PostgresDatabaseURL, logger: Logger, eventLoopGroup: any EventLoopGroup,
                 checkInterval: Duration, control: PostgresConnection, writer: PostgresConnection, peers: Set<UInt16>, declaredDead: Int64) {
        nodeNumber = number
        nodeName = name
        self.url = url
        self.logger = logger
        self.eventLoopGroup = eventLoopGroup
        self.checkInterval = checkInterval
        state = Mutex(State(control: control, writer: writer, peers: peers, declaredDead: declaredDead))
        (writerWakes, writerWake) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        (readerWakes, readerWake) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Whether `name` can name a node: it goes into message ids and notification channels.
    public static func isValidNodeName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...32).contains(bytes.count), bytes[0] != UInt8(ascii: "-") else { return false }
        return bytes.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "-") }
    }

    /// Takes the node's name (refused while a running node holds it) and its number. The schema
    /// must be current (open the store first).
    public static func join(
        url: PostgresDatabaseURL, nodeName: String, checkInterval: Duration = .seconds(5),
        logger: Logger = Logger(label: "parley.cluster"),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> PostgresClusterLink {
        guard isValidNodeName(nodeName) else { throw PostgresStoreError.invalidNodeName(nodeName) }
        var opened: [PostgresConnection] = []
        do {
            let control = try await connect(url: url, node: nodeName, logger: logger, on: eventLoopGroup.next(), asControl: true)
            opened.append(control)
            let (number, declaredDead) = try await takeNumber(nodeName, on: control, logger: logger)
            let writer = try await connect(url: url, node: nodeName, logger: logger, on: eventLoopGroup.next(), asControl: false)
            opened.append(writer)
            let peers = try await liveNodes(on: control, except: number, logger: logger)
            logger.info("joined the cluster", metadata: ["node": "\(nodeName)", "number": "\(number)", "peers": "\(peers.sorted())"])
            return PostgresClusterLink(number: number, name: nodeName, url: url, logger: logger, eventLoopGroup: eventLoopGroup,
                                       checkInterval: checkInterval, control: control, writer: writer, peers: peers, declaredDead: declaredDead)
        } catch {
            for connection in opened { try? await connection.close() }
            throw PostgresStoreError(error, url: url)
        }
    }

    /// - Parameter node: the node's name, or what else connects (shown in `pg_stat_activity`).
    private static func connect(url: PostgresDatabaseURL, node: String, logger: Logger, on eventLoop: any EventLoop, asControl: Bool) async throws -> PostgresConnection {
        let name = "parley-server \(node) cluster \(asControl ? "control" : "writer")"
        let connection = try await PostgresConnection.connect(
            on: eventLoop, configuration: PostgresChatStore.configuration(for: url, applicationName: name), id: 3, logger: logger).get()
        if asControl {
            // A node that vanishes without closing its socket (power loss, a cut network) lets
            // go of its lock once the server's keepalives give up: about 10 + 5 * 3 seconds.
            try await connection.runAsync("SET tcp_keepalives_idle = 10", logger: logger)
            try await connection.runAsync("SET tcp_keepalives_interval = 5", logger: logger)
            try await connection.runAsync("SET tcp_keepalives_count = 3", logger: logger)
            // A statement waiting on rows another transaction locked fails on the server well
            // before the client's timeout gives up on it (which closes the connection, and with
            // it the liveness lock and notifications): the connection stays usable.
            try await connection.runAsync("SET lock_timeout = '2s'", logger: logger)
        }
        return connection
    }

    /// The node's number for its name, and its liveness lock; a name held by a live node is refused.
    private static func takeNumber(_ name: String, on control: PostgresConnection, logger: Logger) async throws -> (UInt16, declaredDead: Int64) {
        try await control.runAsync(
            "INSERT INTO cluster_nodes (name, started_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            [.text(name), .int(Int64(Date().timeIntervalSince1970 * 1000))], logger: logger)
        var number: Int64?
        for row in try await control.runAsync("SELECT number FROM cluster_nodes WHERE name = ?", [.text(name)], logger: logger) {
            number = Int64(try row.decode(Int32.self))
        }
        guard let number else { throw PostgresStoreError.server("node \(name) vanished from cluster_nodes") }
        guard number >= 1, number <= 4095 else { throw PostgresStoreError.tooManyNodeNames }
        // A node restarted right after it was stopped or killed may find its previous run's
        // lock still held for a moment, until the database notices that connection is gone (or
        // while a peer declares that run dead).
        guard try await lock(UInt16(number), on: control, attempts: 10, logger: logger) else { throw PostgresStoreError.nodeNameInUse(name) }
        // A new run: once it dies, its messages' receipts are to be followed by a survivor again.
        try await control.runAsync("UPDATE cluster_nodes SET started_at = ?, followed_by = NULL WHERE number = ?",
                                   [.int(Int64(Date().timeIntervalSince1970 * 1000)), .int(number)], logger: logger)
        // What was sent to this node's previous run is for connections that no longer exist:
        // back to the senders, who hold again what did not reach its recipients.
        try await returnUntaken(to: UInt16(number), on: control, logger: logger)
        return (UInt16(number), try await declaredDeadCount(of: UInt16(number), on: control, logger: logger))
    }

    /// Takes a node's liveness lock, trying `attempts` times half a second apart.
    private static func lock(_ node: UInt16, on connection: PostgresConnection, attempts: Int, logger: Logger) async throws -> Bool {
        for attempt in 0..<attempts {
            if attempt > 0 { try await Task.sleep(for: .milliseconds(500)) }
            for row in try await connection.runAsync("SELECT pg_try_advisory_lock(CAST(? AS INT), CAST(? AS INT))", [.int(lockClass), .int(Int64(node))], logger: logger) {
                if try row.decode(Bool.self) { return true }
            }
        }
        return false
    }

    private static func declaredDeadCount(of node: UInt16, on connection: PostgresConnection, logger: Logger) async throws -> Int64 {
        var count: Int64 = 0
        for row in try await connection.runAsync("SELECT declared_dead FROM cluster_nodes WHERE number = ?", [.int(Int64(node))], logger: logger) {
            count = Int64(try row.decode(Int32.self))
        }
        return count
    }

    /// The rows a node did not take go back to their senders (marked `returned_from`), who are
    /// woken; what an admin command sent, or what was itself coming back to that node, is dropped.
    /// Returns the payloads sent back, whoever sent them: what the node never learnt.
    @discardableResult
    private static func returnUntaken(to node: UInt16, on connection: PostgresConnection, logger: Logger) async throws -> [ByteBuffer] {
        var payloads: [ByteBuffer] = []
        // The notifications are made once per sender, and only when some row went back.
        for row in try await connection.runAsync("""
            WITH returned AS (
                UPDATE cluster_events SET target = source, returned_from = target
                WHERE target = ? AND returned_from IS NULL AND source <> 0 AND source <> target
                RETURNING id, target, payload
            ), notified AS (
                SELECT count(pg_notify('parley_node_' || target, '')) FROM (SELECT DISTINCT target FROM returned) senders
            )
            SELECT payload FROM returned, notified ORDER BY id
            """, [.int(Int64(node))], logger: logger) {
            payloads.append(try row.decode(ByteBuffer.self))
        }
        try await connection.runAsync("DELETE FROM cluster_events WHERE target = ?", [.int(Int64(node))], logger: logger)
        return payloads
    }

    /// The nodes holding their liveness lock now.
    private static func liveNodes(on connection: PostgresConnection, except me: UInt16, logger: Logger) async throws -> Set<UInt16> {
        var live: Set<UInt16> = []
        let rows = try await connection.runAsync("""
            SELECT objid::text FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::text = ?
            """, [.text(String(lockClass))], logger: logger)
        for row in rows {
            if let number = UInt16(try row.decode(String.self)), number != me { live.insert(number) }
        }
        return live
    }

    /// Sends one payload to every running node from outside the cluster (an admin command), as
    /// node 0, and waits (up to `timeout`) until each has taken it, so that what the command
    /// changed is in effect on every node when it returns. Returns how many nodes took it.
    @discardableResult
    public static func sendToLiveNodes(_ payload: ByteBuffer, url: PostgresDatabaseURL, logger: Logger,
                                       timeout: Duration = .seconds(5)) async throws -> Int {
        do {
            let connection = try await connect(url: url, node: "admin", logger: logger, on: MultiThreadedEventLoopGroup.singleton.next(), asControl: false)
            do {
                let nodes = try await liveNodes(on: connection, except: 0, logger: logger)
                for node in nodes {
                    try await write(payload, from: 0, to: node, on: connection, logger: logger)
                }
                let deadline = ContinuousClock.now + timeout
                while ContinuousClock.now < deadline {
                    var waiting: Int64 = 0
                    for row in try await connection.runAsync("SELECT count(*) FROM cluster_events WHERE source = 0", logger: logger) {
                        waiting = try row.decode(Int64.self)
                    }
                    if waiting == 0 { break }
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await connection.close()
                return nodes.count
            } catch {
                try? await connection.close()
                throw error
            }
        } catch {
            throw PostgresStoreError(error, url: url)
        }
    }

    private static func write(_ payload: ByteBuffer, from source: UInt16, to node: UInt16, run: Int64? = nil, sequence: Int64? = nil,
                              on connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query("""
            WITH sent AS (
                INSERT INTO cluster_events (source, target, payload, sender_run, sequence)
                VALUES (\(Int32(source)), \(Int32(node)), \(payload), \(run), \(sequence)) RETURNING target
            )
            SELECT pg_notify('parley_node_' || (SELECT target FROM sent LIMIT 1), '')
            """, logger: logger)
    }

    // MARK: ClusterTransport

    public func start(receive: @escaping @Sendable (UInt16, ByteBuffer) -> Void,
                      returned: @escaping @Sendable (UInt16, ByteBuffer) -> Void,
                      peerGone: @escaping @Sendable (UInt16, [ByteBuffer]) async -> Void,
                      rejoined: @escaping @Sendable (_ wasTakenForDead: Bool) -> Void) {
        state.withLock {
            $0.rejoined = rejoined
            $0.returned = returned
        }
        let listener = Task { [self] in await listen() }
        let ticker = Task { [self] in
            // A missed notification costs at most a second.
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                readerWake.yield()
            }
        }
        let reader = Task { [self] in
            for await _ in readerWakes {
                await takeArrived(receive, returned: returned)
            }
        }
        let writer = Task { [self] in
            for await _ in writerWakes {
                await writeQueued()
            }
        }
        let liveness = Task { [self] in
            var lastCheck = ContinuousClock.now
            while !Task.isCancelled {
                // Without its lock the node tries to take it back every half second, not at each
                // check: the others take it for dead after two checks in a row that miss it.
                if state.withLock({ $0.holdsOwnLock }) {
                    try? await Task.sleep(until: lastCheck + checkInterval, clock: .continuous)
                } else {
                    try? await Task.sleep(for: .milliseconds(500))
                    let control = state.withLock { $0.control }
                    if !control.isClosed { await takeOwnLockBack(on: control) }
                    if ContinuousClock.now < lastCheck + checkInterval { continue }
                }
                lastCheck = .now
                await checkPeers(peerGone)
            }
        }
        state.withLock { $0.tasks = [listener, ticker, reader, writer, liveness] }
        readerWake.yield()
    }

    public func send(_ payload: ByteBuffer, to node: UInt16?) {
        let queued = state.withLock { state -> Bool in
            guard !state.leaving else { return false }
            if state.queue.count >= maxQueuedPayloads {
                state.queue.removeFirst(state.queue.count - maxQueuedPayloads + 1)
                logger.error("cluster queue full: dropped the oldest payload (is the database down?)")
            }
            state.queue.append((node, payload))
            return true
        }
        if queued { writerWake.yield() }
    }

    public func leave() async {
        // Let the writer finish what is queued (the close events of this node's connections).
        for _ in 0..<100 {
            let pending = state.withLock { $0.queue.count + $0.unsent.count }
            if pending == 0 { break }
            writerWake.yield()
            try? await Task.sleep(for: .milliseconds(20))
        }
        let (tasks, control, writer) = state.withLock { state in
            state.leaving = true
            return (state.tasks, state.control, state.writer)
        }
        for task in tasks { task.cancel() }
        writerWake.finish()
        readerWake.finish()
        // Rows applied but not yet deleted would go back to their senders at the next start.
        await deleteApplied(on: control)
        _ = try? await control.runAsync("SELECT pg_advisory_unlock(CAST(? AS INT), CAST(? AS INT))",
                                        [.int(Self.lockClass), .int(Int64(nodeNumber))], logger: logger)
        try? await control.close()
        try? await writer.close()
        // A write or read in flight may have opened a fresh connection before it saw `leaving`:
        // wait for every task, then close whatever connections the state holds now.
        // Bounded: a shutdown must end even if a task is stuck on a connection that went away.
        let finished = (try? await Self.withTimeout(.seconds(5)) { for task in tasks { await task.value }; return true }) ?? false
        if !finished { logger.warning("cluster: a task did not finish while leaving") }
        let (lastControl, lastWriter) = state.withLock { ($0.control, $0.writer) }
        if !lastControl.isClosed { try? await lastControl.close() }
        if !lastWriter.isClosed { try? await lastWriter.close() }
    }

    // MARK: Work

    private var channelName: String { "parley_node_\(nodeNumber)" }

    /// Turns notifications into reader wake-ups; listens again after the connection is back.
    private func listen() async {
        while !Task.isCancelled {
            let control = state.withLock { $0.control }
            // A closed connection is being opened again (or will be, below): nothing to listen on.
            if !control.isClosed {
                do {
                    try await control.listen(on: channelName) { notifications in
                        readerWake.yield()
                        for try await _ in notifications { readerWake.yield() }
                    }
                } catch {
                    if Task.isCancelled { return }
                    logger.warning("cluster notifications stopped", metadata: ["error": "\(explained(error))"])
                }
            }
            try? await Task.sleep(for: .seconds(1))
            await reconnectControlIfClosed()
        }
    }

    private func takeArrived(_ receive: @Sendable (UInt16, ByteBuffer) -> Void, returned: @Sendable (UInt16, ByteBuffer) -> Void) async {
        let (control, applied) = state.withLock { ($0.control, Array($0.appliedNotDeleted)) }
        do {
            let arrived = try await Self.withTimeout(.seconds(5)) { [logger, nodeNumber] in
                let rows = try await control.query("""
                    SELECT id, source, payload, returned_from, sender_run, sequence FROM cluster_events
                    WHERE target = \(Int32(nodeNumber)) AND id <> ALL(\(applied)) ORDER BY id
                    """, logger: logger)
                var arrived: [Arrived] = []
                for try await row in rows {
                    let (id, source, payload, returnedFrom, run, sequence) = try row.decode((Int64, Int32, ByteBuffer, Int32?, Int64?, Int64?).self)
                    arrived.append(Arrived(id: id, source: UInt16(truncatingIfNeeded: source), payload: payload,
                                           returnedFrom: returnedFrom.map { UInt16(truncatingIfNeeded: $0) }, run: run, sequence: sequence))
                }
                return arrived
            }
            // Remembered before they are applied: whatever happens to the DELETE, never twice.
            let fresh = state.withLock { state -> [Arrived] in
                state.appliedNotDeleted.formUnion(arrived.map(\.id))
                return arrived.filter { item in
                    // A row returned by a peer is the peer's, once; admin commands have no run.
                    guard item.returnedFrom == nil, let run = item.run, let sequence = item.sequence else { return true }
                    if let last = state.lastApplied[item.source], last.run == run, sequence <= last.sequence { return false }
                    state.lastApplied[item.source] = (run, sequence)
                    return true
                }
            }
            if fresh.count < arrived.count { logger.info("cluster: skipped rows written twice", metadata: ["rows": "\(arrived.count - fresh.count)"]) }
            for item in fresh {
                if let node = item.returnedFrom { returned(node, item.payload) } else { receive(item.source, item.payload) }
            }
        } catch {
            // Nothing taken: the rows are read again next time. A read that timed out is worth
            // a warning (the server stalls); one that failed, with the database down, is not.
            if error is TimedOut {
                logger.warning("cluster read timed out; read again at the next wake-up")
                try? await control.close()
            } else {
                logger.debug("cluster read failed", metadata: ["error": "\(explained(error))"])
            }
            return
        }
        await deleteApplied(on: control)
    }

    private struct Arrived: Sendable {
        var id: Int64
        var source: UInt16
        var payload: ByteBuffer
        var returnedFrom: UInt16?
        var run: Int64?
        var sequence: Int64?
    }

    /// Deletes the rows applied, by id. One that fails or times out is tried again at the next
    /// read; its ids stay remembered (a DELETE given up on may still complete: deleting again is harmless).
    private func deleteApplied(on control: PostgresConnection) async {
        let applied = state.withLock { Array($0.appliedNotDeleted) }
        guard !applied.isEmpty else { return }
        do {
            try await Self.withTimeout(.seconds(5)) { [logger] in
                for try await _ in try await control.query("DELETE FROM cluster_events WHERE id = ANY(\(applied))", logger: logger) {}
            }
            state.withLock { $0.appliedNotDeleted.subtract(applied) }
        } catch {
            logger.warning("cluster: deleting the rows read failed; deleted at the next read", metadata: [
                "rows": "\(applied.count)", "error": "\(explained(error))"])
            if error is TimedOut { try? await control.close() }
        }
    }

    struct TimedOut: Error {}

    /// Runs `operation`, giving up on it after `limit`. Not a task group: a group waits for
    /// all of its tasks, and the point is not to wait for a query that never completes.
    static func withTimeout<Value: Sendable>(_ limit: Duration, _ operation: @escaping @Sendable () async throws -> Value) async throws -> Value {
        let waiter = FirstAnswer<Value>()
        return try await withCheckedThrowingContinuation { continuation in
            waiter.set(continuation)
            Task {
                do { waiter.answer(.success(try await operation())) } catch { waiter.answer(.failure(error)) }
            }
            Task {
                try? await Task.sleep(for: limit)
                waiter.answer(.failure(TimedOut()))
            }
        }
    }

    /// Resumes a continuation with the first answer only.
    final class FirstAnswer<Value: Sendable>: Sendable {
        private let continuation = Mutex<CheckedContinuation<Value, any Error>?>(nil)
        func set(_ waiting: CheckedContinuation<Value, any Error>) { continuation.withLock { $0 = waiting } }
        func answer(_ result: Result<Value, any Error>) { continuation.withLock { $0.take() }?.resume(with: result) }
    }

    private func writeQueued() async {
        logger.trace("cluster writer woken")
        // What failed before goes first, as it was; what is queued only once that is written.
        let (unsent, writer) = state.withLock { state in
            defer { state.unsent.removeAll() }
            return (state.unsent, state.writer)
        }
        guard await write(unsent, on: writer) else { return }
        let rows = state.withLock { state -> [Row] in
            defer { state.queue.removeAll() }
            // One row per target: its payloads in order (a payload is a run of whole records).
            var perTarget: [UInt16: ByteBuffer] = [:]
            var order: [UInt16] = []
            for (target, payload) in state.queue {
                for node in target.map({ [$0] }) ?? state.peers.sorted() {
                    if perTarget[node] == nil { order.append(node); perTarget[node] = ByteBuffer() }
                    perTarget[node]!.writeImmutableBuffer(payload)
                }
            }
            return order.map { node in
                defer { state.nextSequence += 1 }
                return Row(target: node, payload: perTarget[node]!, sequence: state.nextSequence)
            }
        }
        _ = await write(rows, on: writer)
    }

    /// Writes `rows` in order. At the first failure, that row and the rest are kept (in
    /// `unsent`), the writer connection is opened again and a retry is scheduled: false then.
    private func write(_ rows: [Row], on writer: PostgresConnection) async -> Bool {
        let (departed, returned) = state.withLock { ($0.departed, $0.returned) }
        for (index, row) in rows.enumerated() {
            if departed.contains(row.target) {
                returned?(row.target, row.payload)
                continue
            }
            do {
                try await Self.withTimeout(.seconds(5)) { [logger, nodeNumber, run] in
                    try await Self.write(row.payload, from: nodeNumber, to: row.target, run: run, sequence: row.sequence, on: writer, logger: logger)
                }
            } catch {
                logger.debug("cluster write failed", metadata: ["error": "\(explained(error))"])
                // A query sent just as the server went away was seen never to complete: the
                // connection is dropped and a new one opened.
                try? await writer.close()
                let failed = Array(rows[index...])
                logger.warning("cluster write failed; will retry", metadata: ["rows": "\(failed.count)"])
                state.withLock { $0.unsent.insert(contentsOf: failed, at: 0) }
                try? await Task.sleep(for: .seconds(1))
                await reconnectWriterIfClosed()
                writerWake.yield()
                return false
            }
        }
        return true
    }

    private func checkPeers(_ peerGone: @Sendable (UInt16, [ByteBuffer]) async -> Void) async {
        let control = state.withLock { $0.control }
        let logger = self.logger
        let me = nodeNumber
        guard let live = try? await Self.withTimeout(.seconds(5), { try await Self.liveNodes(on: control, except: me, logger: logger) }) else {
            if !control.isClosed { try? await control.close() }
            await reconnectControlIfClosed()
            return
        }
        let gone = state.withLock { state -> [UInt16] in
            if let reconnected = state.reconnectedAt, ContinuousClock.now - reconnected < checkInterval * 3 {
                state.peers.formUnion(live)
                return []
            }
            var gone: [UInt16] = []
            var waitedFor: Set<UInt16> = []
            for node in state.peers.subtracting(live).sorted() {
                let missed = (state.missedChecks[node] ?? 0) + 1
                if missed >= Self.missedChecksBeforeDead {
                    gone.append(node)
                    state.missedChecks[node] = nil
                } else {
                    logger.info("cluster node's lock is missing; taken for dead if still missing at the next check", metadata: ["node": "\(node)"])
                    state.missedChecks[node] = missed
                    waitedFor.insert(node)
                }
            }
            for node in live { state.missedChecks[node] = nil }
            // A node waited for is still sent to: it takes what arrived meanwhile when it is back.
            state.peers = live.union(waitedFor)
            state.departed.subtract(live)
            return gone
        }
        for node in gone {
            do {
                // Declared dead under its lock: if the node is back (or another peer is
                // declaring it right now) it is left alone until the next check.
                guard try await Self.lock(node, on: control, attempts: 1, logger: logger) else {
                    _ = state.withLock { $0.peers.insert(node) }
                    continue
                }
                logger.warning("cluster node gone", metadata: ["node": "\(node)"])
                let untaken = try await Self.returnUntaken(to: node, on: control, logger: logger)
                try await control.runAsync("UPDATE cluster_nodes SET declared_dead = declared_dead + 1 WHERE number = ?", [.int(Int64(node))], logger: logger)
                _ = state.withLock { $0.departed.insert(node) }
                await peerGone(node, untaken)
                try await control.runAsync("SELECT pg_advisory_unlock(CAST(? AS INT), CAST(? AS INT))",
                                           [.int(Self.lockClass), .int(Int64(node))], logger: logger)
            } catch {
                // Tried again at the next check. Its lock is let go (it went with the
                // connection, if that failed): held twice, one unlock would not free it.
                logger.warning("cluster: declaring a node dead failed", metadata: ["node": "\(node)", "error": "\(explained(error))"])
                _ = try? await control.runAsync("SELECT pg_advisory_unlock(CAST(? AS INT), CAST(? AS INT))",
                                                [.int(Self.lockClass), .int(Int64(node))], logger: logger)
                _ = state.withLock { $0.peers.insert(node) }
            }
        }
    }

    /// An error in words an operator can act on (PostgresNIO's own text is a generic one, to
    /// keep queries out of logs; this reads the server's message and the connection's state).
    private func explained(_ error: any Error) -> String {
        error is TimedOut ? "no answer within the time allowed" : PostgresStoreError(error, url: url).description
    }

    public var peerNodes: Set<UInt16> { state.withLock { $0.peers } }

    /// Peers learnt of from a payload before the next liveness check (a node that has just started).
    public func notePeer(_ node: UInt16) {
        guard node != 0, node != nodeNumber else { return }  // 0: an admin command, not a node
        state.withLock { state in
            state.peers.insert(node)
            state.departed.remove(node)
        }
    }

    private func reconnectWriterIfClosed() async {
        let writer = state.withLock { $0.writer }
        guard writer.isClosed else { return }
        guard !state.withLock({ $0.leaving }),
              let fresh = try? await Self.connect(url: url, node: nodeName, logger: logger, on: eventLoopGroup.next(), asControl: false) else { return }
        let kept = state.withLock { state -> Bool in
            guard !state.leaving else { return false }
            state.writer = fresh
            return true
        }
        if !kept { try? await fresh.close() }
    }

    private func reconnectControlIfClosed() async {
        let starting = state.withLock { state -> Bool in
            guard state.control.isClosed, !state.leaving, !state.reconnectingControl else { return false }
            state.reconnectingControl = true
            return true
        }
        guard starting else { return }
        defer { state.withLock { $0.reconnectingControl = false } }
        do {
            let fresh = try await Self.connect(url: url, node: nodeName, logger: logger, on: eventLoopGroup.next(), asControl: true)
            // A peer declaring this node dead holds its lock for a moment, and the backend of the
            // connection just lost may not have ended yet.
            let locked = try await Self.lock(nodeNumber, on: fresh, attempts: 20, logger: logger)
            if !locked {
                logger.warning("cluster: this node's lock is still held elsewhere (a connection the database has not yet seen close, or another process with this node's name); taken back once it is free")
            }
            let declaredDead = try await Self.declaredDeadCount(of: nodeNumber, on: fresh, logger: logger)
            if declaredDead != state.withLock({ $0.declaredDead }) {
                try await Self.startOverAsNewRun(nodeNumber, on: fresh, logger: logger)
            }
            let (kept, rejoined, takenForDead) = state.withLock { state -> (Bool, (@Sendable (Bool) -> Void)?, Bool) in
                guard !state.leaving else { return (false, nil, false) }
                state.control = fresh
                state.holdsOwnLock = locked
                state.reconnectedAt = .now
                let takenForDead = declaredDead != state.declaredDead
                state.declaredDead = declaredDead
                return (true, state.rejoined, takenForDead)
            }
            guard kept else {
                try? await fresh.close()
                return
            }
            if takenForDead {
                logger.warning("cluster: reconnected to the database; the other nodes took this node for dead meanwhile")
            } else {
                logger.info("cluster: reconnected to the database")
            }
            rejoined?(takenForDead)
        } catch {
            logger.debug("cluster: database still unreachable", metadata: ["error": "\(explained(error))"])
        }
    }

    /// A node that finds it was taken for dead starts over as a new run (see `takeNumber`): the
    /// node that took over the receipts of its messages gives them back when it says hello.
    private static func startOverAsNewRun(_ node: UInt16, on control: PostgresConnection, logger: Logger) async throws {
        try await control.runAsync("UPDATE cluster_nodes SET followed_by = NULL WHERE number = ?", [.int(Int64(node))], logger: logger)
    }

    /// After `control` was opened again without this node's lock: takes it once it is free
    /// (tried every half second by the liveness task). If
    /// the others took this node for dead meanwhile (a peer held the lock to say so), it starts
    /// over as after a reconnection that finds it so.
    private func takeOwnLockBack(on control: PostgresConnection) async {
        let (logger, node) = (self.logger, nodeNumber)
        do {
            let declaredDead = try await Self.withTimeout(.seconds(5)) { () -> Int64? in
                guard try await Self.lock(node, on: control, attempts: 1, logger: logger) else { return nil }
                return try await Self.declaredDeadCount(of: node, on: control, logger: logger)
            }
            guard let declaredDead else { return }
            let takenForDead = declaredDead != state.withLock { $0.declaredDead }
            if takenForDead {
                try await Self.startOverAsNewRun(node, on: control, logger: logger)
            }
            // Unless `control` was replaced meanwhile (its lock then goes with it).
            let (current, rejoined) = state.withLock { state -> (Bool, (@Sendable (Bool) -> Void)?) in
                guard state.control === control else { return (false, nil) }
                state.holdsOwnLock = true
                state.declaredDead = declaredDead
                return (true, state.rejoined)
            }
            guard current else { return }
            guard takenForDead else {
                logger.info("cluster: took this node's lock back")
                return
            }
            logger.warning("cluster: took this node's lock back; the other nodes took this node for dead meanwhile")
            rejoined?(true)
        } catch {
            logger.debug("cluster: taking this node's lock back failed", metadata: ["error": "\(explained(error))"])
        }
    }
}
