import NIOCore
import NIOConcurrencyHelpers
import NIOPosix
import ParleyCore

/// The writes decided while an event loop thread handles one loop round: the lines for each
/// receiver on this loop are gathered into one buffer, written and flushed once by a task that
/// NIO runs after the round's reads, so N guests joining a channel in one round cost each member
/// one pipeline write and one system call, not N (a pipeline write cost more than the rest of
/// the member's share of a JOIN). Receivers on other loops are handed over at the end of each
/// read batch, to one task per loop (not one per receiver: a group message to a thousand members
/// on two loops made five hundred tasks). A line for one receiver alone (a direct message, a
/// reply) is encoded by the domain straight into that receiver's output (`Outbox.sink`): no
/// buffer of its own to allocate, gather and free. Every write on this thread goes through
/// here, so no line overtakes one gathered earlier. One per thread, reused: never touched by
/// any other thread, hence `@unchecked Sendable`.
final class WriteBatch: OutboxSink, @unchecked Sendable {
    private static let perThread = ThreadSpecificVariable<WriteBatch>()

    static var current: WriteBatch {
        if let batch = perThread.currentValue { return batch }
        let batch = WriteBatch()
        perThread.currentValue = batch
        return batch
    }

    /// What `ChatHost.perform(into:)` resolved, not yet sorted by receiver.
    var resolved: [ChatHost.ResolvedDelivery] = []
    /// Storage work of this batch waits for `flush()` (see `StorageWriter.Hold`).
    var storageHold: StorageWriter.Hold?
    /// This round's receivers on this thread's loop, until the round's write.
    private var own = GatheredOutputs()
    /// This batch's receivers on other loops, until `flush()` hands them over.
    private var others = GatheredOutputs()
    /// This thread's event loop (set by `collectResolved` and `queue`).
    private var ownLoop = ObjectIdentifier(WriteBatch.self)
    /// The connections of the domain call under way (`lend(_:)`), for lines the
    /// domain encodes straight into receivers' outputs.
    private var table: ConnectionTable?
    /// Receivers on other loops, by loop, while flushing.
    private var foreign: [ObjectIdentifier: [PendingOutput]] = [:]
    /// The other loops' inboxes, found once per thread instead of under a lock at every flush.
    private var inboxes: [ObjectIdentifier: LoopInbox] = [:]
    /// The loops whose round write is queued and has not run yet. Kept by loop: a test's
    /// thread can drive several embedded loops, some never run again.
    private var roundQueued: Set<ObjectIdentifier> = []

    fileprivate struct PendingOutput: Sendable {
        let channel: Channel
        let connection: ConnectionID
        /// The connection table's token: with `connection`, who this is in the process.
        let table: UInt64
        let loop: ObjectIdentifier
        /// The receiver's slot in the connection table.
        let slot: Int
        var bytes: ByteBuffer
        /// Whether `bytes` was gathered for this receiver, to append to in place (a buffer that
        /// receivers with the same lines took too is copied first, by ByteBuffer, once).
        var isGathered = false
        var closeAfter = false

        /// Appends a line. Lines are often shared (a group message): then the receiver's lines
        /// are gathered into a new buffer, and receivers with the same lines so far (the other
        /// members) share that buffer instead of each copying the same bytes.
        mutating func append(_ line: ByteBuffer, lastGathering: inout Gathering?) {
            if isGathered {
                bytes.writeImmutableBuffer(line)
                return
            }
            if let last = lastGathering, last.existing.hasSameBytes(as: bytes), last.added.hasSameBytes(as: line) {
                bytes = last.result
                return
            }
            var gathered = channel.allocator.buffer(capacity: max(512, 2 * (bytes.readableBytes + line.readableBytes)))
            gathered.writeImmutableBuffer(bytes)
            gathered.writeImmutableBuffer(line)
            lastGathering = Gathering(existing: bytes, added: line, result: gathered)
            bytes = gathered
            // Its own from now on, whoever shares it: a buffer kept over a round's many batches
            // (a member's NAMES) must not be gathered anew at every line.
            isGathered = true
        }

        /// Appends a line encoded in place (a line for this receiver alone).
        mutating func append(capacity: Int, _ encode: (inout ByteBuffer) -> Void) {
            if !isGathered {
                var gathered = channel.allocator.buffer(capacity: max(512, 2 * (bytes.readableBytes + capacity)))
                gathered.writeImmutableBuffer(bytes)
                bytes = gathered
                isGathered = true
            }
            encode(&bytes)
        }
    }

