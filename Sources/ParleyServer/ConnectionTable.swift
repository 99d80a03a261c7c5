import NIOConcurrencyHelpers
import NIOCore
import ParleyCore

/// The open connections' channels, found by the slot number each `ConnectionID` carries in its
/// low bits: every delivery is resolved to its channel, and an array index costs less than
/// hashing an id (fan-out resolves a thousand per message). The high bits are a serial number,
/// so an id is never reused even when its slot is.
///
/// Columns rather than an array of entries: checking a slot's id is then a plain integer compare
/// that copies (and retains) nothing.
///
/// A class touched only under `ChatHost`'s lock: the write batch holds on to it while the domain
/// encodes lines straight into receivers' outputs (`WriteBatch.write(to:capacity:_:)`), during
/// the same locked call. Hence `@unchecked Sendable`.
final class ConnectionTable: @unchecked Sendable {
    static let slotBits = ConnectionID.slotBits

    /// The id in each slot; 0 for a free slot (serial numbers start at 1).
    private var ids: [UInt64] = []
    private var channels: [Channel?] = []
    /// Each channel's event loop, to tell same-loop writes apart without asking the channel
    /// (meaningless in a free slot, whose id is 0). Not optional: an optional identifier takes
    /// 16 bytes per slot, this 8.
    private var loops: [ObjectIdentifier] = []
    private var addresses: [String] = []
    private var freeSlots: [Int] = []
    private var serial: UInt64 = 0
    private(set) var count = 0
    /// This node's number in the id's top bits (0 when the server runs alone).
    private let nodeBits: UInt64
    /// Unique to this table in the process: servers in one process (tests) have a table each,
    /// whose ids can be equal, and their connections share event loop threads (`WriteBatch`).
    let token: UInt64
    private static let tokens = NIOLockedValueBox<UInt64>(0)

    init(node: UInt16 = 0) {
        nodeBits = UInt64(node) << ConnectionID.nodeShift
        token = Self.tokens.withLockedValue { $0 += 1; return $0 }
    }

    func insert(_ channel: Channel, address: String) -> ConnectionID {
        let slot: Int
        if let reused = freeSlots.popLast() {
            slot = reused
        } else {
            slot = ids.count
            ids.append(0)
            channels.append(nil)
            loops.append(ObjectIdentifier(ConnectionTable.self))
            addresses.append("")
        }
        serial += 1
        let id = ConnectionID(nodeBits | serial << Self.slotBits | UInt64(slot))
        ids[slot] = id.rawValue
        channels[slot] = channel
        loops[slot] = ObjectIdentifier(channel.eventLoop)
        addresses[slot] = address
        count += 1
        return id
    }

    private func contains(_ id: ConnectionID, slot: Int) -> Bool {
        slot < ids.count && ids[slot] == id.rawValue
    }

    /// A write to `id`, resolved to its channel, or nil when the connection is gone.
    func delivery(to id: ConnectionID, line: ByteBuffer?, closeAfter: Bool = false) -> ChatHost.ResolvedDelivery? {
        let slot = id.slot
        guard contains(id, slot: slot), let channel = channels[slot] else { return nil }
        return ChatHost.ResolvedDelivery(channel: channel, connection: id, table: token, slot: slot, loop: loops[slot], line: line, closeAfter: closeAfter)
    }

    /// The event loop of `id`'s channel, or nil when the connection is gone (nothing retained).
    func loop(of id: ConnectionID) -> ObjectIdentifier? {
        let slot = id.slot
        return contains(id, slot: slot) ? loops[slot] : nil
    }

    /// The channel of a connection that `loop(of:)` found.
    func channel(of id: ConnectionID) -> Channel {
        channels[id.slot]!
    }

    /// Forgets the connection; returns the address it came from.
    func remove(_ id: ConnectionID) -> String? {
        let slot = id.slot
        guard contains(id, slot: slot) else { return nil }
        let address = addresses[slot]
        ids[slot] = 0
        channels[slot] = nil
        addresses[slot] = ""
        freeSlots.append(slot)
        count -= 1
        return address
    }
}
