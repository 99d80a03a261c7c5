import NIOCore
import NIOConcurrencyHelpers
import NIOPosix

/// The writes decided while an event loop thread handles one connection's read batch: the lines
/// for each receiver are gathered into one buffer and written once, so a burst of messages costs
/// one pipeline write and one system call per receiver, not one per line. Receivers on other
/// loops are written by one task per loop (not one per receiver: a group message to a thousand
/// members on two loops made five hundred tasks). One per thread, reused: never touched by any
/// other thread, hence `@unchecked Sendable`.
final class WriteBatch: @unchecked Sendable {
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
    /// This batch's receivers on this loop, in the order they were first written to. A
    /// receiver's place is found by its connection slot: `outputIndexBySlot[slot]` is valid
    /// when `stampBySlot[slot]` is the current `stamp` (no clearing, no hashing per line).
    private var outputs: [PendingOutput] = []
    private var flushing: [PendingOutput] = []
    private var outputIndexBySlot: [Int32] = []
    private var stampBySlot: [UInt32] = []
    private var stamp: UInt32 = 1
    private var isFlushing = false
    /// This thread's event loop (set by `collectResolved`).
    private var ownLoop = ObjectIdentifier(WriteBatch.self)
    /// Receivers on other loops, by loop, while flushing.
    private var foreign: [ObjectIdentifier: [PendingOutput]] = [:]
    /// The other loops' inboxes, found once per thread instead of under a lock at every flush.
    private var inboxes: [ObjectIdentifier: LoopInbox] = [:]
    /// This round's connections to flush, by loop (see `flushAtEndOfRound`).
    private var rounds: [ObjectIdentifier: RoundFlush] = [:]
    /// This batch's receivers on this loop, while flushing (written after the foreign ones are
    /// handed over, see `flush()`).
    private var own: [PendingOutput] = []

