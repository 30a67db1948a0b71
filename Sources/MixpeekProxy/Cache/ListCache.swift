import Crypto
import Foundation
import Logging
import MixpeekAPI
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// Why a list went to the upstream (RFC 9211's `fwd`), and whether the request shared another
/// request's fetch rather than making its own.
public struct ListForward: Sendable, Equatable {
    public enum Reason: String, Sendable {
        /// Nothing cached for the key.
        case uriMiss = "uri-miss"
        /// An entry past its TTL.
        case stale
        /// The client asked for a fresh answer (`no-cache`).
        case request
    }

    public var reason: Reason
    public var coalesced: Bool

    public init(reason: Reason, coalesced: Bool) {
        self.reason = reason
        self.coalesced = coalesced
    }
}

/// The list cache: a memory tier (`MemoryTier`) in front of a durable store (`ListStore`),
/// request coalescing, and exact invalidation with read-your-writes (`ReadYourWrites`).
///
/// `Prepared` is what the HTTP side makes of an entry once, when it enters memory, so that a
/// hit costs no encoding (`CachedListResponse`); the cache only keeps it beside the entry.
public final class ListCache<Prepared: Sendable>: Invalidation, Sendable {
    public struct Settings: Sendable {
        /// How long an entry is served as a HIT.
        public var ttl: Double
        /// How long past its TTL an entry may still be served as STALE when the upstream fails.
        public var staleIfError: Double
        /// Bytes of bodies kept in memory; the rest are read from SQLite.
        public var memoryBytes: Int
        /// `cache_ignore_upstream_directives`: keep lists whatever the upstream's
        /// `Cache-Control` says, but for `no-store` (`Policy.storage`).
        public var ignoreUpstreamDirectives: Bool
        /// `credential_recheck`: a credential the upstream has not confirmed (a 2xx to it, or the
        /// fetch of the entry asked for) within this many seconds has its list forwarded.
        public var credentialRecheck: Double

        public init(ttl: Double, staleIfError: Double, memoryBytes: Int, ignoreUpstreamDirectives: Bool = false,
                    credentialRecheck: Double = 30) {
            self.ttl = ttl
            self.staleIfError = staleIfError
            self.memoryBytes = memoryBytes
            self.ignoreUpstreamDirectives = ignoreUpstreamDirectives
            self.credentialRecheck = credentialRecheck
        }
    }

    /// What the upstream said to one list fetch.
    public enum FetchOutcome: Sendable {
        case response(UpstreamResponse)
        case failure(UpstreamError)

        /// A fetch's future, completed: an error that is no `UpstreamError` is `unreachable`.
        init(_ result: Result<FetchOutcome, any Error>) {
            switch result {
            case .success(let fetched): self = fetched
            case .failure(let error): self = .failure(error as? UpstreamError ?? .unreachable("\(error)"))
            }
        }
    }

    /// What one upstream fetch of a list gave, shared by every request that joined it.
    public struct Fetched: Sendable {
        public let outcome: FetchOutcome
        /// The entry made of a 2xx list worth keeping, with its validator (the upstream's `ETag`
        /// or one minted), whether or not it could be stored; nil for any other answer.
        public let entry: CachedList?
        /// Why the answer was not stored (`Cache-Status`'s `detail`); nil when it was.
        public let notStored: String?
    }

    /// How a list request was answered.
    public enum Answer: Sendable {
        case hit(CachedList)
        /// From the upstream.
        case fetched(Fetched, ListForward)
        /// A cached entry served because the upstream failed.
        case stale(CachedList, ListForward)
    }

    /// The outcome of one upstream fetch, handed to the request that started it and to every
    /// request that joined it.
    private final class FlightResult: Sendable {
        private let state = NIOLockedValueBox<(outcome: Fetched?, waiters: [@Sendable (Fetched) -> Void])>((nil, []))

        func resolve(_ outcome: Fetched) {
            let waiters = state.withLockedValue { state in
                state.outcome = outcome
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter(outcome) }
        }

        /// Calls `waiter` with the outcome: now if it is known, else when it is.
        func observe(_ waiter: @escaping @Sendable (Fetched) -> Void) {
            let known = state.withLockedValue { state -> Fetched? in
                if state.outcome == nil { state.waiters.append(waiter) }
                return state.outcome
            }
            if let known { waiter(known) }
        }
    }

