/// How nicks and channel names compare (ISUPPORT CASEMAPPING).
public enum IRCCaseMapping: String, Sendable, Hashable, CaseIterable {
    /// Only A-Z fold to a-z.
    case ascii
    /// Also `[]\~` fold to `{}|^`.
    case rfc1459
    /// Also `[]\` fold to `{}|`, but not `~`.
    case strictRFC1459 = "strict-rfc1459"

    /// The folded form used as a dictionary key; returns the input unchanged (no allocation)
    /// when nothing needs folding.
    public func fold(_ text: String) -> String {
        // A closure, not the method itself: a partially applied method was a heap object per call.
        guard text.utf8Contains(where: { needsFolding($0) }) else { return text }
        return String(decoding: text.utf8.map(foldByte), as: UTF8.self)
    }

    @inline(__always)
    func needsFolding(_ byte: UInt8) -> Bool {
        if byte >= 0x41 && byte <= 0x5A { return true }
        switch self {
        case .ascii: return false
        case .rfc1459: return byte == 0x5B || byte == 0x5C || byte == 0x5D || byte == 0x7E
        case .strictRFC1459: return byte == 0x5B || byte == 0x5C || byte == 0x5D
        }
    }

    @inline(__always)
    func foldByte(_ byte: UInt8) -> UInt8 {
        needsFolding(byte) ? (byte >= 0x41 && byte <= 0x5A ? byte + 32 : (byte == 0x7E ? 0x5E : byte + 32)) : byte
    }

    /// Compares two strings under this mapping.
    public func equal(_ lhs: String, _ rhs: String) -> Bool {
        lhs.utf8.count == rhs.utf8.count && fold(lhs) == fold(rhs)
    }
}
