import NIOCore

extension IRCMessage {
    /// Appends the line and its CR LF. Values are written as UTF-8 directly into the buffer;
    /// CR, LF and NUL inside any part become spaces, so no value can inject a second line.
    public func write(to buffer: inout ByteBuffer) {
        write(to: &buffer, includingTag: nil)
    }

    /// Appends the line with only the tags `includingTag` accepts (a receiver without the
    /// capabilities for some tags), without copying the message to drop them.
    /// The line is measured first and then copied into the buffer in one write: part by part,
    /// ByteBuffer's checks on each write cost about 300 instructions a part (callgrind: 3,200
    /// instructions for a stored message's tagged line, most of it in those checks).
    public func write(to buffer: inout ByteBuffer, includingTag: ((IRCTag) -> Bool)?) {
        // Which tags go is asked once: a bit per tag (a message with more tags than bits asks
        // again for the rest while writing).
        var included: UInt64 = 0
        var wroteTag = false
        var length = 0
        for (index, tag) in tags.enumerated() where includingTag?(tag) ?? true {
            if index < 64 { included |= 1 << UInt64(index) }
            wroteTag = true
            length += 1 + tag.key.utf8.count
            if !tag.value.isEmpty { length += 1 + Self.escapedLength(of: tag.value) }
        }
        if wroteTag { length += 1 }
        if let source { length += 2 + source.utf8.count }
        length += command.utf8.count
        let lastPosition = parameters.count - 1
        // Like most servers, the free-text last parameter of numerics and messages always gets
        // its ':', for clients that find the text by its colon.
        let colonOnLast = lastPosition >= 0
            && ((lastPosition > 0 && Self.hasFreeTextTrailing(command)) || Self.needsTrailingColon(parameters[lastPosition]))
        for parameter in parameters { length += 1 + parameter.utf8.count }
        if colonOnLast { length += 1 }
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length + 2) { destination in
            let line = destination.baseAddress!.assumingMemoryBound(to: UInt8.self)
            var offset = 0
            var first = true
            for (index, tag) in tags.enumerated() {
                guard index < 64 ? included & (1 << UInt64(index)) != 0 : includingTag?(tag) ?? true else { continue }
                line[offset] = first ? UInt8(ascii: "@") : UInt8(ascii: ";")
                first = false
                offset += 1
                offset += Self.copyUTF8(of: tag.key, to: line + offset)
                if !tag.value.isEmpty {
                    line[offset] = UInt8(ascii: "=")
                    offset += 1
                    offset += Self.copyEscaped(tag.value, to: line + offset)
                }
            }
            if !first {
                line[offset] = UInt8(ascii: " ")
                offset += 1
            }
            if let source {
                line[offset] = UInt8(ascii: ":")
                offset += 1
                offset += Self.copyUTF8(of: source, to: line + offset)
                line[offset] = UInt8(ascii: " ")
                offset += 1
            }
            offset += Self.copyUTF8(of: command, to: line + offset)
            for (position, parameter) in parameters.enumerated() {
                line[offset] = UInt8(ascii: " ")
                offset += 1
                if position == lastPosition && colonOnLast {
                    line[offset] = UInt8(ascii: ":")
                    offset += 1
                }
                offset += Self.copyUTF8(of: parameter, to: line + offset)
            }
            // Escaped tag values hold no raw CR, LF or NUL, so the whole line is treated alike.
            Self.blankLineBreaks(in: UnsafeMutableRawBufferPointer(start: line, count: offset))
            line[offset] = 0x0D
            line[offset + 1] = 0x0A
            return offset + 2
        }
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
            // As in `write(to:includingTag:)`: no CR, LF or NUL inside the line.
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
        return first == UInt8(ascii: ":") || parameter.utf8Contains { $0 == UInt8(ascii: " ") }
    }

    /// A tag value's length once escaped: `;`, space, `\\`, CR and LF take two bytes, NUL none.
    private static func escapedLength(of value: String) -> Int {
        var value = value
        return value.withUTF8 { bytes in
            var length = bytes.count
            for byte in bytes where byte <= UInt8(ascii: "\\") {
                switch byte {
                case UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\\"), 0x0D, 0x0A: length += 1
                case 0: length -= 1
                default: break
                }
            }
            return length
        }
    }

    /// Copies a tag value escaped (IRCv3 message-tags) to `destination`, which has room for
    /// `escapedLength(of:)` bytes; returns that length.
    private static func copyEscaped(_ value: String, to destination: UnsafeMutablePointer<UInt8>) -> Int {
        var value = value
        return value.withUTF8 { bytes in
            var offset = 0
            for byte in bytes {
                var escaped: UInt8 = 0
                switch byte {
                case UInt8(ascii: ";"): escaped = UInt8(ascii: ":")
                case UInt8(ascii: " "): escaped = UInt8(ascii: "s")
                case UInt8(ascii: "\\"): escaped = UInt8(ascii: "\\")
                case 0x0D: escaped = UInt8(ascii: "r")
                case 0x0A: escaped = UInt8(ascii: "n")
                case 0: continue
                default:
                    destination[offset] = byte
                    offset += 1
                    continue
                }
                destination[offset] = UInt8(ascii: "\\")
                destination[offset + 1] = escaped
                offset += 2
            }
            return offset
        }
    }
}
