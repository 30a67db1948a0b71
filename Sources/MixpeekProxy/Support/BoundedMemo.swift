/// Values computed from `Authorization` header values (fingerprints, hashes), kept so a
/// client that sends the same value on every call is not hashed again. Bounded by forgetting
/// everything when full: a client comes back with one miss; no eviction order to keep.
/// Not synchronised: its owner holds it under its own lock.
struct BoundedMemo<Value: Sendable>: Sendable {
    private var values: [String: Value] = [:]
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    @inline(__always)
    subscript(key: String) -> Value? { values[key] }

    mutating func value(for key: String, else compute: (String) -> Value) -> Value {
        if let known = values[key] { return known }
        let value = compute(key)
        if values.count >= capacity { values.removeAll(keepingCapacity: true) }
        values[key] = value
        return value
    }
}