    /// The latest gathering of a receiver's pending lines with one more line. It keeps its
    /// inputs alive, so comparing buffers by address is sound while it exists.
    struct Gathering {
        var existing: ByteBuffer
        var added: ByteBuffer
        var result: ByteBuffer
    }

    /// Receivers' pending lines, each receiver's gathered in one output, in the order they were
    /// first written to. A receiver's place is found by its connection slot: `indexBySlot[slot]`
    /// is valid when `stampBySlot[slot]` is the current `stamp` (no clearing, no hashing per line).
    fileprivate struct GatheredOutputs {
        private(set) var outputs: [PendingOutput] = []
        private var indexBySlot: [Int32] = []
        private var stampBySlot: [UInt32] = []
        private var stamp: UInt32 = 1
        private var lastGathering: Gathering?

        var isEmpty: Bool { outputs.isEmpty }

        /// Adds a line (or a close) for a receiver; `channel` is asked for only when the
        /// receiver has no output yet.
        mutating func add(_ line: ByteBuffer?, closeAfter: Bool, to connection: ConnectionID, table: UInt64, slot: Int, loop: ObjectIdentifier,
                          channel: () -> Channel) {
            if let index = index(of: connection, table: table, slot: slot) {
                if let line { outputs[index].append(line, lastGathering: &lastGathering) }
                if closeAfter { outputs[index].closeAfter = true }
            } else {
                stampBySlot[slot] = stamp
                indexBySlot[slot] = Int32(outputs.count)
                outputs.append(PendingOutput(channel: channel(), connection: connection, table: table, loop: loop, slot: slot,
                                             bytes: line ?? ByteBuffer(), closeAfter: closeAfter))
            }
        }

        /// Appends a line that `encode` writes in place to a receiver's output.
        mutating func write(to connection: ConnectionID, table: UInt64, slot: Int, loop: ObjectIdentifier, channel: () -> Channel,
                            capacity: Int, _ encode: (inout ByteBuffer) -> Void) {
            if let index = index(of: connection, table: table, slot: slot) {
                outputs[index].append(capacity: capacity, encode)
                return
            }
            let channel = channel()
            var bytes = channel.allocator.buffer(capacity: max(512, capacity))
            encode(&bytes)
            stampBySlot[slot] = stamp
            indexBySlot[slot] = Int32(outputs.count)
            outputs.append(PendingOutput(channel: channel, connection: connection, table: table, loop: loop, slot: slot, bytes: bytes, isGathered: true))
        }

        /// The receiver's output, if it has one; makes room for `slot` in the index.
        private mutating func index(of connection: ConnectionID, table: UInt64, slot: Int) -> Int? {
            if slot >= stampBySlot.count {
                let size = max(slot + 1, 2 * stampBySlot.count, 64)
                stampBySlot += repeatElement(0, count: size - stampBySlot.count)
                indexBySlot += repeatElement(0, count: size - indexBySlot.count)
            }
            // The slot alone is not enough: servers in one process (tests) have a connection
            // table each, and their connections share event loop threads.
            guard stampBySlot[slot] == stamp else { return nil }
            let index = Int(indexBySlot[slot])
            return outputs[index].connection == connection && outputs[index].table == table ? index : nil
        }

        mutating func add(_ output: PendingOutput) {
            add(output.bytes, closeAfter: output.closeAfter, to: output.connection, table: output.table, slot: output.slot, loop: output.loop) { output.channel }
        }

        /// Takes every output out; the next line for any receiver starts a new one.
        mutating func takeAll() -> [PendingOutput] {
            stamp &+= 1
            if stamp == 0 {
                for index in stampBySlot.indices { stampBySlot[index] = 0 }
                stamp = 1
            }
            lastGathering = nil
            defer { outputs = [] }
            return outputs
        }
    }

    /// Lines added from now on are decided on `loop`, this thread's.
    func begin(onLoop loop: ObjectIdentifier) {
        ownLoop = loop
    }

    /// The domain call under way (under `ChatHost`'s lock) writes to connections of `table`.
    func lend(_ table: ConnectionTable) {
        if self.table !== table { self.table = table }
    }

