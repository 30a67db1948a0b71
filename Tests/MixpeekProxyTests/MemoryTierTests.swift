import MixpeekAPI
import Testing

@testable import MixpeekProxy

@Suite("Memory tier")
struct MemoryTierTests {
    static func key(_ user: String, credential: String = "c", includeRevoked: Bool = false) -> CacheKey {
        CacheKey(credential: credential, user: user, includeRevoked: includeRevoked)
    }

    @Test("the tier never holds more than its capacity in bytes, and keeps nothing larger than it")
    func byteBound() {
        var tier = MemoryTier<Int>(capacity: 100)
        for i in 0..<20 {
            tier.insert(i, bytes: 30, for: Self.key("u\(i)@example.com"))
            #expect(tier.bytes <= 100)
            #expect(tier.count == min(i + 1, 3))
        }
        let kept = Self.key("u19@example.com")
        tier.insert(-1, bytes: 101, for: kept)
        #expect(!tier.contains(kept), "a value larger than the whole tier is not kept, and the old one goes")
        #expect(tier.bytes == 60 && tier.count == 2)
    }

    @Test("what the cache knows of credentials and keys is counted in the budget: reserving bytes evicts lists, and a list that no longer fits is not kept")
    func reservedBytes() {
        var tier = MemoryTier<Int>(capacity: 300)
        for i in 0..<3 { tier.insert(i, bytes: 100, for: Self.key("u\(i)@example.com")) }
        tier.reserve(150)
        #expect(tier.count == 1 && tier.bytes + tier.reserved <= 300)
        tier.insert(9, bytes: 200, for: Self.key("big@example.com"))
        #expect(!tier.contains(Self.key("big@example.com")), "200 bytes do not fit in 300 less 150 reserved")
        tier.reserve(0)
        tier.insert(9, bytes: 200, for: Self.key("big@example.com"))
        #expect(tier.contains(Self.key("big@example.com")) && tier.bytes <= 300)
    }

    @Test("the credential book's bytes grow with the keys it learns, by name and user, and an identity learned again is counted once")
    func bookFootprint() {
        var book = CredentialBook(capacity: 10, identityCapacity: 2)
        let empty = book.footprint
        func key(_ n: Int) -> KeyIdentity {
            KeyIdentity(["key_hash": String(repeating: "\(n)", count: 64), "key_id": "key_\(n)", "key_prefix": "sk_\(n)",
                         "name": "name-\(n)", "status": "active"], user: "u\(n)@example.com")!
        }
        book.learn(key(1))
        let one = book.footprint
        #expect(one > empty + 400)
        book.learn(key(1))
        #expect(book.footprint == one)
        book.learn(key(2))
        book.learn(key(3))
        #expect(book.footprint == empty + 2 * (one - empty), "at the identity capacity, one is forgotten for each learned")
    }

    @Test("without hits the oldest entry goes first")
    func oldestFirst() {
        var tier = MemoryTier<String>(capacity: 30)
        let (a, b, c, d) = (Self.key("a@x"), Self.key("b@x"), Self.key("c@x"), Self.key("d@x"))
        for key in [a, b, c, d] { tier.insert(key.user, bytes: 10, for: key) }
        #expect(!tier.contains(a))
        #expect(tier.contains(b) && tier.contains(c) && tier.contains(d))
    }

    @Test("second chance: an entry hit since the last sweep is kept over an unreferenced one")
    func secondChance() {
        var tier = MemoryTier<String>(capacity: 30)
        let (a, b, c, d, e) = (Self.key("a@x"), Self.key("b@x"), Self.key("c@x"), Self.key("d@x"), Self.key("e@x"))
        for key in [a, b, c] { tier.insert(key.user, bytes: 10, for: key) }
        #expect(tier.value(for: a) == "a@x")
        tier.insert("d@x", bytes: 10, for: d)
        #expect(tier.contains(a), "hit, so passed over once")
        #expect(!tier.contains(b))
        tier.insert("e@x", bytes: 10, for: e)
        #expect(!tier.contains(c), "the hand goes on from where it stopped")
        #expect(tier.contains(a) && tier.contains(d) && tier.contains(e))
    }

    @Test("a sweep clears each bit once: after passing over every hit entry, eviction takes them in order")
    func sweepClearsOnce() {
        var tier = MemoryTier<Int>(capacity: 1000)
        let keys = (0..<100).map { Self.key("u\($0)@x") }
        for (i, key) in keys.enumerated() { tier.insert(i, bytes: 10, for: key) }
        for key in keys { _ = tier.value(for: key) }
        tier.insert(100, bytes: 10, for: Self.key("new1@x"))
        #expect(!tier.contains(keys[0]) && tier.count == 100)
        tier.insert(101, bytes: 10, for: Self.key("new2@x"))
        #expect(!tier.contains(keys[1]), "its bit was cleared by the first sweep")
        #expect(tier.contains(keys[2]) && tier.contains(Self.key("new1@x")))
    }

    @Test("removing a user drops every spelling of that user, for every credential, and only them")
    func perUserRemoval() {
        var tier = MemoryTier<Int>(capacity: 1000)
        let carol = [Self.key("carol@example.com"), Self.key("Carol@EXAMPLE.com", credential: "d"),
                     Self.key("carol@example.com", includeRevoked: true)]
        let dave = Self.key("dave@example.com")
        for key in carol { tier.insert(1, bytes: 10, for: key) }
        tier.insert(2, bytes: 7, for: dave)
        tier.remove(folded: UserIdentity.folded("CAROL@example.com"))
        #expect(carol.allSatisfy { !tier.contains($0) })
        #expect(tier.contains(dave) && tier.count == 1 && tier.bytes == 7)
        tier.insert(3, bytes: 10, for: carol[0])
        #expect(tier.count == 2 && tier.bytes == 17, "the ring still works after removals")
        tier.removeAll()
        #expect(tier.count == 0 && tier.bytes == 0)
    }

    @Test("storing a key again replaces its value and its size")
    func replacement() {
        var tier = MemoryTier<String>(capacity: 100)
        let a = Self.key("a@x")
        tier.insert("old", bytes: 40, for: a)
        tier.insert("new", bytes: 50, for: a)
        #expect(tier.value(for: a) == "new")
        #expect(tier.count == 1 && tier.bytes == 50)
        tier.remove(folded: "a@x")
        #expect(tier.count == 0 && tier.bytes == 0)
    }

    @Test("after any mix of stores, hits and removals, the byte count is the sum of what is held")
    func consistency() {
        var tier = MemoryTier<Int>(capacity: 500)
        var seed: UInt64 = 42
        func next(_ bound: Int) -> Int {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Int(seed >> 33) % bound
        }
        var sizes: [CacheKey: Int] = [:]
        for _ in 0..<5000 {
            let key = Self.key("u\(next(40))@x", credential: "c\(next(3))")
            switch next(10) {
            case 0..<6:
                let bytes = next(120)
                tier.insert(bytes, bytes: bytes, for: key)
            case 6..<9: _ = tier.value(for: key)
            default: tier.remove(folded: UserIdentity.folded(key.user))
            }
            #expect(tier.bytes <= 500)
        }
        for credential in 0..<3 {
            for user in 0..<40 {
                let key = Self.key("u\(user)@x", credential: "c\(credential)")
                if tier.contains(key) { sizes[key] = tier.value(for: key) }
            }
        }
        #expect(sizes.count == tier.count)
        #expect(sizes.values.reduce(0, +) == tier.bytes)
    }
}
