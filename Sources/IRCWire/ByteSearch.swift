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
    func offset(of byte: UInt8) -> Int? {
        guard let base = baseAddress, count > 0, let found = memchr(base, Int32(byte), count) else { return nil }
        return UnsafeRawPointer(found) - base
    }

    /// Whether the bytes at `offset` are `other`'s (`memcmp`); `offset + other.count` must be in bounds.
    func sameBytes(at offset: Int, as other: UnsafeRawBufferPointer) -> Bool {
        guard let base = baseAddress, let otherBase = other.baseAddress else { return other.isEmpty }
        return memcmp(base + offset, otherBase, other.count) == 0
    }
}
