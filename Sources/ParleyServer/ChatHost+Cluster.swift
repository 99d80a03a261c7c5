import NIOCore
import ParleyCore
import ParleyStorage

/// The shell's side of a cluster: payloads from other nodes are applied to the domain or
/// written to this node's connections; nodes that went away take their users with them.
extension ChatHost {
    /// Starts taking payloads from the other nodes and tells them this node has (re)started:
    /// they forget what they knew of its previous run and send what this node needs to know.
    func joinCluster() {
        guard let cluster else { return }
        cluster.start(
            receive: { [weak self] source, payload in self?.receiveFromPeer(source, payload) },
            peersGone: { [weak self] nodes in self?.peersGone(nodes) })
        var hello = ByteBuffer()
        ClusterCodec.append(.hello, to: &hello)
        cluster.send(hello, to: nil)
    }

    func receiveFromPeer(_ source: UInt16, _ payload: ByteBuffer) {
        guard let cluster else { return }
        let records: [ClusterRecord]
        do {
            records = try ClusterCodec.decode(payload)
        } catch {
            logger.error("unreadable payload from another node", metadata: ["node": "\(source)", "error": "\(error)"])
            return
        }
        cluster.notePeer(source)
        logger.trace("from another node", metadata: ["node": "\(source)", "records": "\(records.count)"])
        var writes: [ResolvedDelivery] = []
        for record in records {
            switch record {
            case .hello:
                // Whatever this node knew of the sender's previous run is gone; the sender
                // learns this node's users.
                writes += perform { core, outbox in core.remoteNodeGone(source, now: Self.now(), into: &outbox) }
                let snapshots = withCore { $0.localSessionSnapshots() }
                var reply = ByteBuffer()
                for snapshot in snapshots { ClusterCodec.append(.event(.session(snapshot)), to: &reply) }
                if reply.readableBytes > 0 { cluster.send(reply, to: source) }
            case .event(let event):
                logger.debug("cluster event", metadata: ["node": "\(source)", "event": "\(event)"])
                writes += perform { core, outbox in core.applyClusterEvent(event, now: Self.now(), into: &outbox) }
            case .lines(let connection, let lines):
                if let delivery = resolve(connection, line: lines, closeAfter: false) { writes.append(delivery) }
            case .close(let connection):
                if let delivery = resolve(connection, line: nil, closeAfter: true) { writes.append(delivery) }
            }
        }
        Self.write(writes)
    }

    func peersGone(_ nodes: [UInt16]) {
        for node in nodes {
            Self.write(perform { core, outbox in core.remoteNodeGone(node, now: Self.now(), into: &outbox) })
        }
    }
}
