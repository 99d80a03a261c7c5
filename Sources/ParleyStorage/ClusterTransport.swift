import NIOCore

/// How the nodes of a cluster reach each other: a shared database in practice (PostgreSQL's
/// `ParleyStorePostgres.PostgresClusterLink`). Payloads are opaque here (`ClusterCodec` writes
/// them); what a transport guarantees is order and liveness.
public protocol ClusterTransport: Sendable {
    /// This node's number (1...4095), unique among the cluster's nodes, stable for its name.
    var nodeNumber: UInt16 { get }
    var nodeName: String { get }
    /// Starts delivering. `receive` gets every payload a peer sent to this node, each peer's in
    /// the order it sent them; `peersGone` the nodes that stopped (crashed, lost the database,
    /// or left), once each, at most `checkInterval` after it happened.
    func start(receive: @escaping @Sendable (_ source: UInt16, _ payload: ByteBuffer) -> Void,
               peersGone: @escaping @Sendable (_ nodes: [UInt16]) -> Void)
    /// Queues a payload for one node, or for every live peer when `node` is nil, and returns at
    /// once; payloads queued one after another arrive in that order.
    func send(_ payload: ByteBuffer, to node: UInt16?)
    /// A node that sent something is alive, even before the next liveness check says so (it has
    /// just started): later payloads for every peer include it.
    func notePeer(_ node: UInt16)
    /// Sends what is queued, then leaves the cluster (the others see this node gone at once).
    func leave() async
}
