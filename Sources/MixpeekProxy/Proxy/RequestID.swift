import Synchronization

/// Request IDs for requests that bring none, shaped like a version-4 UUID.
///
/// The first 64 bits are random once per process, the last 62 a counter: unique within a run,
/// and across runs with the odds of a random 64-bit collision. `UUID()` would open and read
/// `/dev/urandom` on every request, which `perf` showed as the costliest part of a cache hit.
enum RequestID {
    private static let prefix = UInt64.random(in: .min ... .max) & ~0xF000 | 0x4000
    private static let counter = Atomic<UInt64>(0)

    static func next() -> String {
        let count = counter.wrappingAdd(1, ordering: .relaxed).newValue
        return format(high: prefix, low: count & 0x3FFF_FFFF_FFFF_FFFF | 0x8000_0000_0000_0000)
    }

    /// `high` and `low` as 8-4-4-4-12 lowercase hex digits.
    static func format(high: UInt64, low: UInt64) -> String {
        String(unsafeUninitializedCapacity: 36) { buffer in
            var writer = HexWriter(buffer)
            writer.hex(high >> 32, nibbles: 8)
            writer.byte(UInt8(ascii: "-"))
            writer.hex(high >> 16, nibbles: 4)
            writer.byte(UInt8(ascii: "-"))
            writer.hex(high, nibbles: 4)
            writer.byte(UInt8(ascii: "-"))
            writer.hex(low >> 48, nibbles: 4)
            writer.byte(UInt8(ascii: "-"))
            writer.hex(low, nibbles: 12)
            return writer.count
        }
    }
}

/// Writes lowercase hex digits and other bytes into a string's uninitialized storage: the ids
/// the proxy makes per request (`RequestID`, `TraceContext`), without an intermediate string.
struct HexWriter {
    private let buffer: UnsafeMutableBufferPointer<UInt8>
    private(set) var count = 0

    init(_ buffer: UnsafeMutableBufferPointer<UInt8>) { self.buffer = buffer }

    mutating func byte(_ byte: UInt8) {
        buffer[count] = byte
        count += 1
    }

    /// The low `nibbles` hex digits of `value`, most significant first.
    mutating func hex(_ value: UInt64, nibbles: Int = 16) {
        var shift = (nibbles - 1) * 4
        while shift >= 0 {
            let nibble = UInt8(truncatingIfNeeded: value >> UInt64(shift)) & 0xF
            byte(nibble < 10 ? nibble + 0x30 : nibble + 0x57)
            shift -= 4
        }
    }
}
