import NIOCore

/// Why a line could not be read as an IRC message.
public enum IRCParseError: Error, Sendable, Hashable {
    case empty
    case missingCommand
    case invalidUTF8
    /// The tag section (with its '@' and trailing space) exceeds the limit (IRCv3: 8191 bytes).
    case tagsTooLong
    /// The rest of the line exceeds the limit (512 bytes including CR LF, so 510 here).
    case bodyTooLong
    case invalidTags
}

extension IRCMessage {
    /// The most tag data a client may send: 4094 bytes, 4096 with the '@' and the space that
    /// ends the section (IRCv3 message-tags, "Size limit"). The rest of the 8191 is for the
    /// tags servers add.
    public static let maximumClientTagSectionBytes = 4096

    /// Parses a line without its trailing CR LF.
    public init(parsing line: String, maxTagsBytes: Int = 8191, maxBodyBytes: Int = 510) throws(IRCParseError) {
        var copy = line
        let result: Result<IRCMessage, IRCParseError> = copy.withUTF8 { bytes in
            Result { () throws(IRCParseError) -> IRCMessage in
                try IRCMessage.parse(UnsafeRawBufferPointer(bytes), maxTagsBytes: maxTagsBytes, maxBodyBytes: maxBodyBytes, validateUTF8: false)
            }
        }
        self = try result.get()
    }

    /// Parses a line without its trailing CR LF, validating that it is UTF-8.
    public init(parsing bytes: ByteBuffer, maxTagsBytes: Int = 8191, maxBodyBytes: Int = 510) throws(IRCParseError) {
        let result: Result<IRCMessage, IRCParseError> = bytes.withUnsafeReadableBytes { raw in
            Result { () throws(IRCParseError) -> IRCMessage in
                try IRCMessage.parse(raw, maxTagsBytes: maxTagsBytes, maxBodyBytes: maxBodyBytes, validateUTF8: true)
            }
        }
        self = try result.get()
    }

    /// The parser proper, on bytes: `"\r\n"` is one Character in Swift, so lines are never
    /// handled as Characters. Follows modern.ircdocs.horse and IRCv3 message-tags.
    static func parse(_ bytes: UnsafeRawBufferPointer, maxTagsBytes: Int, maxBodyBytes: Int, validateUTF8: Bool) throws(IRCParseError) -> IRCMessage {
        let space = UInt8(ascii: " ")
        var index = 0
        let end = bytes.count
        func skipSpaces() { while index < end && bytes[index] == space { index += 1 } }
        // The line is validated once, as a whole; its parts are then decoded without checks.
        // `String(validating:)` is generic and costs a metadata lookup per call, so ASCII lines
        // (nearly all of them) skip it with a plain byte scan.
        if validateUTF8 && !bytes.allSatisfy({ $0 < 0x80 }) {
            guard String(validating: bytes.assumingMemoryBound(to: UInt8.self), as: UTF8.self) != nil else { throw .invalidUTF8 }
        }
        func string(_ from: Int, _ to: Int) -> String {
            // A typed UInt8 buffer takes the standard library's contiguous UTF-8 fast path; a
            // rebased raw slice went through generic code (metadata lookups per field).
            let slice = UnsafeBufferPointer<UInt8>(start: bytes.baseAddress.map { ($0 + from).assumingMemoryBound(to: UInt8.self) }, count: to - from)
            return String(decoding: slice, as: UTF8.self)
        }

        skipSpaces()
        guard index < end else { throw .empty }

        var tags: [IRCTag] = []
        if bytes[index] == UInt8(ascii: "@") {
            let tagsStart = index + 1
            var tagsEnd = tagsStart
            while tagsEnd < end && bytes[tagsEnd] != space { tagsEnd += 1 }
            // The limit counts the '@' and the space that ends the section.
            if tagsEnd - index + 1 > maxTagsBytes { throw .tagsTooLong }
            tags = parseTags(bytes, from: tagsStart, to: tagsEnd)
            index = tagsEnd
            skipSpaces()
        }

        if end - index > maxBodyBytes { throw .bodyTooLong }
        guard index < end else { throw .missingCommand }

        var source: String?
        if bytes[index] == UInt8(ascii: ":") {
            let start = index + 1
            while index < end && bytes[index] != space { index += 1 }
            source = string(start, index)
            skipSpaces()
        }

        let commandStart = index
        while index < end && bytes[index] != space { index += 1 }
        guard index > commandStart else { throw .missingCommand }
        let command = knownVerb(bytes, from: commandStart, to: index) ?? string(commandStart, index)

        var parameters: [String] = []
        parameters.reserveCapacity(4)  // one allocation for the usual few, not one per doubling
        while true {
            skipSpaces()
            guard index < end else { break }
            if bytes[index] == UInt8(ascii: ":") {
                parameters.append(string(index + 1, end))
                break
            }
            let start = index
            while index < end && bytes[index] != space { index += 1 }
            parameters.append(string(start, index))
        }
        return IRCMessage(tags: tags, source: source, command: command, parameters: parameters)
    }

