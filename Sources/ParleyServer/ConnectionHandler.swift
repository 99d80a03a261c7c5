import IRCWire
import Logging
import NIOCore
import ParleyCore

/// The per-connection pipeline end: frames lines, parses them, applies flood control, hands
/// messages to the domain and writes what it decided. It frames lines itself rather than behind
/// a `ByteToMessageHandler`: one handler less per connection (its buffers were a tenth of an idle
/// connection's memory) and no pipeline event per line. Writes go through `WriteBatch`.
final class IRCConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    // Stored properties are ordered so that they pack without padding: with 10,000 idle
    // connections every byte of this object is 10 KB (issue 16's memory per connection).
    private let host: ChatHost
    /// This thread's writes of the current read batch (shared by the connections of one event
    /// loop, so an idle connection holds no write bookkeeping of its own).
    /// Taken on first use, which is on this connection's event loop thread, like every later use.
    private lazy var batch = WriteBatch.current
    private var inbox: LoopInbox?
    /// The client's address when the socket's peer is not the client (a trusted reverse proxy
    /// in front of a web listener said who it forwards for).
    private let forwardedAddress: String?
    /// What most connections never keep between reads; nil while there is none.
    private var backlog: Backlog?
    private var flood: TokenBucket
    private var lineDecoder: IRCLineDecoder
    private var connection: ConnectionID?
    private let isSecure: Bool
    /// Read once: asking the logger per line cost more than the line's parsing.
    private let tracesLines: Bool
    /// How the client reached the server, for the open-connections gauge.
    private let transport: ServerMetrics.Transport
    /// Whether this connection is counted as open (from admission until the socket closes).
    private var countedOpen = false
    private var drainScheduled = false
    /// Not being read until the storage writer catches up (see `pauseIfStorageIsBehind`).
    private var pausedForStorage = false

    /// Input kept between reads: the start of a line whose end has not arrived yet (or lines
    /// read while paused for storage), copied out of NIO's receive buffer (which NIO reuses for
    /// the next read only when nothing else holds it), and lines held back by flood control,
    /// oldest first. Boxed and made on first use: most connections never keep either, and inline
    /// they cost every idle connection about 50 bytes.
    private final class Backlog {
        var partialLine: ByteBuffer?
        var heldBack: CircularBuffer<IRCLineFrame>?
        var isEmpty: Bool { partialLine == nil && heldBack == nil }
    }

    /// The server's logger, not a copy: even without metadata a copy cost about 60 bytes per idle
    /// connection. The connection id is added where something is logged.
    private var logger: Logger { host.logger }
    private var isHoldingBack: Bool { backlog?.heldBack.map { !$0.isEmpty } ?? false }

    /// Takes the kept start of a line (or the lines read while paused), dropping the box when
    /// nothing else is in it.
    private func takePartialLine() -> ByteBuffer? {
        guard let backlog, let partial = backlog.partialLine else { return nil }
        backlog.partialLine = nil
        if backlog.isEmpty { self.backlog = nil }
        return partial
    }

    private func makeBacklog() -> Backlog {
        if let backlog { return backlog }
        let made = Backlog()
        backlog = made
        return made
    }

    init(host: ChatHost, isSecure: Bool, maximumLineBytes: Int, forwardedAddress: String? = nil, isWebSocket: Bool = false) {
        self.forwardedAddress = forwardedAddress
        self.transport = isWebSocket ? .websocket : isSecure ? .tls : .tcp
        self.lineDecoder = IRCLineDecoder(maximumLineBytes: maximumLineBytes)
        self.host = host
        self.isSecure = isSecure
        self.tracesLines = host.logger.logLevel <= .trace
        self.flood = TokenBucket(host.floodRate, now: ChatHost.now())
    }

    func channelActive(context: ChannelHandlerContext) {
        admit(context)
        context.fireChannelActive()
    }

    /// Added to a connection that is already open (a WebSocket, after its HTTP upgrade): the
    /// session starts now.
    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { admit(context) }
    }

    private func admit(_ context: ChannelHandlerContext) {
        guard connection == nil else { return }
        let address = forwardedAddress ?? Self.normalizedAddress(context.channel.remoteAddress)
        switch host.admit(context.channel, address: address, isSecure: isSecure) {
        case .admitted(let id):
            connection = id
            countedOpen = true
            host.metrics.connectionOpened(transport)
            logger.debug("connected", metadata: ["connection": "\(id)", "address": "\(address)", "tls": "\(isSecure)"])
        case .refused(let reason):
            logger.notice("refused connection", metadata: ["address": "\(address)", "reason": "\(reason)"])
            var buffer = context.channel.allocator.buffer(capacity: 64)
            IRCMessage(command: "ERROR", parameters: ["Closing link: \(address) (\(reason))"]).write(to: &buffer)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
        }
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
        // Lines other loops decided earlier go out before this read's replies.
        if inbox == nil { inbox = LoopInbox.of(context.eventLoop) }
        inbox!.writePending()
        var bytes = unwrapInboundIn(data)
        if pausedForStorage {
            // NIO may finish its current round of reads after autoRead is off: keep them.
            let backlog = makeBacklog()
            if backlog.partialLine == nil { backlog.partialLine = context.channel.allocator.buffer(capacity: bytes.readableBytes) }
            backlog.partialLine!.writeBuffer(&bytes)
            return
        }
        if var partial = takePartialLine() {
            partial.writeBuffer(&bytes)
            bytes = partial
        }
        handleLines(in: &bytes, context: context, mayPause: true)
        keepUnhandled(&bytes, context: context)
    }

    /// Handles the complete lines at the start of `bytes`; with `mayPause`, stops after a line
    /// that left storage behind (see `pauseIfStorageIsBehind`).
    private func handleLines(in bytes: inout ByteBuffer, context: ChannelHandlerContext, mayPause: Bool) {
        let now = ChatHost.now()
        while connection != nil, !(mayPause && pausedForStorage), let frame = lineDecoder.nextFrame(&bytes) {
            if isHoldingBack || !flood.take(now: now, at: host.floodRate) {
                holdBack(frame, context: context)
            } else {
                process(frame, now: now, context: context)
                if mayPause { pauseIfStorageIsBehind(context: context) }
            }
        }
    }

    /// Keeps what was not handled (an unfinished line, or lines read while paused), copied out
    /// of NIO's receive buffer.
    private func keepUnhandled(_ bytes: inout ByteBuffer, context: ChannelHandlerContext) {
        if connection != nil && bytes.readableBytes > 0 {
            var partial = context.channel.allocator.buffer(capacity: bytes.readableBytes)
            partial.writeBuffer(&bytes)
            makeBacklog().partialLine = partial
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        batch.flush()
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Lines read while paused for storage were sent before the client left: they run (the
        // backlog grows by one connection's read at most). An unterminated last line is
        // dropped: a half-sent command should not run.
        if pausedForStorage, var unhandled = takePartialLine(), connection != nil {
            pausedForStorage = false
            handleLines(in: &unhandled, context: context, mayPause: false)
        }
        backlog = nil
        if countedOpen {
            countedOpen = false
            host.metrics.connectionClosed(transport)
        }
        if let id = connection {
            connection = nil
            host.connectionClosed(id, reason: "Connection closed")
            logger.debug("disconnected", metadata: ["connection": "\(id)"])
        }
        // Lines read just before the end of the stream may not be followed by a read-complete
        // event: what they decided must not wait for another connection's read.
        batch.flush()
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

    // MARK: Storage backpressure

    /// After a line whose storage work found the writer behind (past
    /// `limits.storageQueueLimit`): stop reading this connection until the writer has caught
    /// up. Lines already read wait in the backlog's `partialLine`, unparsed, in order. Only
    /// connections that add storage work pause; the rest of the server reads on.
    private func pauseIfStorageIsBehind(context: ChannelHandlerContext) {
        guard !pausedForStorage, batch.storageHold != nil, host.storageWriter.isBehind else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let paused = host.storageWriter.resumeWhenCaughtUp {
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.resumeAfterStorage(context: context)
            }
        }
        guard paused else { return }
        pausedForStorage = true
        try? context.channel.syncOptions?.setOption(.autoRead, value: false)
    }

    private func resumeAfterStorage(context: ChannelHandlerContext) {
        guard pausedForStorage else { return }
        pausedForStorage = false
        guard connection != nil else { return }
        if var unhandled = takePartialLine() {
            handleLines(in: &unhandled, context: context, mayPause: true)
            keepUnhandled(&unhandled, context: context)
        }
        batch.flush()
        guard !pausedForStorage else { return }
        try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        if isHoldingBack { scheduleDrain(context: context) }
    }

    // MARK: Flood control

    private func holdBack(_ frame: IRCLineFrame, context: ChannelHandlerContext) {
        let backlog = makeBacklog()
        if backlog.heldBack == nil { backlog.heldBack = CircularBuffer(initialCapacity: 4) }
        backlog.heldBack!.append(frame)
        if backlog.heldBack!.count > host.configuration.limits.floodQueueLimit, let id = connection {
            logger.notice("excess flood", metadata: ["connection": "\(id)"])
            backlog.heldBack = nil
            host.perform(into: batch, onLoop: ObjectIdentifier(context.eventLoop)) { core, outbox in
                core.disconnect(id, reason: "Excess Flood", now: ChatHost.now(), into: &outbox)
            }
            connection = nil
            batch.flush()
            return
        }
        scheduleDrain(context: context)
    }

    private func scheduleDrain(context: ChannelHandlerContext) {
        guard !drainScheduled else { return }
        drainScheduled = true
        let delay = max(1, flood.millisecondsUntilNextToken(now: ChatHost.now(), at: host.floodRate))
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .milliseconds(delay)) {
            let (handler, context) = loopBound.value
            handler.drain(context: context)
        }
    }

    private func drain(context: ChannelHandlerContext) {
        drainScheduled = false
        while !pausedForStorage, let backlog, let frame = backlog.heldBack?.first, connection != nil {
            let now = ChatHost.now()
            guard flood.take(now: now, at: host.floodRate) else { break }
            backlog.heldBack!.removeFirst()
            process(frame, now: now, context: context)
            pauseIfStorageIsBehind(context: context)
        }
        batch.flush()
        if let backlog, backlog.heldBack?.isEmpty == true {
            backlog.heldBack = nil
            if backlog.isEmpty { self.backlog = nil }
        }
        // While paused, the resumption schedules the next drain.
        if isHoldingBack && connection != nil && !pausedForStorage { scheduleDrain(context: context) }
    }

    // MARK: Processing

    private func process(_ frame: IRCLineFrame, now: Timestamp, context: ChannelHandlerContext) {
        guard let id = connection else { return }
        let eventLoopIdentity = ObjectIdentifier(context.eventLoop)
        switch frame {
        case .tooLong:
            host.perform(into: batch, onLoop: eventLoopIdentity) { core, outbox in
                core.receiveInvalidLine(.tooLong, command: nil, label: nil, from: id, now: now, into: &outbox)
            }
        case .line(let bytes):
            do {
                let message = try IRCMessage(parsing: bytes, maxTagsBytes: IRCMessage.maximumClientTagSectionBytes)
                if tracesLines { logger.trace("<- \(message.redactedForLog.wireString)", metadata: ["connection": "\(id)"]) }
                host.perform(into: batch, onLoop: eventLoopIdentity) { core, outbox in
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
                host.perform(into: batch, onLoop: eventLoopIdentity) { core, outbox in
                    core.receiveInvalidLine(problem, command: lossy?.command.uppercased(), label: lossy?.tagValue("label"), from: id, now: now, into: &outbox)
                }
            }
        }
    }
}
