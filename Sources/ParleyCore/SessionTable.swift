/// The sessions, by connection id. A connection of this node is found at the slot number its
/// id carries in its low bits (the shell's connection table gives out the slots), an array
/// index instead of hashing the id: the message path looks up the sender's and the receiver's
/// sessions for every direct message, and the two hashed lookups were about 6 % of its
/// instructions. Other nodes' connections, and ids whose slot is taken by another id (ids a
/// test makes up), are kept in a dictionary.
struct SessionTable: Sendable {
    /// Slots beyond this go to the dictionary, so a made-up id cannot grow the array without
    /// bound (the shell's table fills slots from 0 up, one per open connection).
    static let maximumSlot = 1 << 20

    private var bySlot: [Session?] = []
    private var others: [ConnectionID: Session] = [:]
    private let localNode: UInt16
    private(set) var count = 0

    init(localNode: UInt16) {
        self.localNode = localNode
    }

    subscript(id: ConnectionID) -> Session? {
        get {
            let slot = id.slot
            if id.node == localNode, slot < bySlot.count, let session = bySlot[slot], session.id == id { return session }
            return others.isEmpty ? nil : others[id]
        }
        set {
            let slot = id.slot
            if id.node == localNode, slot < Self.maximumSlot {
                if slot < bySlot.count, let held = bySlot[slot], held.id == id {
                    bySlot[slot] = newValue
                    if newValue == nil { count -= 1 }
                    return
                }
                if let newValue, slot >= bySlot.count || bySlot[slot] == nil, others[id] == nil {
                    if slot >= bySlot.count { bySlot += repeatElement(nil, count: max(slot + 1, 2 * bySlot.count, 64) - bySlot.count) }
                    bySlot[slot] = newValue
                    count += 1
                    return
                }
            }
            if let newValue {
                if others.updateValue(newValue, forKey: id) == nil { count += 1 }
            } else if others.removeValue(forKey: id) != nil {
                count -= 1
            }
        }
    }

    /// Every session, in no particular order.
    var values: [Session] {
        bySlot.compactMap { $0 } + others.values
    }

    /// Every session's connection id, in no particular order.
    var keys: [ConnectionID] {
        bySlot.compactMap { $0?.id } + others.keys
    }
}

extension ConnectionID {
    /// The low bits of a connection's id: its slot in the shell's connection table (above them
    /// a serial number, so an id is never reused even when its slot is; above that the node).
    public static let slotBits: UInt64 = 24
    public static let slotMask: UInt64 = (1 << slotBits) - 1

    public var slot: Int { Int(rawValue & Self.slotMask) }
}
