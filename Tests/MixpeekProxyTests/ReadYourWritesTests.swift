import MixpeekAPI
import Testing

@testable import MixpeekProxy

@Suite("Read-your-writes core")
struct ReadYourWritesTests {
    let key = CacheKey(credential: "c", user: "carol@example.com", includeRevoked: false)

    @Test("requests for the same key join the fetch in flight; a refresh starts its own")
    func coalescing() {
        var core = ReadYourWrites<Int>()
        let first = core.fetch(key, refresh: false) { 1 }
        let second = core.fetch(key, refresh: false) { 2 }
        #expect(first.leader && !second.leader)
        #expect(second.flight.id == first.flight.id && second.flight.shared == 1)
        let refreshed = core.fetch(key, refresh: true) { 3 }
        #expect(refreshed.leader && refreshed.flight.id != first.flight.id)
        let other = core.fetch(CacheKey(credential: "d", user: key.user, includeRevoked: false), refresh: false) { 4 }
        #expect(other.leader, "another credential never shares a fetch")
    }

    @Test("a fetch that landed is not joined again; its list may be stored")
    func landing() {
        var core = ReadYourWrites<Int>()
        let first = core.fetch(key, refresh: false) { 1 }
        let stored = core.land(first.flight, for: key)
        let next = core.fetch(key, refresh: false) { 2 }
        #expect(stored)
        #expect(next.leader)
    }

    @Test("a fetch started before an invalidation of any spelling of its user is neither joined nor stored")
    func invalidation() {
        var core = ReadYourWrites<Int>()
        let before = core.fetch(key, refresh: false) { 1 }
        let generation = core.generation(of: key.user)
        core.invalidate(folded: UserIdentity.folded("Carol@EXAMPLE.com"))
        #expect(core.generation(of: key.user) != generation)
        let after = core.fetch(key, refresh: false) { 2 }
        #expect(after.leader, "a request after the mutation does not get the older fetch")
        let olderStored = core.land(before.flight, for: key)
        #expect(!olderStored, "the older fetch is not stored")
        let joined = core.fetch(key, refresh: false) { 3 }
        #expect(joined.flight.id == after.flight.id, "landing the older fetch leaves the newer in flight")
        let newerStored = core.land(after.flight, for: key)
        #expect(newerStored)
    }

    @Test("a purge of everything invalidates every user; an invalidation of one user leaves the others")
    func purge() {
        var core = ReadYourWrites<Int>()
        let dave = CacheKey(credential: "c", user: "dave@example.com", includeRevoked: false)
        let carolFetch = core.fetch(key, refresh: false) { 1 }
        let daveFetch = core.fetch(dave, refresh: false) { 2 }
        core.invalidate(folded: UserIdentity.folded(key.user))
        let daveStored = core.land(daveFetch.flight, for: dave)
        let carolStored = core.land(carolFetch.flight, for: key)
        #expect(daveStored, "another user's fetch is still storable")
        #expect(!carolStored)
        let again = core.fetch(dave, refresh: false) { 3 }
        core.invalidate(folded: nil)
        let storedAfterPurge = core.land(again.flight, for: dave)
        #expect(!storedAfterPurge)
    }
}
