import Crypto
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// The list cache: an in-memory tier in front of `CacheStore`, request coalescing, and exact
/// invalidation with read-your-writes.
///
/// Read-your-writes rests on a per-user generation. A fetch remembers the generation it
/// started under and is stored (and shared with waiters that join it) only while that
/// generation is current; `invalidate(user:)` bumps it. So a list that left for the upstream
/// before a mutation can never be stored, or handed to a request that arrived after it.
public final class ListCache: Sendable {
    public struct Settings: Sendable {
        /// How long an entry is served as a HIT.
        public var ttl: Double
        /// How long past its TTL an entry may still be served as STALE when the upstream fails.
        public var staleIfError: Double
        /// Bytes of bodies kept in memory; the rest are read from SQLite.
        public var memoryBytes: Int

        public init(ttl: Double, staleIfError: Double, memoryBytes: Int) {
            self.ttl = ttl
            self.staleIfError = staleIfError
            self.memoryBytes = memoryBytes
        }
    }

    /// What the upstream said to one list fetch.
    public enum FetchOutcome: Sendable {
        case response(UpstreamResponse)
        case failure(UpstreamError)
    }

    /// How a list request was answered.
    public enum Answer: Sendable {
        case hit(CachedList)
        /// From the upstream; `coalesced` when this request waited on another's fetch.
        case fetched(FetchOutcome, coalesced: Bool)
        case stale(CachedList)
    }

    private struct Flight {
        let id: UInt64
        let generation: UInt64
        let task: Task<FetchOutcome, Never>
    }

    private struct State {
        var memory: [CacheKey: CachedList] = [:]
        var memoryBytes = 0
        var generations: [String: UInt64] = [:]
        /// Bumped by a purge of everything: part of every user's generation.
        var epoch: UInt64 = 0
        var flights: [CacheKey: Flight] = [:]
        var nextFlight: UInt64 = 0
        var counters = CacheCounters()
        var fingerprints: [String: String] = [:]
    }

    private static func generation(of user: String, in state: State) -> UInt64 {
        state.epoch &+ state.generations[user, default: 0]
    }

    public let settings: Settings
    private let store: CacheStore?
    private let clock: @Sendable () -> Double
    private let logger: Logger
    private let state = NIOLockedValueBox(State())
    /// Counters loaded from disk at start; `counters` adds this run's.
    private let baseCounters: CacheCounters

    public init(settings: Settings, store: CacheStore?, logger: Logger,
                clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.settings = settings
        self.store = store
        self.logger = logger
        self.clock = clock
        self.baseCounters = (try? store?.loadCounters()) ?? CacheCounters()
    }

    // MARK: Keys

    /// The credential part of a cache key: SHA-256 of the whole `Authorization` value,
    /// memoised so hits do not hash. Requests without one share the empty credential (their
    /// lists are refused upstream and so never stored).
    public func key(authorization: String?, user: String, includeRevoked: Bool) -> CacheKey {
        let authorization = authorization ?? ""
        let credential = state.withLockedValue { state -> String in
            if let known = state.fingerprints[authorization] { return known }
            let digest = SHA256.hash(data: Data(authorization.utf8)).map { String(format: "%02x", $0) }.joined()
            if state.fingerprints.count >= 10_000 { state.fingerprints.removeAll(keepingCapacity: true) }
            state.fingerprints[authorization] = digest
            return digest
        }
        return CacheKey(credential: credential, user: user, includeRevoked: includeRevoked)
    }

    // MARK: Reads

    /// A fresh entry from memory, or nil. Never waits: cache hits are answered with it on the
    /// event loop.
    public func freshHit(_ key: CacheKey) -> CachedList? {
        let now = clock()
        return state.withLockedValue { state in
            guard let entry = state.memory[key], now - entry.storedAt < settings.ttl else { return nil }
            state.counters.hits += 1
            return entry
        }
    }

    /// Answers a list request: a fresh entry (memory, then SQLite), or one upstream fetch shared
    /// by every request for the same key and generation, or a stale entry when that fails.
    /// `refresh` (the client sent `no-cache`) skips the lookup and starts a fetch of its own.
    public func answer(_ key: CacheKey, refresh: Bool, fetch: @escaping @Sendable () async -> FetchOutcome) async -> Answer {
        if !refresh, let entry = await storedEntry(key), clock() - entry.storedAt < settings.ttl {
            state.withLockedValue { $0.counters.hits += 1 }
            return .hit(entry)
        }
        let (flight, leader) = state.withLockedValue { state -> (Flight, Bool) in
            let generation = Self.generation(of: key.user, in: state)
            if !refresh, let flight = state.flights[key], flight.generation == generation {
                state.counters.coalesced += 1
                return (flight, false)
            }
            state.nextFlight += 1
            let id = state.nextFlight
            state.counters.misses += 1
            state.counters.upstreamListCalls += 1
            let task = Task {
                let outcome = await fetch()
                self.complete(key, flight: id, generation: generation, outcome: outcome)
                return outcome
            }
            let flight = Flight(id: id, generation: generation, task: task)
            state.flights[key] = flight
            return (flight, true)
        }
        let outcome = await flight.task.value
        if case .response(let response) = outcome, response.status.code < 500 {
            return .fetched(outcome, coalesced: !leader)
        }
        if let entry = await storedEntry(key), clock() - entry.storedAt < settings.ttl + settings.staleIfError {
            state.withLockedValue { $0.counters.stale += 1 }
            return .stale(entry)
        }
        return .fetched(outcome, coalesced: !leader)
    }