    /// A line the domain encodes for one receiver, written in place into its output (`Outbox.sink`).
    /// Called under `ChatHost`'s lock, during the call `lend(_:)` began.
    func write(to connection: ConnectionID, capacity: Int, _ encode: (inout ByteBuffer) -> Void) -> Bool {
        guard let table, let loop = table.loop(of: connection) else { return false }
        let slot = connection.slot
        if loop == ownLoop {
            own.write(to: connection, table: table.token, slot: slot, loop: loop, channel: { table.channel(of: connection) }, capacity: capacity, encode)
        } else {
            others.write(to: connection, table: table.token, slot: slot, loop: loop, channel: { table.channel(of: connection) }, capacity: capacity, encode)
        }
        return true
    }

    /// A line the domain queues for a receiver (`Outbox.send`), added to its output; the same
    /// call and lock as `write(to:capacity:_:)`.
    func add(_ line: ByteBuffer, to connection: ConnectionID) -> Bool {
        guard let table else { return false }
        return add(line, to: connection, in: table)
    }

    /// Adds a line (or a close) for a connection of `table`, on this thread's loop or another;
    /// false when the connection is not in the table.
    func add(_ line: ByteBuffer?, closeAfter: Bool = false, to connection: ConnectionID, in table: ConnectionTable) -> Bool {
        guard let loop = table.loop(of: connection) else { return false }
        let slot = connection.slot
        if loop == ownLoop {
            own.add(line, closeAfter: closeAfter, to: connection, table: table.token, slot: slot, loop: loop) { table.channel(of: connection) }
        } else {
            others.add(line, closeAfter: closeAfter, to: connection, table: table.token, slot: slot, loop: loop) { table.channel(of: connection) }
        }
        return true
    }

    func collectResolved(onLoop loop: ObjectIdentifier) {
        ownLoop = loop
        for delivery in resolved {
            if delivery.loop == loop {
                own.add(delivery.line, closeAfter: delivery.closeAfter, to: delivery.connection, table: delivery.table, slot: delivery.slot,
                        loop: delivery.loop) { delivery.channel }
            } else {
                others.add(delivery.line, closeAfter: delivery.closeAfter, to: delivery.connection, table: delivery.table, slot: delivery.slot,
                           loop: delivery.loop) { delivery.channel }
            }
        }
        resolved.removeAll(keepingCapacity: true)
    }

    /// Writes from outside a read batch (another loop's hand-over, a task's writes) on this
    /// loop: after the lines gathered before them, in this round's write.
    fileprivate func queue(_ outputs: [PendingOutput], onLoop loop: any EventLoop) {
        ownLoop = ObjectIdentifier(loop)
        for output in outputs { own.add(output) }
        flush()
    }

    func queue(_ deliveries: [ChatHost.ResolvedDelivery], onLoop loop: any EventLoop) {
        resolved += deliveries
        collectResolved(onLoop: ObjectIdentifier(loop))
        flush()
    }

    /// The end of a read batch: its storage work may go, and receivers on other loops are handed
    /// over; those on this loop wait for the round's write.
    func flush() {
        // First, so that the batch's messages are committed while their lines are written.
        if let hold = storageHold {
            storageHold = nil
            hold.release()
        }
        if !others.isEmpty {
            for output in others.takeAll() { foreign[output.loop, default: []].append(output) }
            // Other loops' receivers are handed over before this loop writes anything: a client
            // that sees a reply here (a PONG) and then sends on a connection of another loop
            // must find there every line decided before that reply (see `LoopInbox`).
            for (loop, outputs) in foreign {
                let inbox = inboxes[loop] ?? LoopInbox.of(outputs[0].channel.eventLoop)
                inboxes[loop] = inbox
                inbox.deliver(outputs)
            }
            foreign.removeAll(keepingCapacity: true)
        }
        if !own.isEmpty && roundQueued.insert(ownLoop).inserted {
            // NIO handles all of a wakeup's reads before its tasks: this task, queued by the
            // round's first batch with output, runs after the round's reads.
            let loop = ownLoop
            own.outputs[0].channel.eventLoop.execute { [self] in writeRound(of: loop) }
        }
    }

