import Logging
import MixpeekAPI

/// The list cache's durable store, behind its memory tier. `CacheStore` (SQLite) is today's.
///
/// What a second backend (PostgreSQL, shared by several proxies) must guarantee:
/// - **Order.** Calls take effect in the order they were submitted: a `delete` submitted before
///   a `load` or `save` is seen by it, and a `save` submitted before a `delete` is removed by it.
///   The list cache submits under its lock and relies on that order for read-your-writes; a
///   backend that queues asynchronously must keep one queue (or equivalent ordering) per store.
/// - **Folded users.** `enqueueDelete(user:)` drops the lists of every spelling that
///   `UserIdentity.folded` maps to the same name, for every credential; `loadIndex` reports
///   users by folded name.
/// - **Submit, don't wait.** Every call returns at once (they are made on event loops and under
///   the cache's lock); completions run later on the store's own thread.
/// - **Failure is a miss.** A failed `load` is answered from the upstream; a failed `save` only
///   loses that entry. Nothing stored may be served to another credential.
public protocol ListStore: Sendable {
    /// Reads one entry, ordered after every delete and save submitted before.
    func load(_ key: CacheKey, completion: @escaping @Sendable (Result<CachedList?, any Error>) -> Void)
    /// Queues the write now, keeping its place among deletes, and returns at once.
    func save(_ entry: CachedList, for key: CacheKey, logger: Logger)
    /// Queues a delete of every list of `user` in every spelling (of everything when nil).
    func enqueueDelete(user: String?, completion: @escaping @Sendable (Result<Void, any Error>) -> Void)
    /// Hashes (`CacheIndex.hash`) of the stored keys and the folded users they belong to,
    /// read in order with the other calls, so a miss asks the store only when it may answer.
    func loadIndex(completion: @escaping @Sendable (Result<(hashes: Set<Int>, users: Set<String>), any Error>) -> Void)
    /// Entries and bytes stored; nil when the store is unusable.
    func footprint(completion: @escaping @Sendable (Result<(count: Int, bytes: Int)?, any Error>) -> Void)
    /// Queues a delete of every list kept under one credential fingerprint (the upstream
    /// refused it).
    func enqueueDelete(credential: String)
    /// The counters of earlier runs, and this run's to keep.
    func loadCounters() throws -> CacheCounters
    func saveCounters(_ counters: CacheCounters) throws
    /// Secrets revoked through the proxy (by `key_hash`, never the secret), kept across
    /// restarts: a revoked key never reads from the cache again.
    func loadRevocations() throws -> [Revocation]
    func saveRevocations(_ revocations: [Revocation], logger: Logger)
}

extension CacheStore: ListStore {}
