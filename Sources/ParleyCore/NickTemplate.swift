import IRCWire
import NIOCore

/// Lines that are the same for every client but for its nick (the first parameter), encoded
/// once: each line is kept as the bytes before the nick and the bytes after it. Made by encoding
/// the messages with a placeholder nick, so the bytes are exactly what encoding them for each
/// client would give (a nick is a middle parameter that never needs escaping or a colon).
struct NickTemplate: Sendable {
    /// Every line's bytes; `nickOffsets[i]` is where line i's nick goes.
    private let bytes: [UInt8]
    private let lineEnds: [Int]
    private let nickOffsets: [Int]

    /// A byte no nick holds and the encoder leaves alone.
    static let placeholder = "\u{1}"

    /// `messages(placeholder)` gives the lines, each with the nick it is given as its first
    /// parameter.
    init(_ messages: (String) -> [IRCMessage]) {
        var buffer = ByteBufferAllocator().buffer(capacity: 2048)
        var lineEnds: [Int] = []
        var nickOffsets: [Int] = []
        for message in messages(Self.placeholder) {
            let start = buffer.writerIndex
            message.write(to: &buffer)
            let line = buffer.readableBytesView[start...]
            let offset = line.firstIndex(of: Self.placeholder.utf8.first!)!
            precondition(line[(offset + 1)...].firstIndex(of: Self.placeholder.utf8.first!) == nil, "one nick per line")
            nickOffsets.append(offset)
            lineEnds.append(buffer.writerIndex)
        }
        self.bytes = Array(buffer.readableBytesView)
        self.lineEnds = lineEnds
        self.nickOffsets = nickOffsets
    }

    func write(nick: String, to buffer: inout ByteBuffer) {
        bytes.withUnsafeBytes { all in
            var start = 0
            for (offset, end) in zip(nickOffsets, lineEnds) {
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: all[start..<offset]))
                buffer.writeString(nick)
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: all[(offset + 1)..<end]))
                start = end
            }
        }
    }
}
