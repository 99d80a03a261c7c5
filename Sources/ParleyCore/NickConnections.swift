/// The connections holding one nick, in the order they took it: nearly always one (a guest, or
/// an account on one device), kept inline; the rest (an account's other devices) in an array.
/// An array for every nick cost each idle guest a heap object of 48 bytes (issue 16).
struct NickConnections: RandomAccessCollection, ExpressibleByArrayLiteral, Sendable {
    /// The first connection; `ConnectionID(0)` when there is none (no connection's id is 0).
    private var head = ConnectionID(0)
    private var tail: [ConnectionID] = []

    init() {}

    init(arrayLiteral connections: ConnectionID...) {
        for connection in connections { append(connection) }
    }

    var startIndex: Int { 0 }
    var endIndex: Int { head.rawValue == 0 ? 0 : 1 + tail.count }

    subscript(position: Int) -> ConnectionID {
        position == 0 ? head : tail[position - 1]
    }

    mutating func append(_ connection: ConnectionID) {
        if head.rawValue == 0 { head = connection } else { tail.append(connection) }
    }

    mutating func removeAll(where shouldBeRemoved: (ConnectionID) -> Bool) {
        let kept = filter { !shouldBeRemoved($0) }
        self = NickConnections()
        for connection in kept { append(connection) }
    }
}
