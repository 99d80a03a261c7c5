import IRCWire
import NIOCore

/// Lines that every client gets with a few values of its own (its nick, counts), encoded once:
/// the bytes between the values are kept, and writing the lines copies them with the values
/// in their places. Made by encoding the same messages with placeholders for the values, so the
/// bytes are what encoding the messages for each client gives, as long as no value needs
/// escaping or moves a parameter's colon (a nick, a count, a `nick!user@host` in free text:
/// none is empty, none holds a space or starts with a colon).
struct ReplyTemplate: Sendable {
    /// The lines' bytes, placeholders included.
    private let bytes: [UInt8]
    /// Where each placeholder starts, and which value goes there, in order.
    private let slots: [(offset: Int, value: Int)]

    /// The placeholder for value `index` (0 to 15): a Unicode noncharacter (U+FDD0...), which
    /// has no business in a reply's text.
    static func placeholder(_ index: Int) -> String {
        String(UnicodeScalar(0xFDD0 + UInt32(index))!)
    }
    private static let placeholderBytes = 3

    /// `messages(value)` gives the lines with `value(i)` for value i. Nil when the messages'
    /// own text holds a placeholder (a server's MOTD might): the messages are then encoded for
    /// each client instead.
    init?(_ messages: (_ value: (Int) -> String) -> [IRCMessage]) {
        guard Self.slots(in: Self.encode(messages { _ in "" })).isEmpty else { return nil }
        bytes = Self.encode(messages(Self.placeholder))
        slots = Self.slots(in: bytes)
    }

    private static func encode(_ messages: [IRCMessage]) -> [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: 2048)
        for message in messages { message.write(to: &buffer) }
        return Array(buffer.readableBytesView)
    }

    /// The placeholders in `bytes` (U+FDD0...U+FDDF: EF B7 90...9F).
    private static func slots(in bytes: [UInt8]) -> [(offset: Int, value: Int)] {
        var slots: [(offset: Int, value: Int)] = []
        var offset = 0
        while offset + 2 < bytes.count {
            if bytes[offset] == 0xEF, bytes[offset + 1] == 0xB7, (0x90...0x9F).contains(bytes[offset + 2]) {
                slots.append((offset, Int(bytes[offset + 2] - 0x90)))
                offset += placeholderBytes
            } else {
                offset += 1
            }
        }
        return slots
    }

    /// The lines' bytes without the values.
    var byteCount: Int { bytes.count - slots.count * Self.placeholderBytes }

    func write(_ values: String..., to buffer: inout ByteBuffer) {
        bytes.withUnsafeBytes { all in
            var start = 0
            for slot in slots {
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: all[start..<slot.offset]))
                buffer.writeString(values[slot.value])
                start = slot.offset + Self.placeholderBytes
            }
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: all[start...]))
        }
    }
}
