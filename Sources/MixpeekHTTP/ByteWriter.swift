import NIOCore

/// Small pieces of bytes (literals, strings, decimals, buffers) copied through a pointer into
/// room a `ByteBuffer` made once (`ByteBuffer.writeBytes(atMost:_:)`).
///
/// Each `write` of a `ByteBuffer` checks its storage for exclusive access at run time and
/// reaches for thread-local state to do so; a response head or a request-log line of twenty
/// pieces paid that twenty times (`perf`: a tenth of the CPU a cache hit spends in the proxy's
/// own code). Written this way, it is paid once per head or line.
public struct ByteWriter {
    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let capacity: Int
    @usableFromInline var written = 0

    /// Bytes written so far.
    public var count: Int { written }

    @inlinable
    init(_ buffer: UnsafeMutableRawBufferPointer) {
        base = buffer.baseAddress!
        capacity = buffer.count
    }

    /// The next `count` bytes' address; traps rather than write past the room made.
    @inlinable
    mutating func claim(_ count: Int) -> UnsafeMutableRawPointer {
        precondition(count <= capacity - written, "ByteWriter: more bytes than the room made for them")
        defer { written += count }
        return base + written
    }

    @inlinable
    public mutating func write(_ byte: UInt8) {
        claim(1).storeBytes(of: byte, as: UInt8.self)
    }

    @inlinable
    public mutating func write(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        claim(bytes.count).copyMemory(from: source, byteCount: bytes.count)
    }

    @inlinable
    public mutating func write(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        claim(bytes.count).copyMemory(from: source, byteCount: bytes.count)
    }

    @inlinable
    public mutating func write(_ literal: StaticString) {
        literal.withUTF8Buffer { write($0) }
    }

    /// The string's UTF-8 bytes. (Named apart from `write(_: StaticString)` so that a literal
    /// is never taken for a String.)
    @inlinable
    public mutating func writeString(_ string: String) {
        var string = string
        string.withUTF8 { write($0) }
    }

    /// The buffer's readable bytes.
    @inlinable
    public mutating func write(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { write($0) }
    }

    @inlinable
    public mutating func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { write($0) }
    }

    /// `value` (not negative) in decimal, zero-padded to `minimumDigits` digits.
    @inlinable
    public mutating func writeDecimal(_ value: Int, minimumDigits: Int = 1) {
        precondition(value >= 0, "ByteWriter.writeDecimal: negative value")
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        digits = max(digits, minimumDigits)
        let start = claim(digits)
        var remaining = value
        for offset in stride(from: digits - 1, through: 0, by: -1) {
            start.storeBytes(of: UInt8(ascii: "0") + UInt8(remaining % 10), toByteOffset: offset, as: UInt8.self)
            remaining /= 10
        }
    }

    /// The most bytes `writeDecimal` writes for any `Int` (without padding).
    public static let maxDecimalDigits = 19
}

extension ByteBuffer {
    /// Writes what `body` writes, at most `maximum` bytes (more traps), as one write of the
    /// buffer. Returns the number of bytes written.
    @inlinable
    @discardableResult
    public mutating func writeBytes(atMost maximum: Int, _ body: (inout ByteWriter) -> Void) -> Int {
        guard maximum > 0 else { return 0 }
        return writeWithUnsafeMutableBytes(minimumWritableBytes: maximum) { room in
            var writer = ByteWriter(UnsafeMutableRawBufferPointer(rebasing: room[..<maximum]))
            body(&writer)
            return writer.written
        }
    }
}
