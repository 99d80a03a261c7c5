/// A `nick!user@host` glob mask (`*` any run, `?` one character), as used by bans and WHO.
public struct IRCMask: Sendable, Hashable, CustomStringConvertible {
    public let pattern: String

    public init(_ pattern: String) {
        self.pattern = pattern
    }

    public var description: String { pattern }

    /// Whether `candidate` matches, comparing case-insensitively under `caseMapping`.
    /// Greedy matching with one backtrack point: O(pattern × candidate), never exponential.
    public func matches(_ candidate: String, caseMapping: IRCCaseMapping = .ascii) -> Bool {
        let pattern = Array(caseMapping.fold(self.pattern).utf8)
        let text = Array(caseMapping.fold(candidate).utf8)
        var p = 0, t = 0
        var star = -1, starText = 0
        while t < text.count {
            if p < pattern.count && (pattern[p] == UInt8(ascii: "?") || pattern[p] == text[t]) {
                p += 1; t += 1
            } else if p < pattern.count && pattern[p] == UInt8(ascii: "*") {
                star = p; starText = t; p += 1
            } else if star >= 0 {
                p = star + 1; starText += 1; t = starText
            } else {
                return false
            }
        }
        while p < pattern.count && pattern[p] == UInt8(ascii: "*") { p += 1 }
        return p == pattern.count
    }

    /// Completes a partial mask the way ban lists expect: `bob` → `bob!*@*`,
    /// `*@host` → `*!*@host`, `bob!x` → `bob!x@*`.
    public static func normalized(_ raw: String) -> String {
        if raw.isEmpty { return "*!*@*" }
        let hasBang = raw.contains("!")
        let hasAt = raw.contains("@")
        switch (hasBang, hasAt) {
        case (true, true): return raw
        case (true, false): return raw + "@*"
        case (false, true): return "*!" + raw
        case (false, false): return raw + "!*@*"
        }
    }
}