    /// Whole seconds since `entry` was stored, by the cache's clock (the `Age` header).
    public func age(of entry: CachedList) -> Int {
        max(0, Int(clock() - entry.storedAt))
    }

    /// Notes a list forwarded without the cache (a query it cannot key).
    public func noteBypass() {
        state.withLockedValue { $0.counters.bypass += 1 }
    }

    private func storedEntry(_ key: CacheKey) async -> CachedList? {
        let (memory, generation) = state.withLockedValue { ($0.memory[key], Self.generation(of: key.user, in: $0)) }
        if let memory { return memory }
        guard let store else { return nil }
        do {
            guard let entry = try await store.load(key) else { return nil }
            // Keep it in memory only if no invalidation came while it was read.
            return state.withLockedValue { state in
                guard Self.generation(of: key.user, in: state) == generation else { return nil }
                remember(entry, for: key, in: &state)
                return entry
            }
        } catch {
            logger.warning("could not read the cache file; answering from the upstream", metadata: ["error": "\(error)"])
            return nil
        }
    }

    // MARK: Writes

    private func complete(_ key: CacheKey, flight id: UInt64, generation: UInt64, outcome: FetchOutcome) {
        state.withLockedValue { state in
            if state.flights[key]?.id == id { state.flights[key] = nil }
            guard case .response(let response) = outcome, (200..<300).contains(response.status.code),
                  !response.headers.cacheControl(contains: "no-store"),
                  Self.isJSONObject(response.body),
                  Self.generation(of: key.user, in: state) == generation
            else { return }
            let entry = CachedList(
                status: Int(response.status.code), contentType: response.headers.first(name: "content-type"),
                etag: response.headers.first(name: "etag"), lastModified: response.headers.first(name: "last-modified"),
                body: response.body, storedAt: clock())
            remember(entry, for: key, in: &state)
            // Submitted under the lock, so it is ordered before any later invalidation's delete.
            store?.save(entry, for: key, logger: logger)
        }
    }

    /// A list body worth keeping: a JSON object. A 200 whose body does not parse is an
    /// upstream fault, passed to its client once but never cached for everyone else.
    static func isJSONObject(_ body: ByteBuffer) -> Bool {
        body.withUnsafeReadableBytes { bytes in
            (try? JSONSerialization.jsonObject(with: Data(bytes))) is [String: Any]
        }
    }

    private func remember(_ entry: CachedList, for key: CacheKey, in state: inout State) {
        if let old = state.memory.removeValue(forKey: key) {
            state.memoryBytes -= old.body.readableBytes
        }
        // A body larger than the whole budget is served from SQLite only.
        guard entry.body.readableBytes <= settings.memoryBytes else { return }
        state.memory[key] = entry
        state.memoryBytes += entry.body.readableBytes
        while state.memoryBytes > settings.memoryBytes, let victim = state.memory.first(where: { $0.key != key }) {
            state.memory[victim.key] = nil
            state.memoryBytes -= victim.value.body.readableBytes
        }
    }

    /// Drops every cached list of `user` (of everyone when nil), for every credential, and
    /// makes any list fetch already in flight for that user unstorable. Returns when the
    /// delete is on disk.
    public func invalidate(user: String?) async {
        let result: Result<Void, any Error> = await withCheckedContinuation { continuation in
            state.withLockedValue { state in
                if let user {
                    state.generations[user, default: 0] += 1
                    for key in state.memory.keys where key.user == user {
                        state.memoryBytes -= state.memory.removeValue(forKey: key)?.body.readableBytes ?? 0
                    }
                } else {
                    state.epoch += 1
                    state.memory.removeAll()
                    state.memoryBytes = 0
                }
                guard let store else { return continuation.resume(returning: .success(())) }
                // Queued under the lock: every read or store submitted after this sees it.
                store.enqueueDelete(user: user) { continuation.resume(returning: $0) }
            }
        }
        if case .failure(let error) = result {
            logger.error("could not delete lists from the cache file", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Figures

    /// This run's counters plus those kept from earlier runs.
    public var counters: CacheCounters {
        baseCounters + state.withLockedValue { $0.counters }
    }

    /// Entries and bytes in memory.
    public var memoryFootprint: (entries: Int, bytes: Int) {
        state.withLockedValue { ($0.memory.count, $0.memoryBytes) }
    }

    /// Writes the counters to the cache file, for `cache stats` and the next start.
    public func persistCounters() {
        do {
            try store?.saveCounters(counters)
        } catch {
            logger.warning("could not save cache counters", metadata: ["error": "\(error)"])
        }
    }
}
