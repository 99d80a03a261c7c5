extension String {
    /// Whether some byte of the string's UTF-8 satisfies `predicate`, scanned as a contiguous
    /// buffer: through `String.UTF8View` the same scan cost about 50 instructions a byte
    /// (callgrind), several hundred for each nick or command on the message path.
    @inlinable
    public func utf8Contains(where predicate: (UInt8) -> Bool) -> Bool {
        var contiguous = self
        return contiguous.withUTF8 { $0.contains(where: predicate) }
    }
}