    /// An entry in memory, with what the HTTP side prepared from it once for every hit
    /// (`prepare`, given at init). A class: a hit takes it out of the lock with one retain,
    /// not one for each string and buffer of the entry.
    public final class Remembered: Sendable {
        public let entry: CachedList
        public let prepared: Prepared

        init(entry: CachedList, prepared: Prepared) {
            self.entry = entry
            self.prepared = prepared
        }
    }

    /// Everything the cache's lock guards. Only small, bounded work happens under it: no
    /// parsing, no encoding (`complete` and `storedEntry` prepare entries before locking).
    private struct State {
        var memory: MemoryTier<Remembered>
        var readYourWrites = ReadYourWrites<FlightResult>()
        var counters = CacheCounters()
        /// Counted in the memory tier's budget (without `oldValue`, the observer leaves the
        /// book's mutations in place).
        var book = CredentialBook() { didSet { memory.reserve(book.footprint) } }
        var onDisk = CacheIndex()
        /// Lists fetched while the gate is closed (`answerGated`).
        var gated: [CacheKey: GatedFlight] = [:]
    }

    /// One fetch at a time per key while the gate is closed: `running` are the requests the
    /// fetch on its way will answer; `next`, those that arrived after it started, which the
    /// next fetch (started once it is back, with the first of them leading) answers.
    private struct GatedFlight {
        typealias Request = (fetch: @Sendable () -> EventLoopFuture<FetchOutcome>, answer: @Sendable (Fetched, _ leader: Bool) -> Void)
        var running: [Request]
        var next: [Request] = []
    }

    public let settings: Settings
    private let store: (any ListStore)?
    /// Whether lists of a user may be served from and kept in this cache now: not while a
    /// mutation's outcome is not durable (`OutcomeWriter`), nor, in a group, while the group
    /// says no.
    public let gate: PendingOutcomes
    private let prepare: @Sendable (CachedList) -> Prepared
    private let clock: @Sendable () -> Double
    private let logger: Logger
    private let state: ReadWriteLockedValue<State>
    /// Hits are counted outside the lock so that a hit only reads the state.
    private let hits = Atomic<Int>(0)
    /// Lists of a revoked credential that the cache held back (`/_proxy/metrics`).
    private let heldFromRevoked = Atomic<Int>(0)
    /// Counters loaded from disk at start; `counters` adds this run's.
    private let baseCounters: CacheCounters

