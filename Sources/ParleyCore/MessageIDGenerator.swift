/// Issues IRCv3 `msgid` values that are unique across restarts: a per-start prefix derived from
/// the start time, then a counter. Short ids keep every delivered line small.
public struct MessageIDGenerator: Sendable {
    private let prefix: String
    private var counter: UInt64 = 0

    public init(startedAt: Timestamp) {
        prefix = String(UInt64(max(0, startedAt.millisecondsSince1970)), radix: 36)
    }

    public mutating func next() -> String {
        counter += 1
        return prefix + "-" + String(counter, radix: 36)
    }
}
