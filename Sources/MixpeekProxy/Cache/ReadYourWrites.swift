import MixpeekAPI

/// The read-your-writes core of the list cache: per-user generations and the list fetches in
/// flight. Pure state; its owner locks it and does the I/O.
///
/// A fetch remembers the generation it started under. It is shared with requests that join it
/// and stored only while that generation is current; `invalidate(folded:)` bumps it. So a list
/// that left for the upstream before a mutation is never stored, nor handed to a request that
/// arrived after the mutation.
struct ReadYourWrites<Shared> {
    /// One fetch in flight: `shared` is what its leader hands to the requests that join it.
    struct Flight {
        let id: UInt64
        let generation: UInt64
        let shared: Shared
    }

    /// By folded user (`UserIdentity`): a mutation of any spelling of a user bumps it.
    private var generations: [String: UInt64] = [:]
    /// Bumped by a purge of everything: part of every user's generation.
    private var epoch: UInt64 = 0
    private var flights: [CacheKey: Flight] = [:]
    private var lastFlight: UInt64 = 0

    /// The generation lists of `user` (any spelling) are fetched and stored under now.
    func generation(of user: String) -> UInt64 {
        epoch &+ generations[UserIdentity.folded(user), default: 0]
    }

    /// The fetch in flight for `key` under the current generation, to join (`leader` false);
    /// else a new one, which the caller leads. `refresh` always starts a new one.
    mutating func fetch(_ key: CacheKey, refresh: Bool, sharing: () -> Shared) -> (flight: Flight, leader: Bool) {
        let generation = generation(of: key.user)
        if !refresh, let flight = flights[key], flight.generation == generation {
            return (flight, false)
        }
        lastFlight += 1
        let flight = Flight(id: lastFlight, generation: generation, shared: sharing())
        flights[key] = flight
        return (flight, true)
    }

    /// Ends `flight`: no request joins it from now on. True when its result may be stored,
    /// that is when no invalidation of its user came since it started.
    mutating func land(_ flight: Flight, for key: CacheKey) -> Bool {
        if flights[key]?.id == flight.id { flights[key] = nil }
        return generation(of: key.user) == flight.generation
    }

    /// Makes every list of the user whose folded name is `folded` (of everyone when nil)
    /// fetched or read before now unstorable.
    mutating func invalidate(folded: String?) {
        if let folded {
            generations[folded, default: 0] += 1
        } else {
            epoch += 1
        }
    }
}

extension ReadYourWrites.Flight: Sendable where Shared: Sendable {}
