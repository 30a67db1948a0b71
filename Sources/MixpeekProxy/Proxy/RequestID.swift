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
            var index = 0
            func put(_ value: UInt64, nibbles: Int) {
                var shift = (nibbles - 1) * 4
                while shift >= 0 {
                    let nibble = UInt8(truncatingIfNeeded: value >> UInt64(shift)) & 0xF
                    buffer[index] = nibble < 10 ? nibble + 0x30 : nibble + 0x57
                    index += 1
                    shift -= 4
                }
            }
            func dash() {
                buffer[index] = UInt8(ascii: "-")
                index += 1
            }
            put(high >> 32, nibbles: 8)
            dash()
            put(high >> 16, nibbles: 4)
            dash()
            put(high, nibbles: 4)
            dash()
            put(low >> 48, nibbles: 4)
            dash()
            put(low, nibbles: 12)
            return index
        }
    }
}