    /// Writes and flushes what this loop's round gathered, one write per receiver. Lines
    /// gathered meanwhile (a write can close a connection, whose handler writes again) wait for
    /// the next round's write.
    private func writeRound(of loop: ObjectIdentifier) {
        roundQueued.remove(loop)
        let writing = own.takeAll()
        for output in writing where output.loop != loop {
            // Another loop's, gathered by a test thread that drives several embedded loops:
            // kept for that loop's own round.
            own.add(output)
        }
        for output in writing where output.loop == loop {
            ChatHost.send(output.bytes, closing: output.closeAfter, to: output.channel)
        }
    }
}

/// Lines for connections of one event loop, decided on other loops. A task on the loop writes
/// them, and so does the loop's next read of any connection before it handles that read's
/// lines: NIO handles a wakeup's reads before its tasks, so without this a client's PING read
/// together with that task would be answered before the lines decided earlier (a client that
/// uses PING as a barrier, as irctest does, would see its PONG overtake a message).
final class LoopInbox: Sendable {
    private static let all = NIOLockedValueBox<[ObjectIdentifier: LoopInbox]>([:])

    static func of(_ loop: any EventLoop) -> LoopInbox {
        all.withLockedValue { inboxes in
            if let inbox = inboxes[ObjectIdentifier(loop)] { return inbox }
            let inbox = LoopInbox(loop)
            inboxes[ObjectIdentifier(loop)] = inbox
            return inbox
        }
    }

    private let loop: any EventLoop
    private let pending = NIOLockedValueBox(Pending())

    private struct Pending {
        var outputs: [WriteBatch.PendingOutput] = []
        /// Run after `outputs` are written (a commit's report, after its echoes).
        var afterWrites: [@Sendable () -> Void] = []
        var isEmpty: Bool { outputs.isEmpty && afterWrites.isEmpty }
    }

    private init(_ loop: any EventLoop) {
        self.loop = loop
    }

    fileprivate func deliver(_ outputs: [WriteBatch.PendingOutput]) {
        add(outputs, then: nil)
    }

    /// Lines for this loop's connections decided outside any event loop (the echoes of a commit),
    /// one buffer per receiver; `then` runs on the loop once they are written.
    func deliver(_ deliveries: [ChatHost.ResolvedDelivery], thenOnLoop then: (@Sendable () -> Void)?) {
        var outputs: [WriteBatch.PendingOutput] = []
        var indexOfChannel: [ObjectIdentifier: Int] = [:]
        var lastGathering: WriteBatch.Gathering?
        for delivery in deliveries {
            let key = ObjectIdentifier(delivery.channel)
            if let index = indexOfChannel[key] {
                if let line = delivery.line { outputs[index].append(line, lastGathering: &lastGathering) }
                if delivery.closeAfter { outputs[index].closeAfter = true }
            } else {
                indexOfChannel[key] = outputs.count
                outputs.append(WriteBatch.PendingOutput(channel: delivery.channel, connection: delivery.connection, table: delivery.table,
                                                        loop: delivery.loop, slot: delivery.slot, bytes: delivery.line ?? ByteBuffer(),
                                                        closeAfter: delivery.closeAfter))
            }
        }
        add(outputs, then: then)
    }

    private func add(_ outputs: [WriteBatch.PendingOutput], then: (@Sendable () -> Void)?) {
        guard !outputs.isEmpty || then != nil else { return }
        let wasEmpty = pending.withLockedValue { pending in
            let wasEmpty = pending.isEmpty
            pending.outputs += outputs
            if let then { pending.afterWrites.append(then) }
            return wasEmpty
        }
        // One task per burst: a task already queued writes what arrives before it runs.
        if wasEmpty { loop.execute { [self] in writePending() } }
    }

    /// Queues what was decided elsewhere for this loop's connections into this round's write,
    /// after what this loop gathered before, then runs what waited for those lines (anything
    /// decided after them is queued behind them); called on this loop.
    func writePending() {
        let taken = pending.withLockedValue { pending in
            defer { pending = Pending() }
            return pending
        }
        if !taken.outputs.isEmpty { WriteBatch.current.queue(taken.outputs, onLoop: loop) }
        for then in taken.afterWrites { then() }
    }
}

extension ByteBuffer {
    /// Whether both views are the same bytes in memory (not merely equal bytes).
    fileprivate func hasSameBytes(as other: ByteBuffer) -> Bool {
        guard readableBytes == other.readableBytes else { return false }
        let mine = withUnsafeReadableBytes { $0.baseAddress }
        return mine == other.withUnsafeReadableBytes { $0.baseAddress }
    }
}
