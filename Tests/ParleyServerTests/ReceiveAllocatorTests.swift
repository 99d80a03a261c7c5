import NIOCore
import Testing
@testable import ParleyServer

@Suite("Receive buffer sizes")
struct ReceiveAllocatorTests {
    /// The compact allocator is NIO's adaptive one in fewer bytes: for the same reads it asks for
    /// the same sizes and reports the same growth, shrinking and growing across its range.
    @Test func compactAllocatorSizesBuffersAsNIOsAdaptiveOneDoes() {
        var compact = CompactRecvByteBufferAllocator(minimum: 64, initial: 64, maximum: 65536)
        var adaptive = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 64, maximum: 65536)
        // Full reads that grow it to the top, small ones that shrink it back, and a mixture.
        var reads = Array(repeating: 1 << 20, count: 14) + Array(repeating: 10, count: 30)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 { reads.append(Int.random(in: 0...70_000, using: &generator) >> Int.random(in: 0...10, using: &generator)) }
        for (index, read) in reads.enumerated() {
            #expect(compact.nextBufferSize() == adaptive.nextBufferSize(), "before read \(index) of \(read) bytes")
            #expect(compact.record(actualReadBytes: read) == adaptive.record(actualReadBytes: read), "read \(index) of \(read) bytes")
        }
        #expect(compact.nextBufferSize() == adaptive.nextBufferSize())
        #expect(MemoryLayout<CompactRecvByteBufferAllocator>.size <= 3 * MemoryLayout<Int>.size, "fits an existential's inline buffer")
    }
}
