/// Issues IRCv3 `msgid` values that are unique across restarts: a per-start prefix derived from
/// the start time, then a counter. Short ids keep every delivered line small. In a cluster the
/// node's name comes first (`node.start-counter`): two nodes may start in the same millisecond,
/// and a node finds the messages it is responsible for by that prefix.
public struct MessageIDGenerator: Sendable {
    private let prefix: String
    private var counter: UInt64 = 0

    public init(startedAt: Timestamp, node: String? = nil) {
        let start = String(UInt64(max(0, startedAt.millisecondsSince1970)), radix: 36)
        prefix = node.map { $0 + "." + start } ?? start
    }

    public mutating func next() -> String {
        counter += 1
        return prefix + "-" + String(counter, radix: 36)
    }
}
