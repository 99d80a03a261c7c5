import NIOCore
import Testing
@testable import ParleyCore

@Suite("Outbox")
struct OutboxTests {
    /// Records what it was given, per connection, as the server's write batch would append it.
    final class RecordingSink: OutboxSink, @unchecked Sendable {
        var written: [ConnectionID: ByteBuffer] = [:]
        /// Connections it does not write to (another node's).
        var foreign: Set<ConnectionID> = []

        func write(to connection: ConnectionID, capacity: Int, _ encode: (inout ByteBuffer) -> Void) -> Bool {
            guard !foreign.contains(connection) else { return false }
            encode(&written[connection, default: ByteBuffer()])
            return true
        }

        func add(_ line: ByteBuffer, to connection: ConnectionID) -> Bool {
            guard !foreign.contains(connection) else { return false }
            written[connection, default: ByteBuffer()].writeImmutableBuffer(line)
            return true
        }
    }

    private func line(_ text: String) -> (inout ByteBuffer) -> Void {
        { $0.writeString(text) }
    }

    @Test func linesForOneConnectionGoToTheSinkUntilALineIsQueued() {
        let sink = RecordingSink()
        var outbox = Outbox()
        outbox.sink = sink
        let alice = ConnectionID(1), bob = ConnectionID(2)
        outbox.write(to: alice, allocator: ByteBufferAllocator(), line("a1\r\n"))
        outbox.write(to: bob, allocator: ByteBufferAllocator(), line("b1\r\n"))
        outbox.write(to: alice, allocator: ByteBufferAllocator(), line("a2\r\n"))
        #expect(outbox.deliveries.isEmpty)
        #expect(sink.written[alice].map { String(buffer: $0) } == "a1\r\na2\r\n")
        #expect(sink.written[bob].map { String(buffer: $0) } == "b1\r\n")

        // Shared lines go to the sink too.
        let shared = ByteBuffer(string: "shared\r\n")
        outbox.send(shared, to: alice)
        outbox.send(shared, to: bob)
        #expect(outbox.deliveries.isEmpty)
        #expect(sink.written[alice].map { String(buffer: $0) } == "a1\r\na2\r\nshared\r\n")
        #expect(sink.written[bob].map { String(buffer: $0) } == "b1\r\nshared\r\n")
        #expect(outbox.linesQueued == 5)
    }

    @Test func onceALineIsQueuedLaterLinesQueueBehindIt() {
        let sink = RecordingSink()
        let alice = ConnectionID(1), remote = ConnectionID(7)
        sink.foreign = [remote]
        var outbox = Outbox()
        outbox.sink = sink
        // A line for another node's connection is queued; the lines after it queue behind it,
        // shared or not: one queued earlier may be for the same connection, and the sink's
        // output would overtake it.
        let shared = ByteBuffer(string: "shared\r\n")
        outbox.send(shared, to: remote)
        outbox.send(shared, to: alice)
        outbox.write(to: alice, allocator: ByteBufferAllocator(), line("a1\r\n"))
        #expect(outbox.deliveries.map { String(buffer: $0.line) } == ["shared\r\n", "shared\r\n", "a1\r\n"])
        #expect(outbox.deliveries.map(\.connection) == [remote, alice, alice])
        #expect(sink.written.isEmpty)
        #expect(outbox.linesQueued == 3)
    }

    @Test func aConnectionTheSinkDoesNotWriteToIsQueued() {
        let sink = RecordingSink()
        let remote = ConnectionID(7)
        sink.foreign = [remote]
        var outbox = Outbox()
        outbox.sink = sink
        outbox.write(to: remote, allocator: ByteBufferAllocator(), line("r1\r\n"))
        #expect(outbox.deliveries.map { String(buffer: $0.line) } == ["r1\r\n"])
        #expect(sink.written.isEmpty)
    }
}
