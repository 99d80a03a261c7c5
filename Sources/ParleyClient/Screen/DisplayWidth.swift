/// How many terminal columns text takes: wide characters (CJK, emoji) take two, combining marks
/// and other zero-width characters none, everything else one. The screen lays out lines and
/// places the input cursor with this, so it has to agree with the terminal (wcwidth).
public enum DisplayWidth {
    /// Columns taken by one user-perceived character (a grapheme cluster).
    public static func of(_ character: Character) -> Int {
        var scalars = character.unicodeScalars.makeIterator()
        guard let first = scalars.next() else { return 0 }
        if isZeroWidth(first) {
            // A cluster made only of marks (typed alone, or at the start of a line) takes no
            // column of its own.
            return character.unicodeScalars.allSatisfy(isZeroWidth) ? 0 : 1
        }
        if isWide(first) { return 2 }
        // An emoji-style variation selector (U+FE0F) makes a text symbol wide only in some
        // terminals; wcwidth ignores it, and so do we, to stay in step with the terminal.
        return 1
    }

    public static func of<S: Sequence>(_ text: S) -> Int where S.Element == Character {
        text.reduce(0) { $0 + of($1) }
    }

    public static func of(_ text: String) -> Int {
        // Plain ASCII is one column per byte: skip the cluster walk for the common case.
        if text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return text.utf8.count }
        return of(text as any Sequence<Character>)
    }

    private static func of(_ text: any Sequence<Character>) -> Int {
        var total = 0
        for character in text { total += of(character) }
        return total
    }

    static func isZeroWidth(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .nonspacingMark, .enclosingMark, .format:
            return scalar.value != 0x00AD  // the soft hyphen is drawn
        default:
            return (0x1160...0x11FF).contains(scalar.value)  // Hangul medial vowels and final consonants
        }
    }

    /// East Asian Wide and Fullwidth (Unicode 15), and emoji shown as emoji by default.
    static func isWide(_ scalar: Unicode.Scalar) -> Bool {
        let value = scalar.value
        if value < 0x1100 { return false }
        for range in wideRanges where range.contains(value) { return true }
        return scalar.properties.isEmojiPresentation
    }

    private static let wideRanges: [ClosedRange<UInt32>] = [
        0x1100...0x115F, 0x2329...0x232A, 0x2E80...0x303E, 0x3041...0x33FF, 0x3400...0x4DBF,
        0x4E00...0x9FFF, 0xA000...0xA4CF, 0xA960...0xA97F, 0xAC00...0xD7A3, 0xF900...0xFAFF,
        0xFE10...0xFE19, 0xFE30...0xFE6F, 0xFF00...0xFF60, 0xFFE0...0xFFE6, 0x16FE0...0x16FE4,
        0x17000...0x18CFF, 0x1B000...0x1B2FF, 0x1F200...0x1F202, 0x1F210...0x1F23B,
        0x1F240...0x1F248, 0x1F250...0x1F251, 0x20000...0x2FFFD, 0x30000...0x3FFFD,
    ]
}
