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
        // Written into the string's own storage: two concatenations and a radix conversion
        // cost about 1,000 instructions per stored message (callgrind).
        var digits: (UInt64, UInt64) = (0, 0)  // 16 bytes: a UInt64 takes at most 13 in base 36
        let digitCount = withUnsafeMutableBytes(of: &digits) { buffer in
            var value = counter
            var position = buffer.count
            repeat {
                position -= 1
                let digit = UInt8(value % 36)
                buffer[position] = digit < 10 ? UInt8(ascii: "0") + digit : UInt8(ascii: "a") + digit - 10
                value /= 36
            } while value > 0
            return buffer.count - position
        }
        var prefix = self.prefix
        return prefix.withUTF8 { prefixBytes in
            String(unsafeUninitializedCapacity: prefixBytes.count + 1 + digitCount) { line in
                var offset = 0
                for byte in prefixBytes { line[offset] = byte; offset += 1 }
                line[offset] = UInt8(ascii: "-")
                offset += 1
                withUnsafeBytes(of: digits) { buffer in
                    for byte in buffer.suffix(digitCount) { line[offset] = byte; offset += 1 }
                }
                return offset
            }
        }
    }
}
