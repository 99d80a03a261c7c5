import IRCWire
import Logging
import NIOCore
import NIOPosix
import ParleyCore

/// The per-connection pipeline end: frames lines, parses them, applies flood control, hands
/// messages to the domain and writes what it decided. It frames lines itself rather than behind
/// a `ByteToMessageHandler`: one handler less per connection (its buffers were a tenth of an idle
/// connection's memory) and no pipeline event per line. Writes go through `WriteBatch`.
final class IRCConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let host: ChatHost
    private let isSecure: Bool
    /// Shared, not copied with per-connection metadata: a copy with metadata cost hundreds of
    /// bytes per idle connection. The connection id is added where something is logged.
    private let logger: Logger
    /// Read once: asking the logger per line cost more than the line's parsing.
    private let tracesLines: Bool
    private var connection: ConnectionID?
    /// This connection's event loop (writes to receivers on it are gathered, not sent as tasks);
    /// set when the connection becomes active, before anything is read.
    private var eventLoopIdentity = ObjectIdentifier(IRCConnectionHandler.self)
    private var flood: TokenBucket
    private var lineDecoder: IRCLineDecoder
    /// The start of a line whose end has not arrived yet, copied out of NIO's receive buffer
    /// (which NIO reuses for the next read only when nothing else holds it).
    private var partialLine: ByteBuffer?
    // Small at first: most connections never hold anything back (the default is 16 slots).
    private var heldBack = CircularBuffer<IRCLineFrame>(initialCapacity: 1)
    private var drainScheduled = false

    /// This thread's writes of the current read batch (shared by the connections of one event
    /// loop, so an idle connection holds no write bookkeeping of its own).
    /// Taken on first use, which is on this connection's event loop thread, like every later use.
    private lazy var batch = WriteBatch.current

    init(host: ChatHost, isSecure: Bool, maximumLineBytes: Int, logger: Logger) {
        self.lineDecoder = IRCLineDecoder(maximumLineBytes: maximumLineBytes)
        self.host = host
        self.isSecure = isSecure
        self.logger = logger
        self.tracesLines = logger.logLevel <= .trace
        self.flood = TokenBucket(
            ratePerSecond: host.configuration.limits.floodCommandsPerSecond,
            burst: host.configuration.limits.floodBurst, now: ChatHost.now())
    }

    func channelActive(context: ChannelHandlerContext) {
        eventLoopIdentity = ObjectIdentifier(context.eventLoop)
        let address = Self.normalizedAddress(context.channel.remoteAddress)
        switch host.admit(context.channel, address: address, isSecure: isSecure) {
        case .admitted(let id):
            connection = id
            logger.debug("connected", metadata: ["connection": "\(id)", "address": "\(address)", "tls": "\(isSecure)"])
        case .refused(let reason):
            logger.notice("refused connection", metadata: ["address": "\(address)", "reason": "\(reason)"])
            var buffer = context.channel.allocator.buffer(capacity: 64)
            IRCMessage(command: "ERROR", parameters: ["Closing link: \(address) (\(reason))"]).write(to: &buffer)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        }
        context.fireChannelActive()
    }

    /// IPv4 peers of a dual-stack socket appear as `::ffff:a.b.c.d`; per-address limits and
    /// hostmasks use the plain IPv4 form.
    static func normalizedAddress(_ address: SocketAddress?) -> String {
        guard let text = address?.ipAddress else { return "unknown" }
        if text.hasPrefix("::ffff:"), text.contains(".") { return String(text.dropFirst(7)) }
        return text
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard connection != nil else { return }
        var bytes = unwrapInboundIn(data)
        if var partial = partialLine {
            partialLine = nil
            partial.writeBuffer(&bytes)
            bytes = partial
        }
        let now = ChatHost.now()
        while connection != nil, let frame = lineDecoder.nextFrame(&bytes) {
            if !heldBack.isEmpty || !flood.take(now: now) {
                holdBack(frame, context: context)
            } else {
                process(frame, now: now, context: context)
            }
        }
        if connection != nil && bytes.readableBytes > 0 {
            var partial = context.channel.allocator.buffer(capacity: bytes.readableBytes)
            partial.writeBuffer(&bytes)
            partialLine = partial
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushBatch(context: context)
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // An unterminated last line is dropped: a half-sent command should not run.
        partialLine = nil
        if let id = connection {
            connection = nil
            host.connectionClosed(id, reason: "Connection closed")
            logger.debug("disconnected", metadata: ["connection": "\(id)"])
        }
        // Lines read just before the end of the stream may not be followed by a read-complete
        // event: what they decided must not wait for another connection's read.
        flushBatch(context: context)
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // The write buffer's high watermark is the send queue limit: a client that does not read
        // is cut off instead of growing the server's memory.
        if !context.channel.isWritable, let id = connection {
            logger.notice("send queue exceeded", metadata: ["connection": "\(id)"])
            connection = nil
            host.connectionClosed(id, reason: "SendQ exceeded")
            context.close(promise: nil)
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error", metadata: ["connection": "\(connection.map { "\($0)" } ?? "-")", "error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Flood control

    private func holdBack(_ frame: IRCLineFrame, context: ChannelHandlerContext) {
        heldBack.append(frame)
        if heldBack.count > host.configuration.limits.floodQueueLimit, let id = connection {
            logger.notice("excess flood", metadata: ["connection": "\(id)"])
            heldBack.removeAll()
            let deliveries = host.perform { core, outbox in
                core.disconnect(id, reason: "Excess Flood", now: ChatHost.now(), into: &outbox)
            }
            connection = nil
            collect(deliveries, context: context)
            flushBatch(context: context)
            return
        }
        scheduleDrain(context: context)
    }

    private func scheduleDrain(context: ChannelHandlerContext) {
        guard !drainScheduled else { return }
        drainScheduled = true
        let delay = max(1, flood.millisecondsUntilNextToken(now: ChatHost.now()))
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .milliseconds(delay)) {
            let (handler, context) = loopBound.value
            handler.drain(context: context)
        }
    }

    private func drain(context: ChannelHandlerContext) {
        drainScheduled = false
        while let frame = heldBack.first, connection != nil {
            let now = ChatHost.now()
            guard flood.take(now: now) else { break }
            heldBack.removeFirst()
            process(frame, now: now, context: context)
        }
        flushBatch(context: context)
        if !heldBack.isEmpty && connection != nil { scheduleDrain(context: context) }
    }

    // MARK: Processing

    private func process(_ frame: IRCLineFrame, now: Timestamp, context: ChannelHandlerContext) {
        guard let id = connection else { return }
        switch frame {
        case .tooLong:
            host.perform(into: &batch.resolved) { core, outbox in
                core.receiveInvalidLine(.tooLong, command: nil, label: nil, from: id, now: now, into: &outbox)
            }
        case .line(let bytes):
            do {
                let message = try IRCMessage(parsing: bytes)
                if tracesLines { logger.trace("<- \(message.wireString)", metadata: ["connection": "\(id)"]) }
                host.perform(into: &batch.resolved) { core, outbox in
                    core.receive(message, from: id, now: now, into: &outbox)
                }
            } catch .empty {
                return
            } catch {
                let problem: ChatServer.InvalidLine
                switch error {
                case .invalidUTF8: problem = .invalidUTF8
                case .bodyTooLong, .tagsTooLong: problem = .tooLong
                default: problem = .malformed
                }
                // Read what we can of the line so the reply names the refused command and label.
                let lossy = try? IRCMessage(parsing: String(decoding: bytes.readableBytesView, as: UTF8.self), maxTagsBytes: .max, maxBodyBytes: .max)
                host.perform(into: &batch.resolved) { core, outbox in
                    core.receiveInvalidLine(problem, command: lossy?.command.uppercased(), label: lossy?.tagValue("label"), from: id, now: now, into: &outbox)
                }
            }
        }
        collectResolved()
    }

    private func collect(_ deliveries: [ChatHost.ResolvedDelivery], context: ChannelHandlerContext) {
        batch.resolved.append(contentsOf: deliveries)
        collectResolved()
    }

    private func collectResolved() {
        batch.collectResolved(onLoop: eventLoopIdentity)
    }

    private func flushBatch(context: ChannelHandlerContext) {
        batch.flush()
    }
}

/// The writes decided while an event loop thread handles one connection's read batch: the lines
/// for each receiver on this loop are gathered into one buffer and written once, so a burst of
/// messages costs one pipeline write and one system call per receiver, not one per line.
/// Receivers on other loops get one task each. One per thread, reused: never touched by any
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
    /// This batch's receivers on this loop, in the order they were first written to. A
    /// receiver's place is found by its connection slot: `outputIndexBySlot[slot]` is valid
    /// when `stampBySlot[slot]` is the current `stamp` (no clearing, no hashing per line).
    private var outputs: [PendingOutput] = []
    private var flushing: [PendingOutput] = []
    private var outputIndexBySlot: [Int32] = []
    private var stampBySlot: [UInt32] = []
    private var stamp: UInt32 = 1
    private var isFlushing = false
    private var foreignWrites: [ObjectIdentifier: (Channel, [ChatHost.ResolvedDelivery])] = [:]

    private struct PendingOutput {
        let channel: Channel
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
        for delivery in resolved {
            guard delivery.loop == loop else {
                foreignWrites[ObjectIdentifier(delivery.channel), default: (delivery.channel, [])].1.append(delivery)
                continue
            }
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
                outputs.append(PendingOutput(channel: delivery.channel, bytes: delivery.line ?? ByteBuffer(), closeAfter: delivery.closeAfter))
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
        // A flush can close a connection whose handler flushes again: the outer call finishes.
        guard !isFlushing else { return }
        isFlushing = true
        defer { isFlushing = false }
        while !outputs.isEmpty || !foreignWrites.isEmpty {
            swap(&outputs, &flushing)
            nextStamp()
            lastGathering = nil
            for output in flushing {
                if output.closeAfter {
                    if output.bytes.readableBytes > 0 { output.channel.write(output.bytes, promise: nil) }
                    ChatHost.closeAfterFlush(output.channel)
                } else if output.bytes.readableBytes > 0 {
                    // One pass through the pipeline for both.
                    output.channel.writeAndFlush(output.bytes, promise: nil)
                } else {
                    output.channel.flush()
                }
            }
            flushing.removeAll(keepingCapacity: true)
            if !foreignWrites.isEmpty {
                let writes = foreignWrites
                foreignWrites = [:]
                for (_, (channel, items)) in writes {
                    channel.eventLoop.execute { ChatHost.writeNow(items, to: channel) }
                }
            }
        }
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
