import NIOCore
import ParleyCore

/// The open connections' channels, found by the slot number each `ConnectionID` carries in its
/// low bits: every delivery is resolved to its channel, and an array index costs less than
/// hashing an id (fan-out resolves a thousand per message). The high bits are a serial number,
/// so an id is never reused even when its slot is.
struct ConnectionTable: Sendable {
    struct Entry: Sendable {
        let id: ConnectionID
        let channel: Channel
        /// The channel's event loop, to tell same-loop writes apart without asking the channel.
        let loop: ObjectIdentifier
        let address: String
    }

    static let slotBits: UInt64 = 24
    static let slotMask: UInt64 = (1 << slotBits) - 1

    private var entries: [Entry?] = []
    private var freeSlots: [Int] = []
    private var serial: UInt64 = 0
    private(set) var count = 0

    static func slot(of id: ConnectionID) -> Int { Int(id.rawValue & slotMask) }

    mutating func insert(_ channel: Channel, address: String) -> ConnectionID {
        let slot: Int
        if let reused = freeSlots.popLast() {
            slot = reused
        } else {
            slot = entries.count
            entries.append(nil)
        }
        serial += 1
        let id = ConnectionID(serial << Self.slotBits | UInt64(slot))
        entries[slot] = Entry(id: id, channel: channel, loop: ObjectIdentifier(channel.eventLoop), address: address)
        count += 1
        return id
    }

    subscript(id: ConnectionID) -> Entry? {
        let slot = Self.slot(of: id)
        guard slot < entries.count, let entry = entries[slot], entry.id == id else { return nil }
        return entry
    }

    /// A write to `id`, resolved without copying its whole entry (fan-out does this per member).
    func delivery(to id: ConnectionID, line: ByteBuffer?, closeAfter: Bool = false) -> ChatHost.ResolvedDelivery? {
        let slot = Self.slot(of: id)
        guard slot < entries.count, entries[slot]?.id == id else { return nil }
        return ChatHost.ResolvedDelivery(channel: entries[slot].unsafelyUnwrapped.channel, slot: slot,
                                         loop: entries[slot].unsafelyUnwrapped.loop, line: line, closeAfter: closeAfter)
    }

    @discardableResult
    mutating func remove(_ id: ConnectionID) -> Entry? {
        guard let entry = self[id] else { return nil }
        let slot = Self.slot(of: id)
        entries[slot] = nil
        freeSlots.append(slot)
        count -= 1
        return entry
    }
}