    /// The verbs of the message path, as the same literal strings every time: no String to
    /// build per line, and comparing one with a literal (`verb == "PRIVMSG"`) is a compare of
    /// two words instead of a call.
    private static let messagePathVerbs: [(name: String, bytes: [UInt8])] =
        ["PRIVMSG", "NOTICE", "TAGMSG", "PING", "PONG"].map { ($0, Array($0.utf8)) }

    private static func knownVerb(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> String? {
        let length = end - start
        guard length >= 4 && length <= 7 else { return nil }
        for verb in messagePathVerbs where verb.bytes.count == length {
            if verb.bytes.withUnsafeBytes({ bytes.sameBytes(at: start, as: $0) }) { return verb.name }
        }
        return nil
    }

    private static func parseTags(_ bytes: UnsafeRawBufferPointer, from start: Int, to end: Int) -> [IRCTag] {
        var tags: [IRCTag] = []
        var index = start
        while index < end {
            let keyStart = index
            while index < end && bytes[index] != UInt8(ascii: "=") && bytes[index] != UInt8(ascii: ";") { index += 1 }
            let keyBytes = UnsafeRawBufferPointer(rebasing: bytes[keyStart..<index])
            var value = ""
            if index < end && bytes[index] == UInt8(ascii: "=") {
                index += 1
                let valueStart = index
                while index < end && bytes[index] != UInt8(ascii: ";") { index += 1 }
                value = unescapeTagValue(UnsafeRawBufferPointer(rebasing: bytes[valueStart..<index]))
            }
            if index < end { index += 1 }  // the ';'
            guard !keyBytes.isEmpty else { continue }
            let key = String(decoding: keyBytes, as: UTF8.self)
            // A later duplicate key overrides the earlier one (IRCv3 message-tags).
            if let existing = tags.firstIndex(where: { $0.key == key }) {
                tags[existing].value = value
            } else {
                tags.append(IRCTag(key, value))
            }
        }
        return tags
    }

    private static func unescapeTagValue(_ bytes: UnsafeRawBufferPointer) -> String {
        guard bytes.contains(UInt8(ascii: "\\")) else {
            return String(decoding: bytes, as: UTF8.self)
        }
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            guard byte == UInt8(ascii: "\\") else { output.append(byte); continue }
            guard index < bytes.count else { break }  // a trailing lone backslash is dropped
            let escaped = bytes[index]
            index += 1
            switch escaped {
            case UInt8(ascii: ":"): output.append(UInt8(ascii: ";"))
            case UInt8(ascii: "s"): output.append(UInt8(ascii: " "))
            case UInt8(ascii: "r"): output.append(UInt8(ascii: "\r"))
            case UInt8(ascii: "n"): output.append(UInt8(ascii: "\n"))
            default: output.append(escaped)  // "\\" and unknown escapes: the backslash goes
            }
        }
        return String(decoding: output, as: UTF8.self)
    }
}
