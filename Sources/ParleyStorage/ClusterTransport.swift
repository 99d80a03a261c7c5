import NIOCore
import ParleyCore

/// How the nodes of a cluster reach each other: a shared database in practice (PostgreSQL's
/// `ParleyStorePostgres.PostgresClusterLink`). Payloads are opaque here (`ClusterCodec` writes
/// them); what a transport guarantees is order and liveness.
public protocol ClusterTransport: Sendable {
    /// This node's number (1...4095), unique among the cluster's nodes, stable for its name.
    var nodeNumber: UInt16 { get }
    var nodeName: String { get }
    /// Starts delivering. `receive` gets every payload a peer sent to this node, each peer's in
    /// the order it sent them; `returned` a payload this node sent to a node that went away
    /// before taking it; `peerGone` a node that stopped (crashed, lost the database, or
    /// left), at most two `checkInterval`s after it happened (not one: a node that lost the
    /// database for a moment takes its liveness back), while no other node declares it
    /// dead and it cannot come back (so what is done then, such as taking over its undelivered
    /// messages, is done by one node at a time), with every payload sent to it that it never
    /// took, whichever node sent them (their senders get theirs back through `returned` too).
    /// `rejoined` when this node is back after losing the database, saying whether the others
    /// took it for dead meanwhile.
    func start(receive: @escaping @Sendable (_ source: UInt16, _ payload: ByteBuffer) -> Void,
               returned: @escaping @Sendable (_ undeliveredTo: UInt16, _ payload: ByteBuffer) -> Void,
               peerGone: @escaping @Sendable (_ node: UInt16, _ untakenPayloads: [ByteBuffer]) async -> Void,
               rejoined: @escaping @Sendable (_ wasTakenForDead: Bool) -> Void)
    /// Queues a payload for one node, or for every live peer when `node` is nil, and returns at
    /// once; payloads queued one after another arrive in that order.
    func send(_ payload: ByteBuffer, to node: UInt16?)
    /// A node that sent something is alive, even before the next liveness check says so (it has
    /// just started): later payloads for every peer include it.
    func notePeer(_ node: UInt16)
    /// The nodes this node currently takes for alive (those a payload for every peer goes to).
    var peerNodes: Set<UInt16> { get }
    /// Sends what is queued, then leaves the cluster (the others see this node gone at once).
    func leave() async
}

/// What a store shared by the nodes of a cluster does when a node dies (PostgreSQL's).
///
/// Each undelivered recipient row is held by one node, which keeps the message in memory and
/// hands it over at the recipient's next login: by default the node that stored it (named by
/// the message id's prefix); after that node died, the node that took its rows over.
public protocol ClusterDeliveryStore: Sendable {
    /// From now on `loadDeliveryState` loads only the undelivered rows this node holds.
    func holdUndelivered(asNode name: String)
    /// A message handed to another node's connections never reached them (that node died
    /// first): its recipient rows count as undelivered again, held by `holder`. Returns those
    /// messages, each with the recipients concerned (rows already read stay delivered and are
    /// left out, as are messages deleted meanwhile).
    func returnHandOvers(_ handOvers: [(messageID: String, account: String)], holder: String) async throws -> [StoredMessage]
    /// The recent messages sent through the dead node `node` (the window
    /// `ChatStore.loadDeliveryState` loads, for that node's messages only, with all their
    /// recipients), for `follower` to follow their receipts from now on, as the dead node did.
    /// Those whose receipts all count as sent are included: a group read position stored since
    /// the death was noticed counts as sent but is not (`ChatServer.adoptFollowed` decides).
    /// Every node that sees the death asks; only the first gets them (none for the others),
    /// until the dead node starts a new run.
    ///
    /// The first also takes over what the dead node followed for nodes that died before it
    /// (and, in turn, what those followed), each until that node starts a new run: the
    /// messages come grouped by the node they were sent through, the dead node's first.
    func followedMessages(ofNode node: UInt16, follower: String, since: Timestamp,
                          maxTrackedRecipients: Int) async throws -> [(sentThrough: UInt16, messages: [StoredMessage])]
    /// The recent messages of the dead nodes that `follower` follows (as `followedMessages` and
    /// its chains left them), grouped by the node they were sent through: a node that starts
    /// again, before any other noticed that its previous run died, follows what that run
    /// followed. None when another node took them over.
    func messagesFollowed(by follower: String, since: Timestamp,
                          maxTrackedRecipients: Int) async throws -> [(sentThrough: UInt16, messages: [StoredMessage])]
    /// Which of `nodes` (handed to `follower` by `followedMessages` along with a dead node's
    /// messages) `follower` still follows: one that started a new run since follows its own
    /// messages again.
    func stillFollowed(_ nodes: [UInt16], by follower: String) async throws -> Set<UInt16>
    /// Another node left or died: the direct conversations it began are recorded for
    /// `CHATHISTORY TARGETS`, should it be of an earlier version that did not record them.
    func recordConversationParties() async throws
    /// Takes over the undelivered rows the dead node `node` held, for `holder`, and returns
    /// those messages with their undelivered recipients. Run by one node at a time.
    func adoptUndelivered(ofNode node: UInt16, holder: String) async throws -> [StoredMessage]
}
