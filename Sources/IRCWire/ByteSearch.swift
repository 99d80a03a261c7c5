#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension UnsafeRawBufferPointer {
    /// The offset of the first `byte`, found by the C library's `memchr`, which compares many
    /// bytes per instruction: a Swift loop takes about five instructions a byte, several hundred
    /// for every line on the message path (callgrind).
    /// `start`: where the search begins.
    public func offset(of byte: UInt8, from start: Int = 0) -> Int? {
        guard let base = baseAddress, start < count, let found = memchr(base + start, Int32(byte), count - start) else { return nil }
        return UnsafeRawPointer(found) - base
    }

    /// Whether the bytes at `offset` are `other`'s (`memcmp`); `offset + other.count` must be in bounds.
    func sameBytes(at offset: Int, as other: UnsafeRawBufferPointer) -> Bool {
        guard let base = baseAddress, let otherBase = other.baseAddress else { return other.isEmpty }
        return memcmp(base + offset, otherBase, other.count) == 0
    }
}
