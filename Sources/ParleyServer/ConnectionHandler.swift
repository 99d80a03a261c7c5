import IRCWire
import Logging
import NIOCore
import ParleyCore

/// The per-connection pipeline end: parses framed lines, applies flood control, hands messages to
/// the domain and writes what it decided. Writes to other connections on this event loop are
/// flushed once per read batch, so a burst of messages costs one syscall per receiver.
final class IRCConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = IRCLineFrame
    typealias OutboundOut = ByteBuffer

    private let host: ChatHost
    private let isSecure: Bool
    private var logger: Logger
    /// Read once: asking the logger per line cost more than the line's parsing.
    private let tracesLines: Bool
    private var connection: ConnectionID?
    private var flood: TokenBucket
    private var heldBack = CircularBuffer<IRCLineFrame>()
    private var drainScheduled = false

    // Writes decided during the current read batch: the lines for each receiver on this event
    // loop are gathered into one buffer and written once, so a burst of messages costs one
    // pipeline write and one syscall per receiver, not one per line.
    private var pendingOutput: [ObjectIdentifier: PendingOutput] = [:]
    private var foreignWrites: [ObjectIdentifier: (Channel, [ChatHost.ResolvedDelivery])] = [:]
    private var resolved: [ChatHost.ResolvedDelivery] = []

    private struct PendingOutput {
        let channel: Channel
        var bytes: ByteBuffer
        /// Whether `bytes` is a buffer of our own (after a second line), not a shared line.
        var isGathered = false
        var closeAfter = false

        mutating func append(_ line: ByteBuffer) {
            if !isGathered {
                // Lines may be shared between receivers: gather into a fresh buffer.
                var gathered = channel.allocator.buffer(capacity: max(2048, 2 * (bytes.readableBytes + line.readableBytes)))
                gathered.writeImmutableBuffer(bytes)
                bytes = gathered
                isGathered = true
            }
            bytes.writeImmutableBuffer(line)
        }
    }

    init(host: ChatHost, isSecure: Bool, logger: Logger) {
        self.host = host
        self.isSecure = isSecure
        self.logger = logger
        self.tracesLines = logger.logLevel <= .trace
        self.flood = TokenBucket(
            ratePerSecond: host.configuration.limits.floodCommandsPerSecond,
            burst: host.configuration.limits.floodBurst, now: ChatHost.now())
    }

    func channelActive(context: ChannelHandlerContext) {
        let address = Self.normalizedAddress(context.channel.remoteAddress)
        switch host.admit(context.channel, address: address, isSecure: isSecure) {
        case .admitted(let id):
            connection = id
            logger[metadataKey: "connection"] = "\(id)"
            logger.debug("connected", metadata: ["address": "\(address)", "tls": "\(isSecure)"])
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
        let frame = unwrapInboundIn(data)
        let now = ChatHost.now()
        if !heldBack.isEmpty || !flood.take(now: now) {
            holdBack(frame, context: context)
            return
        }
        process(frame, now: now, context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushBatch(context: context)
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let id = connection {
            connection = nil
            host.connectionClosed(id, reason: "Connection closed")
            logger.debug("disconnected")
        }
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        // The write buffer's high watermark is the send queue limit: a client that does not read
        // is cut off instead of growing the server's memory.
        if !context.channel.isWritable, let id = connection {
            logger.notice("send queue exceeded")
            connection = nil
            host.connectionClosed(id, reason: "SendQ exceeded")
            context.close(promise: nil)
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: Flood control

    private func holdBack(_ frame: IRCLineFrame, context: ChannelHandlerContext) {
        heldBack.append(frame)
        if heldBack.count > host.configuration.limits.floodQueueLimit, let id = connection {
            logger.notice("excess flood")
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
            host.perform(into: &resolved) { core, outbox in
                core.receiveInvalidLine(.tooLong, command: nil, label: nil, from: id, now: now, into: &outbox)
            }
        case .line(let bytes):
            do {
                let message = try IRCMessage(parsing: bytes)
                if tracesLines { logger.trace("<- \(message.wireString)") }
                host.perform(into: &resolved) { core, outbox in
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
                host.perform(into: &resolved) { core, outbox in
                    core.receiveInvalidLine(problem, command: lossy?.command.uppercased(), label: lossy?.tagValue("label"), from: id, now: now, into: &outbox)
                }
            }
        }
        collectResolved()
    }

    private func collect(_ deliveries: [ChatHost.ResolvedDelivery], context: ChannelHandlerContext) {
        resolved.append(contentsOf: deliveries)
        collectResolved()
    }

    private func collectResolved() {
        for delivery in resolved {
            let channel = delivery.channel
            guard channel.eventLoop.inEventLoop else {
                foreignWrites[ObjectIdentifier(channel), default: (channel, [])].1.append(delivery)
                continue
            }
            let key = ObjectIdentifier(channel)
            if let index = pendingOutput.index(forKey: key) {
                if let line = delivery.line { pendingOutput.values[index].append(line) }
                if delivery.closeAfter { pendingOutput.values[index].closeAfter = true }
            } else {
                pendingOutput[key] = PendingOutput(channel: channel, bytes: delivery.line ?? ByteBuffer(), closeAfter: delivery.closeAfter)
            }
        }
        resolved.removeAll(keepingCapacity: true)
    }

    private func flushBatch(context: ChannelHandlerContext) {
        if !pendingOutput.isEmpty {
            for output in pendingOutput.values {
                if output.bytes.readableBytes > 0 { output.channel.write(output.bytes, promise: nil) }
                if output.closeAfter {
                    ChatHost.closeAfterFlush(output.channel)
                } else {
                    output.channel.flush()
                }
            }
            pendingOutput.removeAll(keepingCapacity: true)
        }
        if !foreignWrites.isEmpty {
            for (_, (channel, items)) in foreignWrites {
                channel.eventLoop.execute { ChatHost.writeNow(items, to: channel) }
            }
            foreignWrites.removeAll(keepingCapacity: true)
        }
    }
}