    /// `prepare` runs once per entry that enters memory, outside the cache's lock.
    public init(settings: Settings, store: (any ListStore)?, gate: (any ListGate)? = nil, logger: Logger,
                clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 },
                prepare: @escaping @Sendable (CachedList) -> Prepared) {
        self.settings = settings
        self.store = store
        self.gate = PendingOutcomes(then: gate)
        self.prepare = prepare
        self.logger = logger
        self.clock = clock
        var initial = State(memory: MemoryTier(capacity: settings.memoryBytes))
        do {
            initial.book.restore(try store?.loadRevocations() ?? [])
        } catch {
            logger.error("could not read the revocations kept in the cache file", metadata: ["error": "\(error)"])
        }
        state = ReadWriteLockedValue(initial)
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

    /// The `Credential` of an `Authorization` value (its fingerprint is the credential part of
    /// a cache key: SHA-256 of the whole value), memoised so hits do not hash. Requests without
    /// one share the empty credential (their lists are refused upstream and so never stored).
    public func credential(for authorization: String?) -> Credential {
        let authorization = authorization ?? ""
        if let known = state.withReadLock({ $0.book.credentials[authorization] }) { return known }
        let made = Credential(authorization: authorization)
        return state.withLockedValue { $0.book.credential(for: authorization, made: made) }
    }

    // MARK: Reads

    /// A list request as the cache sees it: its key, its credential, and its fresh entry in
    /// memory when the cache may answer with it now.
    public struct Lookup: Sendable {
        public let key: CacheKey
        public let credential: Credential
        public let remembered: Remembered?
    }

    /// The key of a list request and its fresh entry in memory, if any, under one lock. Never
    /// waits: cache hits are answered with it on the event loop.
    public func lookup(authorization: String?, user: String, includeRevoked: Bool, refresh: Bool) -> Lookup {
        let now = clock()
        let authorization = authorization ?? ""
        // Under the shared read lock: a credential seen before and a fresh entry in memory.
        // Through the state's address: only the two tables it reads are loaded.
        let found = state.withReadLockedPointer { state -> Lookup? in
            guard let credential = state.pointee.book.credentials[authorization] else { return nil }
            let key = CacheKey(credential: credential.fingerprint, user: user, includeRevoked: includeRevoked)
            guard !refresh, let remembered = state.pointee.memory.value(for: key),
                  Policy.onHit(remembered.entry, credential: credential, now: now, settings: settings) == .serve else {
                return Lookup(key: key, credential: credential, remembered: nil)
            }
            return Lookup(key: key, credential: credential, remembered: remembered)
        }
        if let found {
            if found.remembered != nil {
                if !gate.admits(user: user) { return Lookup(key: found.key, credential: found.credential, remembered: nil) }
                hits.wrappingAdd(1, ordering: .relaxed)
            }
            return found
        }
        let credential = credential(for: authorization)
        return Lookup(key: CacheKey(credential: credential.fingerprint, user: user, includeRevoked: includeRevoked),
                      credential: credential, remembered: nil)
    }

    /// Answers a list request: a fresh entry (memory, then SQLite), or one upstream fetch shared
    /// by every request for the same key and generation, or a stale entry when that fails.
    /// `refresh` (the client sent `no-cache`) skips the lookup and starts a fetch of its own.
    /// `fetch` is called at most once, by the request that leads the fetch.
    public func answer(_ key: CacheKey, credential: Credential, refresh: Bool, on eventLoop: any EventLoop,
                       fetch: @escaping @Sendable () -> EventLoopFuture<FetchOutcome>) -> EventLoopFuture<Answer> {
        let promise = eventLoop.makePromise(of: Answer.self)
        // Revoked, refused or expired: forwarded, so the upstream decides; nothing kept is read.
        let stands = credential.standsAt(clock())
        if credential.isRevoked { heldFromRevoked.wrappingAdd(1, ordering: .relaxed) }
        if !gate.admits(user: key.user) {
            let reason: ListForward.Reason = refresh ? .request : .uriMiss
            answerGated(key, credential: credential, fetch: fetch) { fetched, leader in
                promise.succeed(.fetched(fetched, ListForward(reason: reason, coalesced: !leader)))
            }
            return promise.futureResult
        }
        @Sendable func finish(_ fetched: Fetched, leader: Bool, reason: ListForward.Reason) {
            let forward = ListForward(reason: reason, coalesced: !leader)
            guard Policy.onUpstreamFailure(fetched.outcome, credential: credential) else {
                return promise.succeed(.fetched(fetched, forward))
            }
            storedEntry(key) { entry in
                if let entry, Policy.servesStale(entry, now: self.clock(), settings: self.settings) {
                    self.state.withLockedValue { $0.counters.stale += 1 }
                    promise.succeed(.stale(entry, forward))
                } else {
                    promise.succeed(.fetched(fetched, forward))
                }
            }
        }
        @Sendable func fetchOrJoin(_ reason: ListForward.Reason) {
            let (flight, leader) = state.withLockedValue { state in
                let fetch = state.readYourWrites.fetch(key, refresh: refresh, sharing: FlightResult.init)
                if fetch.leader {
                    state.counters.misses += 1
                    state.counters.upstreamListCalls += 1
                } else {
                    state.counters.coalesced += 1
                }
                return fetch
            }
            guard leader else {
                return flight.shared.observe { finish($0, leader: false, reason: reason) }
            }
            fetch().whenComplete { result in
                let outcome = FetchOutcome(result)
                let list = self.noteAnswer(outcome, to: credential, listOf: key.user)
                let fetched = self.complete(key, flight: flight, outcome: outcome, list: list)
                flight.shared.resolve(fetched)
                finish(fetched, leader: true, reason: reason)
            }
        }
        if refresh {
            fetchOrJoin(.request)
        } else if !stands {
            fetchOrJoin(.uriMiss)
        } else {
            storedEntry(key) { entry in
                switch entry.map({ Policy.onHit($0, credential: credential, now: self.clock(), settings: self.settings) }) {
                case .serve?:
                    self.hits.wrappingAdd(1, ordering: .relaxed)
                    promise.succeed(.hit(entry!))
                case nil: fetchOrJoin(.uriMiss)
                case .expired?, .unconfirmed?: fetchOrJoin(.stale)
                }
            }
        }
        return promise.futureResult
    }

    /// A list while the gate is closed (an outcome not yet durable, a group's mutation in
    /// progress, or a group member not caught up, PostgreSQL down): forwarded, never kept, and
    /// still coalesced, but only onto a fetch that starts after the request arrived. Joining
    /// the fetch already on its way could answer with a list from before a mutation answered
    /// in between; so at most one fetch per key is on its way and one more waits, however many
    /// requests come.
    private func answerGated(_ key: CacheKey, credential: Credential, fetch: @escaping @Sendable () -> EventLoopFuture<FetchOutcome>,
                             answer: @escaping @Sendable (Fetched, _ leader: Bool) -> Void) {
        let starts = state.withLockedValue { state -> Bool in
            if state.gated[key] != nil {
                state.gated[key]!.next.append((fetch, answer))
                return false
            }
            state.gated[key] = GatedFlight(running: [(fetch, answer)])
            return true
        }
        if starts { fetchGated(key, credential: credential, fetch) }
    }

    private func fetchGated(_ key: CacheKey, credential: Credential, _ fetch: @Sendable () -> EventLoopFuture<FetchOutcome>) {
        let reason = gate.closedReason(user: key.user)
        state.withLockedValue { state in
            state.counters.misses += 1
            state.counters.upstreamListCalls += 1
        }
        fetch().whenComplete { result in
            let outcome = FetchOutcome(result)
            let list = self.noteAnswer(outcome, to: credential, listOf: key.user)
            let made = self.storable(outcome, list: list, key: key, storedAt: self.clock())
            let fetched = Fetched(outcome: outcome, entry: made.entry, notStored: made.entry == nil ? made.notStored : reason)
            let (answered, next) = self.state.withLockedValue { state -> ([GatedFlight.Request], GatedFlight.Request?) in
                guard let flight = state.gated[key] else { return ([], nil) }
                state.counters.coalesced += flight.running.count - 1
                if flight.next.isEmpty {
                    state.gated[key] = nil
                    return (flight.running, nil)
                }
                state.gated[key] = GatedFlight(running: flight.next)
                return (flight.running, flight.next[0])
            }
            for (index, request) in answered.enumerated() { request.answer(fetched, index == 0) }
            if let next { self.fetchGated(key, credential: credential, next.fetch) }
        }
    }

    /// `entry`'s age in whole seconds by the cache's clock (the `Age` header) and the whole
    /// seconds of freshness it has left, negative once past its TTL (`Cache-Status`'s `ttl`),
    /// from one reading of the clock.
    public func timing(of entry: CachedList) -> (age: Int, ttl: Int) {
        let elapsed = clock() - entry.storedAt
        return (max(0, Int(elapsed)), Int((entry.freshness(ttl: settings.ttl) - elapsed).rounded(.down)))
    }

    /// Notes a list forwarded without the cache (a query it cannot key).
    public func noteBypass() {
        state.withLockedValue { $0.counters.bypass += 1 }
    }

    /// The entry for `key` in memory, else in the file (read only when the index says it may
    /// be there), else nil; `completion` runs at once unless the file is read.
    private func storedEntry(_ key: CacheKey, completion: @escaping @Sendable (CachedList?) -> Void) {
        let (memory, generation, mayBeOnDisk) = state.withReadLock {
            ($0.memory.value(for: key)?.entry, $0.readYourWrites.generation(of: key.user), $0.onDisk.mayContain(key))
        }
        if let memory { return completion(memory) }
        guard let store, mayBeOnDisk else { return completion(nil) }
        store.load(key) { result in
            switch result {
            case .success(let entry):
                // Keep it in memory only if no invalidation came while it was read.
                completion(entry.flatMap { entry in
                    var entry = entry
                    // Stored by a proxy that did not mint validators yet.
                    if entry.etag == nil { entry.etag = Validators.mint(credential: key.credential, body: entry.body) }
                    let remembered = Remembered(entry: entry, prepared: self.prepare(entry))
                    return self.state.withLockedValue { state in
                        guard state.readYourWrites.generation(of: key.user) == generation else { return nil }
                        state.memory.insert(remembered, bytes: entry.body.readableBytes, for: key)
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

    /// Ends the fetch `flight` led for `key` and stores its outcome when it is a list worth
    /// keeping and no invalidation came while it was fetched.
    private func complete(_ key: CacheKey, flight: ReadYourWrites<FlightResult>.Flight, outcome: FetchOutcome,
                          list: [String: Any]?) -> Fetched {
        // Parsed and prepared before the lock: every loop's hits wait while it is held.
        let made = storable(outcome, list: list, key: key, storedAt: clock())
        let remembered = made.entry.map { Remembered(entry: $0, prepared: prepare($0)) }
        let landed = state.withLockedValue { state -> Bool in
            guard state.readYourWrites.land(flight, for: key), let remembered else { return false }
            state.memory.insert(remembered, bytes: remembered.entry.body.readableBytes, for: key)
            // Submitted under the lock, so it is ordered before any later invalidation's delete.
            if let store {
                state.onDisk.noteStored(key)
                store.save(remembered.entry, for: key, logger: logger)
            }
            return true
        }
        return Fetched(outcome: outcome, entry: made.entry, notStored: landed ? nil : made.notStored ?? "invalidated")
    }

    /// The entry to keep for `outcome`, with its validator: a 2xx JSON object whose
    /// `Cache-Control` lets a shared cache keep it (`Policy.storage`); else why not, in the words
    /// of `Cache-Status`'s `detail`.
    private func storable(_ outcome: FetchOutcome, list: [String: Any]?, key: CacheKey, storedAt: Double)
        -> (entry: CachedList?, notStored: String?) {
        guard case .response(let response) = outcome else { return (nil, "upstream-failed") }
        guard (200..<300).contains(response.status.code) else { return (nil, "status") }
        let storage = Policy.storage(of: response.headers, ignoringDirectives: settings.ignoreUpstreamDirectives)
        guard case .store(let lifetime, let mayServeStale) = storage else {
            if case .doNotStore(let reason) = storage { return (nil, reason) }
            return (nil, nil)
        }
        guard list != nil else { return (nil, "not-json") }
        return (CachedList(
            status: Int(response.status.code), contentType: response.headers.first(name: "content-type"),
            etag: response.headers.first(name: "etag") ?? Validators.mint(credential: key.credential, body: response.body),
            lastModified: response.headers.first(name: "last-modified"), body: response.body, storedAt: storedAt,
            lifetime: lifetime, mayServeStale: mayServeStale), nil)
    }

    /// A list body worth keeping is a JSON object. A 200 whose body does not parse is an
    /// upstream fault, passed to its client once but never cached for everyone else.
    static func jsonObject(_ body: ByteBuffer) -> [String: Any]? {
        body.withUnsafeReadableBytes { bytes in
            (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any]
        }
    }

    // MARK: Credentials

    /// What the upstream's answer to `credential` says of it: a 2xx confirms it; a 401, or a
    /// 403 to a list, refuses it (`refuse`). Returns a 2xx list's body, parsed once (nil for
    /// anything else), having learned its keys.
    @discardableResult
    func noteAnswer(_ outcome: FetchOutcome, to credential: Credential, listOf user: String?) -> [String: Any]? {
        guard case .response(let response) = outcome else { return nil }
        switch response.status.code {
        case 200..<300:
            credential.confirmed(at: clock())
            guard let user, let object = Self.jsonObject(response.body) else { return nil }
            let identities = KeyIdentity.fromList(object, user: user)
            if !identities.isEmpty {
                state.withLockedValue { state in for identity in identities { state.book.learn(identity) } }
            }
            return object
        case 401:
            refuse(credential)
        case 403 where user != nil:
            // To a list, the credential may not read; to a mutation it may be the key's rule
            // (the protected `admin-key`), which says nothing of the credential.
            refuse(credential)
        default:
            break
        }
        return nil
    }

    /// The upstream refused `credential`: every list kept under it is dropped, in memory and on
    /// disk, and it gets nothing from the cache (not even STALE) until the upstream answers it
    /// 2xx again.
    public func refuse(_ credential: Credential) {
        credential.refused()
        state.withLockedValue { state in
            state.memory.remove(credential: credential.fingerprint)
            store?.enqueueDelete(credential: credential.fingerprint)
        }
    }

    /// What a mutation's 2xx answer says of keys, acted on before the answer is sent: a create,
    /// rotate or update teaches the key it answers with; a delete or rotate of `name`, or an
    /// update that leaves it non-active, revokes every secret of that key the proxy has seen
    /// (a rotate's new one aside). `answer` is the answer's body, parsed (nil when it is not a
    /// JSON object). Returns the revocations made.
    @discardableResult
    public func noteMutation(_ action: AuditAction, user: String, name: String?, answer object: [String: Any]?) -> [Revocation] {
        let identity = object.flatMap { KeyIdentity($0, user: user) }
        let now = clock()
        let made = state.withLockedValue { state -> [Revocation] in
            if let identity { state.book.learn(identity) }
            guard let name = name ?? identity?.name else { return [] }
            switch action {
            case .delete:
                return state.book.revoke(user: user, name: name, via: "delete", at: now)
            case .rotate:
                return state.book.revoke(user: user, name: name, keeping: identity?.keyHash, via: "rotate", at: now)
            case .update where identity.map({ !$0.isActive }) == true:
                return state.book.revoke(user: user, name: name, alsoHash: identity?.keyHash, via: "update", at: now)
            default:
                return []
            }
        }
        store?.saveRevocations(made, logger: logger)
        if !made.isEmpty {
            logger.notice("revoked through the proxy: the cache answers these keys' secrets nothing",
                          metadata: ["keys": "\(made.map { $0.keyPrefix ?? $0.name })", "via": "\(made[0].via)"])
        }
        return made
    }

    /// The key whose secret `credential` bears, when the proxy has seen it in an answer.
    public func identity(of credential: Credential) -> KeyIdentity? {
        state.withReadLock { $0.book.identity(of: credential) }
    }

    /// Secrets revoked through the proxy, and the recent revocations (newest last).
    public var revocations: (count: Int, recent: [Revocation]) {
        state.withReadLock { ($0.book.revoked.count, $0.book.recent) }
    }

    /// List requests of revoked credentials that the cache held back and forwarded.
    public var listsHeldFromRevoked: Int { heldFromRevoked.load(ordering: .relaxed) }

    /// Drops every cached list of `user` in every spelling that folds to the same address
    /// (`UserIdentity`; of everyone when nil), for every credential, and makes any list fetch
    /// already in flight for that user unstorable. Returns when the delete is on disk.
    public func invalidate(user: String?) async {
        let result: Result<Void, any Error> = await withCheckedContinuation { continuation in
            remove(user: user) { continuation.resume(returning: $0) }
        }
        if case .failure(let error) = result {
            logger.error("could not delete lists from the cache file", metadata: ["error": "\(error)"])
        }
    }

    /// `invalidate(user:)` without waiting for the file: the delete is queued, and every read
    /// or store submitted after this returns sees it. For callers that may not suspend (the
    /// group's announcements, heard on an event loop).
    public func drop(user: String?) {
        if let user {
            // A group's announcement of a mutation of `user`: their keys may be being revoked.
            let now = clock()
            state.withLockedValue { $0.book.demandConfirmation(ofKeysOf: user, at: now) }
        }
        remove(user: user) { [logger] result in
            if case .failure(let error) = result {
                logger.error("could not delete lists from the cache file", metadata: ["error": "\(error)"])
            }
        }
    }

    private func remove(user: String?, onDisk: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let folded = user.map(UserIdentity.folded)
        state.withLockedValue { state in
            state.readYourWrites.invalidate(folded: folded)
            if let folded {
                state.memory.remove(folded: folded)
            } else {
                state.memory.removeAll()
                state.onDisk.purged()
            }
            // Nothing of this user's in the file: nothing to delete, nothing to wait for.
            guard let store, folded.map(state.onDisk.mayHaveLists(ofFolded:)) ?? true else {
                return onDisk(.success(()))
            }
            // Queued under the lock: every read or store submitted after this sees it.
            store.enqueueDelete(user: user, completion: onDisk)
            if let folded { state.onDisk.deleted(folded: folded) }
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
    /// Lists and their bytes in the memory tier, and the bytes of its budget the credentials
    /// and keys the cache knows take (`CredentialBook.footprint`).
    public var memoryFootprint: (entries: Int, bytes: Int, reserved: Int) {
        state.withReadLock { ($0.memory.count, $0.memory.bytes, $0.memory.reserved) }
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
