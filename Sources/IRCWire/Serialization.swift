import NIOCore

extension IRCMessage {
    /// Appends the line and its CR LF. Values are written as UTF-8 directly into the buffer;
    /// CR, LF and NUL inside any part become spaces, so no value can inject a second line.
    public func write(to buffer: inout ByteBuffer) {
        write(to: &buffer, includingTag: nil)
    }

    /// Appends the line with only the tags `includingTag` accepts (a receiver without the
    /// capabilities for some tags), without copying the message to drop them.
    public func write(to buffer: inout ByteBuffer, includingTag: ((IRCTag) -> Bool)?) {
        let lineStart = buffer.writerIndex
        var wroteTag = false
        for tag in tags where includingTag?(tag) ?? true {
            buffer.writeInteger(wroteTag ? UInt8(ascii: ";") : UInt8(ascii: "@"))
            wroteTag = true
            buffer.writeString(tag.key)
            if !tag.value.isEmpty {
                buffer.writeInteger(UInt8(ascii: "="))
                Self.writeEscapedTagValue(tag.value, to: &buffer)
            }
        }
        if wroteTag { buffer.writeInteger(UInt8(ascii: " ")) }
        if let source {
            buffer.writeInteger(UInt8(ascii: ":"))
            buffer.writeString(source)
            buffer.writeInteger(UInt8(ascii: " "))
        }
        buffer.writeString(command)
        let lastPosition = parameters.count - 1
        for (position, parameter) in parameters.enumerated() {
            buffer.writeInteger(UInt8(ascii: " "))
            // Like most servers, the free-text last parameter of numerics and messages always
            // gets its ':', for clients that find the text by its colon.
            if position == lastPosition
                && ((position > 0 && Self.hasFreeTextTrailing(command)) || Self.needsTrailingColon(parameter)) {
                buffer.writeInteger(UInt8(ascii: ":"))
            }
            buffer.writeString(parameter)
        }
        Self.endLine(startingAt: lineStart, in: &buffer)
    }

    /// Appends `:source COMMAND target :text` and CR LF, the relay of a message without tags,
    /// without building a message first (the relay path of receivers that take no tags).
    /// The line goes into the buffer in one write: part by part, ByteBuffer's checks on each
    /// write (capacity, uniqueness, exclusivity) cost more than copying the bytes (callgrind:
    /// 2,770 instructions per relayed guest message that way, about 900 this way).
    public static func writeUntagged(source: String, command: String, target: String, text: String, to buffer: inout ByteBuffer) {
        let length = 1 + source.utf8.count + 1 + command.utf8.count + 1 + target.utf8.count + 2 + text.utf8.count + 2
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { destination in
            let line = destination.baseAddress!.assumingMemoryBound(to: UInt8.self)
            var offset = 0
            line[offset] = UInt8(ascii: ":")
            offset += 1
            offset += copyUTF8(of: source, to: line + offset)
            line[offset] = UInt8(ascii: " ")
            offset += 1
            offset += copyUTF8(of: command, to: line + offset)
            line[offset] = UInt8(ascii: " ")
            offset += 1
            offset += copyUTF8(of: target, to: line + offset)
            line[offset] = UInt8(ascii: " ")
            line[offset + 1] = UInt8(ascii: ":")
            offset += 2
            offset += copyUTF8(of: text, to: line + offset)
            // As `endLine`: no CR, LF or NUL inside the line.
            blankLineBreaks(in: UnsafeMutableRawBufferPointer(start: line, count: offset))
            line[offset] = 0x0D
            line[offset + 1] = 0x0A
            return offset + 2
        }
    }

    /// Copies a string's UTF-8 to `destination` (which has room for it); returns its length.
    @inline(__always)
    private static func copyUTF8(of text: String, to destination: UnsafeMutablePointer<UInt8>) -> Int {
        var text = text
        return text.withUTF8 { bytes in
            if let start = bytes.baseAddress { destination.update(from: start, count: bytes.count) }
            return bytes.count
        }
    }

    /// Makes the bytes written since `lineStart` one safe line and ends it with CR LF: one pass
    /// over them instead of a check per part (escaped tag values hold no raw CR, LF or NUL, so
    /// the whole line can be treated alike).
    private static func endLine(startingAt lineStart: Int, in buffer: inout ByteBuffer) {
        let lineLength = buffer.writerIndex - lineStart
        let lineOffset = lineStart - buffer.readerIndex
        buffer.withUnsafeMutableReadableBytes { bytes in
            blankLineBreaks(in: UnsafeMutableRawBufferPointer(rebasing: bytes[lineOffset..<(lineOffset + lineLength)]))
        }
        buffer.writeInteger(UInt16(0x0D0A))
    }

    /// CR, LF and NUL inside a line become spaces. Looked for with `memchr` first (a line nearly
    /// never has any): a check of every byte cost about 400 instructions per relayed message.
    private static func blankLineBreaks(in line: UnsafeMutableRawBufferPointer) {
        let bytes = UnsafeRawBufferPointer(line)
        guard bytes.offset(of: 0x0D) != nil || bytes.offset(of: 0x0A) != nil || bytes.offset(of: 0x00) != nil else { return }
        for index in line.indices where line[index] == 0x0D || line[index] == 0x0A || line[index] == 0x00 {
            line[index] = UInt8(ascii: " ")
        }
    }

    /// The line as text, without CR LF.
    public var wireString: String {
        var buffer = ByteBufferAllocator().buffer(capacity: 128)
        write(to: &buffer)
        buffer.moveWriterIndex(to: buffer.writerIndex - 2)
        return buffer.readString(length: buffer.readableBytes) ?? ""
    }

    static func hasFreeTextTrailing(_ command: String) -> Bool {
        let utf8 = command.utf8
        if utf8.count == 3 && utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) { return true }
        // A switch compares short strings by their bits; hashing for a Set cost more per line.
        switch command {
        case "PRIVMSG", "NOTICE", "PART", "QUIT", "KICK", "TOPIC", "ERROR", "AWAY", "SETNAME", "RENAME",
             "FAIL", "WARN", "NOTE", "KILL", "WALLOPS", "PONG":
            return true
        default:
            return false
        }
    }

    static func needsTrailingColon(_ parameter: String) -> Bool {
        guard let first = parameter.utf8.first else { return true }
        return first == UInt8(ascii: ":") || parameter.utf8.contains(UInt8(ascii: " "))
    }

    private static func writeEscapedTagValue(_ value: String, to buffer: inout ByteBuffer) {
        // Most values need no escaping: write them, look at the written bytes, and only redo
        // the slow way when something must be escaped.
        let start = buffer.writerIndex
        let offset = start - buffer.readerIndex
        let length = buffer.writeString(value)
        let needsEscaping = buffer.withUnsafeReadableBytes { bytes in
            let written = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)])
            return written.contains { $0 == UInt8(ascii: ";") || $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\\") || $0 <= 0x0D }
        }
        guard needsEscaping else { return }
        buffer.moveWriterIndex(to: start)
        let utf8 = value.utf8
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
