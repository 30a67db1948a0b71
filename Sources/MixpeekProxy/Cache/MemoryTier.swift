import MixpeekAPI
import Synchronization

/// The list cache's memory tier: values by key, at most `capacity` bytes of them.
///
/// Eviction is CLOCK (second chance). The entries sit on a ring in the order they were stored;
/// a hit only sets the entry's referenced bit, so it needs nothing more than the shared read
/// lock its owner holds. To make room, the hand sweeps the ring: a referenced entry loses its
/// bit and is passed over once, the first unreferenced one goes. Each entry is passed over at
/// most once per hit, so eviction is amortized O(1). A new entry goes just behind the hand,
/// the last place the next sweep reaches.
///
/// Entries are also kept by folded user (`UserIdentity`), so dropping one user's lists costs
/// that user's entries, not a scan of the tier.
///
/// Not locked: its owner serialises writes and lets hits (`value(for:)`) share a read lock.
struct MemoryTier<Value> {
    /// One entry on the ring. Its links change only under the owner's write lock; its bit is
    /// set by hits under the shared read lock.
    private final class Slot {
        let key: CacheKey
        let folded: String
        let value: Value
        let bytes: Int
        let referenced = Atomic<Bool>(false)
        /// The ring holds no references of its own: `slots` keeps every linked slot alive.
        unowned(unsafe) var next: Slot?
        unowned(unsafe) var previous: Slot?

        init(key: CacheKey, folded: String, value: Value, bytes: Int) {
            self.key = key
            self.folded = folded
            self.value = value
            self.bytes = bytes
        }
    }

    /// Bytes the tier may hold.
    let capacity: Int
    private var slots: [CacheKey: Slot] = [:]
    private var byUser: [String: Set<CacheKey>] = [:]
    /// The next entry the sweep looks at; nil when the tier is empty.
    private var hand: Slot?
    /// Bytes held: the sum of the stored entries' `bytes`.
    private(set) var bytes = 0
    /// Bytes of the budget taken by what else the cache keeps in memory (the credentials and
    /// keys it knows, `CredentialBook.footprint`): entries get `capacity` less these.
    private(set) var reserved = 0

    init(capacity: Int) {
        self.capacity = capacity
    }

    var count: Int { slots.count }

    /// The value for `key`, noted as recently used. Reads the structure only. Inlined, so that
    /// a caller reading the tier in place loads only `slots`, not the whole tier.
    @inline(__always)
    func value(for key: CacheKey) -> Value? {
        guard let slot = slots[key] else { return nil }
        if !slot.referenced.load(ordering: .relaxed) { slot.referenced.store(true, ordering: .relaxed) }
        return slot.value
    }

    /// Whether `key` has a value, without noting a use.
    func contains(_ key: CacheKey) -> Bool {
        slots[key] != nil
    }

    /// Stores `value` (costing `bytes`) for `key`, replacing what was there, and evicts until
    /// the tier is within its capacity again. A value larger than the whole capacity is not
    /// kept (and the old one for `key` is dropped all the same).
    mutating func insert(_ value: Value, bytes: Int, for key: CacheKey) {
        remove(key)
        guard bytes <= capacity - reserved else { return }
        let slot = Slot(key: key, folded: UserIdentity.folded(key.user), value: value, bytes: bytes)
        slots[key] = slot
        byUser[slot.folded, default: []].insert(key)
        link(slot)
        self.bytes += bytes
        while self.bytes + reserved > capacity, let victim = victim(sparing: slot) {
            remove(victim.key)
        }
    }

    /// Takes `bytes` of the budget for something else (replacing what was reserved before),
    /// evicting entries until the rest fits.
    mutating func reserve(_ bytes: Int) {
        guard bytes != reserved else { return }
        reserved = bytes
        while self.bytes + reserved > capacity, let victim = victim(sparing: nil) {
            remove(victim.key)
        }
    }

    /// Drops the value for `key`, if any.
    mutating func remove(_ key: CacheKey) {
        guard let slot = slots.removeValue(forKey: key) else { return }
        unlink(slot)
        bytes -= slot.bytes
        if byUser[slot.folded]?.remove(key) != nil, byUser[slot.folded]?.isEmpty == true {
            byUser[slot.folded] = nil
        }
    }

    /// Drops every value of the user whose folded name (`UserIdentity.folded`) is `folded`.
    mutating func remove(folded: String) {
        guard let keys = byUser.removeValue(forKey: folded) else { return }
        for key in keys {
            guard let slot = slots.removeValue(forKey: key) else { continue }
            unlink(slot)
            bytes -= slot.bytes
        }
    }

    /// Drops every value kept under the credential fingerprint `credential` (a scan: the
    /// upstream refusing a credential is rare).
    mutating func remove(credential: String) {
        for key in slots.keys where key.credential == credential { remove(key) }
    }

    mutating func removeAll() {
        // Links are unowned: dropping the slots is all there is to do.
        slots.removeAll()
        byUser.removeAll()
        hand = nil
        bytes = 0
    }

    // MARK: The ring

    /// The first unreferenced entry from the hand on (clearing bits on the way), never `spared`.
    private mutating func victim(sparing spared: Slot?) -> Slot? {
        guard var slot = hand, slots.count > (spared == nil ? 0 : 1) else { return nil }
        while slot === spared || slot.referenced.exchange(false, ordering: .relaxed) {
            slot = slot.next!
        }
        hand = slot.next
        return slot
    }

    /// Puts `slot` just behind the hand: the last entry the next sweep reaches.
    private mutating func link(_ slot: Slot) {
        guard let hand else {
            slot.next = slot
            slot.previous = slot
            self.hand = slot
            return
        }
        let last = hand.previous!
        slot.previous = last
        slot.next = hand
        last.next = slot
        hand.previous = slot
    }

    private mutating func unlink(_ slot: Slot) {
        if slot.next === slot {
            hand = nil
        } else {
            if hand === slot { hand = slot.next }
            slot.previous!.next = slot.next
            slot.next!.previous = slot.previous
        }
        slot.next = nil
        slot.previous = nil
    }
}