    fileprivate struct PendingOutput: Sendable {
        let channel: Channel
        let loop: ObjectIdentifier
        var bytes: ByteBuffer
        /// Whether `bytes` is a buffer of this receiver's own, to append to in place.
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
            enum Step { case share, continueOwn, gather }
            let step: Step
            if let last = lastGathering {
                if last.existing.hasSameBytes(as: bytes) && last.added.hasSameBytes(as: line) {
                    step = .share
                } else if !last.isShared && last.result.hasSameBytes(as: bytes) {
                    step = .continueOwn
                } else {
                    step = .gather
                }
            } else {
                step = .gather
            }
            switch step {
            case .share:
                bytes = lastGathering!.result
                lastGathering!.isShared = true
            case .continueOwn:
                // Nobody took this receiver's gathered buffer: it is its own to grow.
                lastGathering = nil
                isGathered = true
                bytes.writeImmutableBuffer(line)
            case .gather:
                var gathered = channel.allocator.buffer(capacity: max(512, 2 * (bytes.readableBytes + line.readableBytes)))
                gathered.writeImmutableBuffer(bytes)
                gathered.writeImmutableBuffer(line)
                lastGathering = Gathering(existing: bytes, added: line, result: gathered)
                bytes = gathered
            }
        }
    }

    /// The latest gathering of a receiver's pending lines with one more line. It keeps its
    /// inputs alive, so comparing buffers by address is sound while it exists.
    struct Gathering {
        var existing: ByteBuffer
        var added: ByteBuffer
        var result: ByteBuffer
        var isShared = false
    }

    private var lastGathering: Gathering?

    func collectResolved(onLoop loop: ObjectIdentifier) {
        ownLoop = loop
        for delivery in resolved {
            let slot = delivery.slot
            if slot >= stampBySlot.count {
                let size = max(slot + 1, 2 * stampBySlot.count, 64)
                stampBySlot += repeatElement(0, count: size - stampBySlot.count)
                outputIndexBySlot += repeatElement(0, count: size - outputIndexBySlot.count)
            }
            if stampBySlot[slot] == stamp {
                let index = Int(outputIndexBySlot[slot])
                if let line = delivery.line { outputs[index].append(line, lastGathering: &lastGathering) }
                if delivery.closeAfter { outputs[index].closeAfter = true }
            } else {
                stampBySlot[slot] = stamp
                outputIndexBySlot[slot] = Int32(outputs.count)
                outputs.append(PendingOutput(channel: delivery.channel, loop: delivery.loop, bytes: delivery.line ?? ByteBuffer(), closeAfter: delivery.closeAfter))
            }
        }
        resolved.removeAll(keepingCapacity: true)
    }

    /// A new batch: every slot's index is stale at once.
    private func nextStamp() {
        stamp &+= 1
        if stamp == 0 {
            for index in stampBySlot.indices { stampBySlot[index] = 0 }
            stamp = 1
        }
    }

    func flush() {
        // First, so that the batch's messages are committed while their lines are written.
        if let hold = storageHold {
            storageHold = nil
            hold.release()
        }
        // A flush can close a connection whose handler flushes again: the outer call finishes.
        guard !isFlushing else { return }
        isFlushing = true
        defer { isFlushing = false }
        while !outputs.isEmpty {
            swap(&outputs, &flushing)
            nextStamp()
            lastGathering = nil
            for output in flushing {
                if output.loop == ownLoop {
                    own.append(output)
                } else {
                    foreign[output.loop, default: []].append(output)
                }
            }
            flushing.removeAll(keepingCapacity: true)
            // Other loops' receivers are handed over before this loop writes anything: a client
            // that sees a reply here (a PONG) and then sends on a connection of another loop
            // must find there every line decided before that reply (see `LoopInbox`).
            if !foreign.isEmpty {
                for (loop, outputs) in foreign {
                    let inbox = inboxes[loop] ?? LoopInbox.of(outputs[0].channel.eventLoop)
                    inboxes[loop] = inbox
                    inbox.deliver(outputs)
                }
                foreign.removeAll(keepingCapacity: true)
            }
            for output in own {
                ChatHost.send(output.bytes, closing: output.closeAfter, to: output.channel)
            }
            own.removeAll(keepingCapacity: true)
        }
    }

    /// Flushes `channel`, just written to on its own loop, once this loop round's reads are
    /// done: NIO handles all of a wakeup's reads before its tasks, so the flush task queued by
    /// the round's first write runs after them. A thousand guests joining in one round then
    /// cost each member one system call, not one per JOIN. Kept by loop: a test's thread can
    /// drive several embedded loops, some never run again.
    func flushAtEndOfRound(_ channel: Channel) {
        let loop = channel.eventLoop
        let key = ObjectIdentifier(loop)
        if let round = rounds[key], !round.isDone {
            round.add(channel)
            return
        }
        let round = RoundFlush(channel)
        rounds[key] = round
        loop.execute { round.flush() }
    }
}

/// The connections to flush at the end of one event loop round; used on that loop only.
private final class RoundFlush: @unchecked Sendable {
    private var channels: [Channel]
    private var listed: Set<ObjectIdentifier>
    private(set) var isDone = false

    init(_ channel: Channel) {
        channels = [channel]
        listed = [ObjectIdentifier(channel)]
    }

    func add(_ channel: Channel) {
        if listed.insert(ObjectIdentifier(channel)).inserted { channels.append(channel) }
    }

    func flush() {
        isDone = true
        for channel in channels { channel.flush() }
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
        for delivery in deliveries {
            let key = ObjectIdentifier(delivery.channel)
            if let index = indexOfChannel[key] {
                if let line = delivery.line {
                    if !outputs[index].isGathered {
                        var gathered = delivery.channel.allocator.buffer(capacity: max(512, 2 * (outputs[index].bytes.readableBytes + line.readableBytes)))
                        gathered.writeImmutableBuffer(outputs[index].bytes)
                        outputs[index].bytes = gathered
                        outputs[index].isGathered = true
                    }
                    outputs[index].bytes.writeImmutableBuffer(line)
                }
                if delivery.closeAfter { outputs[index].closeAfter = true }
            } else {
                indexOfChannel[key] = outputs.count
                outputs.append(WriteBatch.PendingOutput(channel: delivery.channel, loop: delivery.loop, bytes: delivery.line ?? ByteBuffer(),
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

    /// Writes what was decided elsewhere for this loop's connections, then runs what waited for
    /// those writes; called on this loop.
    func writePending() {
        let taken = pending.withLockedValue { pending in
            defer { pending = Pending() }
            return pending
        }
        for output in taken.outputs { ChatHost.send(output.bytes, closing: output.closeAfter, to: output.channel) }
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
