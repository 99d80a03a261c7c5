import NIOCore

extension IRCMessage {
    /// Appends the line and its CR LF. Values are written as UTF-8 directly into the buffer;
    /// CR, LF and NUL inside any part become spaces, so no value can inject a second line.
    public func write(to buffer: inout ByteBuffer) {
        if !tags.isEmpty {
            buffer.writeInteger(UInt8(ascii: "@"))
            for (position, tag) in tags.enumerated() {
                if position > 0 { buffer.writeInteger(UInt8(ascii: ";")) }
                Self.writeSanitized(tag.key, to: &buffer)
                if !tag.value.isEmpty {
                    buffer.writeInteger(UInt8(ascii: "="))
                    Self.writeEscapedTagValue(tag.value, to: &buffer)
                }
            }
            buffer.writeInteger(UInt8(ascii: " "))
        }
        if let source {
            buffer.writeInteger(UInt8(ascii: ":"))
            Self.writeSanitized(source, to: &buffer)
            buffer.writeInteger(UInt8(ascii: " "))
        }
        Self.writeSanitized(command, to: &buffer)
        for (position, parameter) in parameters.enumerated() {
            buffer.writeInteger(UInt8(ascii: " "))
            // Like most servers, the free-text last parameter of numerics and messages always
            // gets its ':', for clients that find the text by its colon.
            if position == parameters.count - 1
                && ((position > 0 && Self.hasFreeTextTrailing(command)) || Self.needsTrailingColon(parameter)) {
                buffer.writeInteger(UInt8(ascii: ":"))
            }
            Self.writeSanitized(parameter, to: &buffer)
        }
        buffer.writeInteger(UInt16(0x0D0A))
    }

    /// The line as text, without CR LF.
    public var wireString: String {
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        write(to: &buffer)
        buffer.moveWriterIndex(to: buffer.writerIndex - 2)
        return buffer.readString(length: buffer.readableBytes) ?? ""
    }

    static let freeTextCommands: Set<String> = [
        "PRIVMSG", "NOTICE", "PART", "QUIT", "KICK", "TOPIC", "ERROR", "AWAY", "SETNAME", "RENAME",
        "FAIL", "WARN", "NOTE", "KILL", "WALLOPS", "PONG",
    ]

    static func hasFreeTextTrailing(_ command: String) -> Bool {
        let utf8 = command.utf8
        if utf8.count == 3 && utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) { return true }
        return freeTextCommands.contains(command)
    }

    static func needsTrailingColon(_ parameter: String) -> Bool {
        guard let first = parameter.utf8.first else { return true }
        return first == UInt8(ascii: ":") || parameter.utf8.contains(UInt8(ascii: " "))
    }

    private static func writeSanitized(_ text: String, to buffer: inout ByteBuffer) {
        let utf8 = text.utf8
        if !utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0x00 }) {
            buffer.writeString(text)
            return
        }
        for byte in utf8 {
            buffer.writeInteger(byte == 0x0D || byte == 0x0A || byte == 0x00 ? UInt8(ascii: " ") : byte)
        }
    }

    private static func writeEscapedTagValue(_ value: String, to buffer: inout ByteBuffer) {
        let utf8 = value.utf8
        if !utf8.contains(where: { $0 == UInt8(ascii: ";") || $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\\") || $0 == 0x0D || $0 == 0x0A || $0 == 0 }) {
            buffer.writeString(value)
            return
        }
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: ";"): buffer.writeInteger(UInt16(0x5C3A))  // \:
            case UInt8(ascii: " "): buffer.writeInteger(UInt16(0x5C73))  // \s
            case UInt8(ascii: "\\"): buffer.writeInteger(UInt16(0x5C5C))  // \\
            case 0x0D: buffer.writeInteger(UInt16(0x5C72))  // \r
            case 0x0A: buffer.writeInteger(UInt16(0x5C6E))  // \n
            case 0: continue
            default: buffer.writeInteger(byte)
            }
        }
    }
}
