/// Why a nickname or channel name was refused.
public enum NameError: Error, Sendable, Hashable {
    case empty, tooLong, invalidCharacter, missingPrefix
}

/// A validated nickname. Equality and hashing use the case-folded form, so `Alice` == `alice`.
public struct Nickname: Sendable, Hashable, CustomStringConvertible {
    /// The nickname as the user typed it.
    public let name: String
    /// The case-folded form, for comparison and lookup.
    public let folded: String

    public init(_ raw: String, caseMapping: IRCCaseMapping = .ascii, maxLength: Int = 30) throws(NameError) {
        let utf8 = raw.utf8
        guard let first = utf8.first else { throw .empty }
        guard utf8.count <= maxLength else { throw .tooLong }
        guard Self.isLetterOrSpecial(first) else { throw .invalidCharacter }
        for byte in utf8.dropFirst() where !(Self.isLetterOrSpecial(byte) || Self.isDigit(byte) || byte == UInt8(ascii: "-")) {
            throw .invalidCharacter
        }
        name = raw
        folded = caseMapping.fold(raw)
    }

    static func isLetterOrSpecial(_ byte: UInt8) -> Bool {
        (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            || byte == UInt8(ascii: "[") || byte == UInt8(ascii: "]") || byte == UInt8(ascii: "\\")
            || byte == UInt8(ascii: "`") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "^")
            || byte == UInt8(ascii: "{") || byte == UInt8(ascii: "|") || byte == UInt8(ascii: "}")
    }

    static func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

    public static func == (lhs: Nickname, rhs: Nickname) -> Bool { lhs.folded == rhs.folded }
    public func hash(into hasher: inout Hasher) { hasher.combine(folded) }
    public var description: String { name }
}

/// A validated channel name such as `#parley`. Equality and hashing use the case-folded form.
public struct ChannelName: Sendable, Hashable, CustomStringConvertible {
    public let name: String
    public let folded: String

    public init(_ raw: String, caseMapping: IRCCaseMapping = .ascii, maxLength: Int = 64, prefixes: String = "#") throws(NameError) {
        let utf8 = raw.utf8
        guard let first = utf8.first else { throw .empty }
        guard prefixes.utf8.contains(first) else { throw .missingPrefix }
        guard utf8.count > 1 else { throw .empty }
        guard utf8.count <= maxLength else { throw .tooLong }
        for byte in utf8 {
            switch byte {
            case 0x00, 0x07, 0x0A, 0x0D, UInt8(ascii: " "), UInt8(ascii: ","), UInt8(ascii: ":"):
                throw .invalidCharacter
            default:
                continue
            }
        }
        name = raw
        folded = caseMapping.fold(raw)
    }

    public static func == (lhs: ChannelName, rhs: ChannelName) -> Bool { lhs.folded == rhs.folded }
    public func hash(into hasher: inout Hasher) { hasher.combine(folded) }
    public var description: String { name }
}
