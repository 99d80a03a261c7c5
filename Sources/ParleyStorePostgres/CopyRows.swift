import NIOCore

/// Rows in the text format of PostgreSQL's `COPY ... FROM STDIN`: fields separated by tabs, rows
/// ended by a newline, `\N` for NULL, and backslash, tab, newline and carriage return escaped
/// with a backslash so that any text arrives as it was.
struct CopyRows {
    private(set) var buffer = ByteBuffer()
    private(set) var count = 0
    private var fieldsInRow = 0

    /// Adds one row; `fill` writes its fields in the table's column order.
    mutating func row(_ fill: (inout CopyRows) -> Void) {
        fieldsInRow = 0
        fill(&self)
        buffer.writeInteger(UInt8(ascii: "\n"))
        count += 1
    }

    mutating func removeAll() {
        buffer.clear()
        count = 0
    }

    private mutating func separate() {
        if fieldsInRow > 0 { buffer.writeInteger(UInt8(ascii: "\t")) }
        fieldsInRow += 1
    }

    private mutating func null() {
        buffer.writeInteger(UInt8(ascii: "\\"))
        buffer.writeInteger(UInt8(ascii: "N"))
    }

    mutating func text(_ value: String?) {
        separate()
        guard var value else { return null() }
        value.withUTF8 { bytes in
            // Most text needs no escape: written in one piece.
            guard bytes.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") }) else {
                buffer.writeBytes(bytes)
                return
            }
            for byte in bytes {
                switch byte {
                case UInt8(ascii: "\\"): buffer.writeBytes([UInt8(ascii: "\\"), UInt8(ascii: "\\")])
                case UInt8(ascii: "\t"): buffer.writeBytes([UInt8(ascii: "\\"), UInt8(ascii: "t")])
                case UInt8(ascii: "\n"): buffer.writeBytes([UInt8(ascii: "\\"), UInt8(ascii: "n")])
                case UInt8(ascii: "\r"): buffer.writeBytes([UInt8(ascii: "\\"), UInt8(ascii: "r")])
                default: buffer.writeInteger(byte)
                }
            }
        }
    }

    mutating func int(_ value: Int64?) {
        separate()
        guard let value else { return null() }
        buffer.writeString(String(value))
    }

    mutating func bool(_ value: Bool?) {
        separate()
        guard let value else { return null() }
        buffer.writeInteger(value ? UInt8(ascii: "t") : UInt8(ascii: "f"))
    }
}
