import MixpeekAPI

/// Values computed from `Authorization` header values (fingerprints, hashes), kept so a
/// client that sends the same value on every call is not hashed again. Bounded by forgetting
/// everything when full: a client comes back with one miss; no eviction order to keep.
/// Not synchronised: its owner holds it under its own lock.
struct BoundedMemo<Value: Sendable>: Sendable {
    /// Keyed by the value's bytes: two `Authorization` values that Swift finds canonically
    /// equivalent are two credentials.
    private var values: [ExactText: Value] = [:]
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    @inline(__always)
    subscript(key: String) -> Value? { values[ExactText(key)] }

    var count: Int { values.count }

    mutating func value(for key: String, else compute: (String) -> Value) -> Value {
        let exact = ExactText(key)
        if let known = values[exact] { return known }
        let value = compute(key)
        if values.count >= capacity { values.removeAll(keepingCapacity: true) }
        values[exact] = value
        return value
    }

    /// Every value remembered now.
    func forEach(_ body: (Value) -> Void) {
        for value in values.values { body(value) }
    }
}
