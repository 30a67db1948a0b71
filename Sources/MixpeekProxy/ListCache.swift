import Crypto
import Foundation
import Logging
import MixpeekAPI
import MixpeekHTTP
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Synchronization

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
        let result: FlightResult
    }

    /// The outcome of one upstream fetch, handed to the request that started it and to every
    /// request that joined it.
    private final class FlightResult: Sendable {
        private let state = NIOLockedValueBox<(outcome: FetchOutcome?, waiters: [@Sendable (FetchOutcome) -> Void])>((nil, []))

        func resolve(_ outcome: FetchOutcome) {
            let waiters = state.withLockedValue { state in
                state.outcome = outcome
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter(outcome) }
        }

        /// Calls `waiter` with the outcome: now if it is known, else when it is.
        func observe(_ waiter: @escaping @Sendable (FetchOutcome) -> Void) {
            let known = state.withLockedValue { state -> FetchOutcome? in
                if state.outcome == nil { state.waiters.append(waiter) }
                return state.outcome
            }
            if let known { waiter(known) }
        }
    }

    private struct State {
        var memory: [CacheKey: Remembered] = [:]
        var memoryBytes = 0
        /// By folded user (`UserIdentity`): a mutation of any spelling of a user bumps it.
        var generations: [String: UInt64] = [:]
        /// Bumped by a purge of everything: part of every user's generation.
        var epoch: UInt64 = 0
        var flights: [CacheKey: Flight] = [:]
        var nextFlight: UInt64 = 0
        var counters = CacheCounters()
        var fingerprints: [String: String] = [:]
        var onDisk = CacheIndex()
    }

    /// An entry in memory, with its fixed response fields encoded once for every hit.
    public struct Remembered: Sendable {
        public let entry: CachedList
        public let headerBlock: HTTPHeaderBlock?

        init(_ entry: CachedList) {
            self.entry = entry
            headerBlock = HTTPHeaderBlock(Self.fixedFields(of: entry))
        }

        /// The response fields a cached list always answers with (its age, X-Cache and request
        /// id are added per response).
        static func fixedFields(of entry: CachedList) -> HTTPHeaders {
            var fields = HTTPHeaders()
            if let contentType = entry.contentType { fields.add(name: "Content-Type", value: contentType) }
            if let etag = entry.etag { fields.add(name: "ETag", value: etag) }
            if let lastModified = entry.lastModified { fields.add(name: "Last-Modified", value: lastModified) }
            fields.add(name: "Via", value: Headers.via)
            return fields
        }
    }

    private static func generation(of user: String, in state: State) -> UInt64 {
        state.epoch &+ state.generations[UserIdentity.folded(user), default: 0]
    }

    public let settings: Settings
    private let store: CacheStore?
    private let clock: @Sendable () -> Double
    private let logger: Logger
    private let state = ReadWriteLockedValue(State())
    /// Hits are counted outside the lock so that a hit only reads the state.
    private let hits = Atomic<Int>(0)
    /// Counters loaded from disk at start; `counters` adds this run's.
    private let baseCounters: CacheCounters

    public init(settings: Settings, store: CacheStore?, logger: Logger,
                clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.settings = settings
        self.store = store
        self.logger = logger
        self.clock = clock
        self.baseCounters = (try? store?.loadCounters()) ?? CacheCounters()
        store?.loadIndex { [state, logger] result in
            switch result {
            case .success(let index):
                state.withLockedValue { $0.onDisk.loaded(hashes: index.hashes, users: index.users) }
            case .failure(let error):
                // Every miss then asks the file, as before the index existed.
                logger.warning("could not index the cache file", metadata: ["error": "\(error)"])
            }
        }
    }

    // MARK: Keys

    /// The credential part of a cache key: SHA-256 of the whole `Authorization` value,
    /// memoised so hits do not hash. Requests without one share the empty credential (their
    /// lists are refused upstream and so never stored).
    private func credential(for authorization: String) -> String {
        state.withLockedValue { state in
            if let known = state.fingerprints[authorization] { return known }
            let credential = SHA256.hash(data: Data(authorization.utf8)).hex
            if state.fingerprints.count >= 10_000 { state.fingerprints.removeAll(keepingCapacity: true) }
            state.fingerprints[authorization] = credential
            return credential
        }
    }

    // MARK: Reads

    /// The key of a list request and its fresh entry in memory, if any, under one lock. Never
    /// waits: cache hits are answered with it on the event loop.
    public func lookup(authorization: String?, user: String, includeRevoked: Bool, refresh: Bool) -> (CacheKey, Remembered?) {
        let now = clock()
        let authorization = authorization ?? ""
        // Under the shared read lock: a credential seen before and a fresh entry in memory.
        let found = state.withReadLock { state -> (CacheKey, Remembered?)? in
            guard let credential = state.fingerprints[authorization] else { return nil }
            let key = CacheKey(credential: credential, user: user, includeRevoked: includeRevoked)
            guard !refresh, let remembered = state.memory[key], now - remembered.entry.storedAt < settings.ttl else { return (key, nil) }
            return (key, remembered)
        }
        if let found {
            if found.1 != nil { hits.wrappingAdd(1, ordering: .relaxed) }
            return found
        }
        return (CacheKey(credential: credential(for: authorization), user: user, includeRevoked: includeRevoked), nil)
    }

    /// Answers a list request: a fresh entry (memory, then SQLite), or one upstream fetch shared
    /// by every request for the same key and generation, or a stale entry when that fails.
    /// `refresh` (the client sent `no-cache`) skips the lookup and starts a fetch of its own.
    /// `fetch` is called at most once, by the request that leads the fetch.
    public func answer(_ key: CacheKey, refresh: Bool, on eventLoop: any EventLoop,
                       fetch: @escaping @Sendable () -> EventLoopFuture<FetchOutcome>) -> EventLoopFuture<Answer> {
        let promise = eventLoop.makePromise(of: Answer.self)
        @Sendable func finish(_ outcome: FetchOutcome, leader: Bool) {
            if case .response(let response) = outcome, response.status.code < 500 {
                return promise.succeed(.fetched(outcome, coalesced: !leader))
            }
            storedEntry(key) { entry in
                if let entry, self.clock() - entry.storedAt < self.settings.ttl + self.settings.staleIfError {
                    self.state.withLockedValue { $0.counters.stale += 1 }
                    promise.succeed(.stale(entry))
                } else {
                    promise.succeed(.fetched(outcome, coalesced: !leader))
                }
            }
        }
        @Sendable func fetchOrJoin() {
            let (flight, leader) = state.withLockedValue { state -> (Flight, Bool) in
                let generation = Self.generation(of: key.user, in: state)
                if !refresh, let flight = state.flights[key], flight.generation == generation {
                    state.counters.coalesced += 1
                    return (flight, false)
                }
                state.nextFlight += 1
                state.counters.misses += 1
                state.counters.upstreamListCalls += 1
                let flight = Flight(id: state.nextFlight, generation: generation, result: FlightResult())
                state.flights[key] = flight
                return (flight, true)
            }
            guard leader else {
                return flight.result.observe { finish($0, leader: false) }
            }
            fetch().whenComplete { result in
                let outcome: FetchOutcome
                switch result {
                case .success(let fetched): outcome = fetched
                case .failure(let error): outcome = .failure(error as? UpstreamError ?? .unreachable("\(error)"))
                }
                self.complete(key, flight: flight.id, generation: flight.generation, outcome: outcome)
                flight.result.resolve(outcome)
                finish(outcome, leader: true)
            }
        }
        if refresh {
            fetchOrJoin()
        } else {
            storedEntry(key) { entry in
                if let entry, self.clock() - entry.storedAt < self.settings.ttl {
                    self.hits.wrappingAdd(1, ordering: .relaxed)
                    promise.succeed(.hit(entry))
                } else {
                    fetchOrJoin()
                }
            }
        }
        return promise.futureResult
    }

    /// Whole seconds since `entry` was stored, by the cache's clock (the `Age` header).
    public func age(of entry: CachedList) -> Int {
        max(0, Int(clock() - entry.storedAt))
    }

    /// Notes a list forwarded without the cache (a query it cannot key).
    public func noteBypass() {
        state.withLockedValue { $0.counters.bypass += 1 }
    }

    /// The entry for `key` in memory, else in the file (read only when the index says it may
    /// be there), else nil; `completion` runs at once unless the file is read.
    private func storedEntry(_ key: CacheKey, completion: @escaping @Sendable (CachedList?) -> Void) {
        let (memory, generation, mayBeOnDisk) = state.withLockedValue {
            ($0.memory[key]?.entry, Self.generation(of: key.user, in: $0), $0.onDisk.mayContain(key))
        }
        if let memory { return completion(memory) }
        guard let store, mayBeOnDisk else { return completion(nil) }
        store.load(key) { result in
            switch result {
            case .success(let entry):
                // Keep it in memory only if no invalidation came while it was read.
                completion(entry.flatMap { entry in
                    self.state.withLockedValue { state in
                        guard Self.generation(of: key.user, in: state) == generation else { return nil }
                        self.remember(entry, for: key, in: &state)
                        return entry
                    }
                })
            case .failure(let error):
                self.logger.warning("could not read the cache file; answering from the upstream", metadata: ["error": "\(error)"])
                completion(nil)
            }
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
            if let store {
                state.onDisk.noteStored(key)
                store.save(entry, for: key, logger: logger)
            }
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
            state.memoryBytes -= old.entry.body.readableBytes
        }
        // A body larger than the whole budget is served from SQLite only.
        guard entry.body.readableBytes <= settings.memoryBytes else { return }
        state.memory[key] = Remembered(entry)
        state.memoryBytes += entry.body.readableBytes
        while state.memoryBytes > settings.memoryBytes, let victim = state.memory.first(where: { $0.key != key }) {
            state.memory[victim.key] = nil
            state.memoryBytes -= victim.value.entry.body.readableBytes
        }
    }

    /// Drops every cached list of `user` in every spelling that folds to the same address
    /// (`UserIdentity`; of everyone when nil), for every credential, and makes any list fetch
    /// already in flight for that user unstorable. Returns when the delete is on disk.
    public func invalidate(user: String?) async {
        let folded = user.map(UserIdentity.folded)
        let result: Result<Void, any Error> = await withCheckedContinuation { continuation in
            state.withLockedValue { state in
                if let folded {
                    state.generations[folded, default: 0] += 1
                    for key in state.memory.keys where UserIdentity.folded(key.user) == folded {
                        state.memoryBytes -= state.memory.removeValue(forKey: key)?.entry.body.readableBytes ?? 0
                    }
                } else {
                    state.epoch += 1
                    state.memory.removeAll()
                    state.memoryBytes = 0
                    state.onDisk.purged()
                }
                // Nothing of this user's in the file: nothing to delete, nothing to wait for.
                guard let store, folded.map(state.onDisk.mayHaveLists(ofFolded:)) ?? true else {
                    return continuation.resume(returning: .success(()))
                }
                // Queued under the lock: every read or store submitted after this sees it.
                store.enqueueDelete(user: user) { continuation.resume(returning: $0) }
                if let folded { state.onDisk.deleted(folded: folded) }
            }
        }
        if case .failure(let error) = result {
            logger.error("could not delete lists from the cache file", metadata: ["error": "\(error)"])
        }
    }

    // MARK: Figures

    /// This run's counters plus those kept from earlier runs.
    public var counters: CacheCounters {
        var counters = state.withReadLock { $0.counters }
        counters.hits += hits.load(ordering: .relaxed)
        return baseCounters + counters
    }

    /// Entries and bytes in memory.
    public var memoryFootprint: (entries: Int, bytes: Int) {
        state.withReadLock { ($0.memory.count, $0.memoryBytes) }
    }

    /// Entries and bytes in the cache file; nil without a usable file.
    public func diskFootprint() async -> (entries: Int, bytes: Int)? {
        guard let store else { return nil }
        return await withCheckedContinuation { continuation in
            store.footprint { result in
                let found = try? result.get()
                continuation.resume(returning: found.map { (entries: $0.count, bytes: $0.bytes) })
            }
        }
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
