import Foundation
import GRDB
import Logging
import MixpeekAPI
import NIOConcurrencyHelpers
import NIOCore

/// One cached list response.
public struct CachedList: Sendable, Equatable {
    public var status: Int
    public var contentType: String?
    public var etag: String?
    public var lastModified: String?
    public var body: ByteBuffer
    /// Seconds since 1970 when the upstream's answer was stored.
    public var storedAt: Double
    /// The upstream's bound on its freshness in seconds (`s-maxage` or `max-age`), nil when it
    /// set none (`Policy.storage`).
    public var lifetime: Double? = nil
    /// False when the upstream forbade serving it stale.
    public var mayServeStale = true

    /// Seconds from `storedAt` it is served as a HIT: the TTL, or less if the upstream said so.
    @inline(__always)
    public func freshness(ttl: Double) -> Double {
        guard let lifetime else { return ttl }
        return Swift.min(ttl, lifetime)
    }
}

/// Which cached list: a credential never receives a body fetched with another one.
public struct CacheKey: Hashable, Sendable {
    /// SHA-256 of the bearer token; the token itself is never stored.
    public var credential: String
    public var user: String
    public var includeRevoked: Bool

    public init(credential: String, user: String, includeRevoked: Bool) {
        self.credential = credential
        self.user = user
        self.includeRevoked = includeRevoked
    }

    /// The user as the upstream sees it, as bytes: `é@x` and `e\u{301}@x` are two users (two
    /// paths) with two lists, though Swift finds the two strings equal.
    public static func == (lhs: CacheKey, rhs: CacheKey) -> Bool {
        lhs.includeRevoked == rhs.includeRevoked && lhs.credential == rhs.credential && ExactText.same(lhs.user, rhs.user)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(credential)
        hasher.combine(ExactText(user))
        hasher.combine(includeRevoked)
    }
}

/// The cache's running totals, kept across restarts.
public struct CacheCounters: Sendable, Equatable, Codable {
    public var hits = 0
    public var misses = 0
    public var stale = 0
    public var bypass = 0
    public var coalesced = 0
    public var upstreamListCalls = 0

    /// List calls answered without an upstream call of their own: hits, and requests that
    /// joined another's fetch. A STALE serve is not one: it came after a failed upstream call,
    /// already counted as a miss or a coalesced wait.
    public var saved: Int { hits + coalesced }
    /// The share of cacheable lists (bypasses aside) that cost no upstream call.
    public var hitRatio: Double {
        let lists = hits + misses + coalesced
        return lists == 0 ? 0 : Double(saved) / Double(lists)
    }

    static func + (a: CacheCounters, b: CacheCounters) -> CacheCounters {
        CacheCounters(
            hits: a.hits + b.hits, misses: a.misses + b.misses, stale: a.stale + b.stale,
            bypass: a.bypass + b.bypass, coalesced: a.coalesced + b.coalesced,
            upstreamListCalls: a.upstreamListCalls + b.upstreamListCalls)
    }
}

/// The SQLite side of the list cache: its own file under the data dir, WAL, mode 0600.
///
/// Every call goes through one `DatabaseQueue`, so reads, writes and deletes run in the order
/// they were submitted: a delete submitted before a read is always seen by that read. Once
/// the file is found damaged no call reaches it, and a delete has nothing left to hide.
public final class CacheStore: Sendable {
    public struct Bounds: Sendable {
        public var maxEntries: Int
        public var maxBytes: Int
        public init(maxEntries: Int, maxBytes: Int) {
            self.maxEntries = maxEntries
            self.maxBytes = maxBytes
        }
    }

    let queue: DatabaseQueue
    private let path: String
    private let bounds: Bounds
    /// Entries and body bytes in the file, kept up to date by every write so that enforcing
    /// the bounds does not scan the table (a scan of 100k 4 KiB bodies took tens of
    /// milliseconds on every store). Nil until first needed, and again after a failed write.
    /// Only touched on the queue.
    private let totals = NIOLockedValueBox<(count: Int, bytes: Int)?>(nil)
    private let logger: Logger
    /// Set when the check in the background finds the file damaged: from then on no list is
    /// read from or stored in it, and the next start moves it aside.
    private let damaged = NIOLockedValueBox(false)
    private let backgroundCheck = DispatchGroup()

    /// A file up to this size is checked whole before the store is used (tens of milliseconds
    /// at most). A larger one is checked in the background once open, so that start does not
    /// wait for a read of every page (0.3 s for 100k lists).
    public static let checkBeforeUseBytes = 32 << 20

    /// Opens the cache file. A file that cannot be opened, fails its integrity check, or was
    /// found damaged by the background check of an earlier run is moved aside
    /// (`cache.sqlite.corrupt-<time>`) and replaced by an empty one.
    public static func open(path: String, bounds: Bounds, logger: Logger, checkBeforeUse: Int = checkBeforeUseBytes) throws -> CacheStore {
        if FileManager.default.fileExists(atPath: damageMark(path)) {
            moveAside(path, problem: "found damaged while the proxy last ran", logger: logger)
        }
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        do {
            let store = try CacheStore(path: path, bounds: bounds, logger: logger, check: size <= checkBeforeUse)
            if size > checkBeforeUse { store.checkInBackground() }
            return store
        } catch {
            moveAside(path, problem: "\(error)", logger: logger)
            return try CacheStore(path: path, bounds: bounds, logger: logger, check: false)
        }
    }

    private init(path: String, bounds: Bounds, logger: Logger, check: Bool) throws {
        try DataFiles.createPrivateFile(at: path)
        var configuration = Configuration()
        configuration.journalMode = .wal
        configuration.busyMode = .timeout(5)
        configuration.label = "mixpeek-proxy.cache"
        queue = try DatabaseQueue(path: path, configuration: configuration)
        self.path = path
        self.bounds = bounds
        self.logger = logger
        if check, let problem = try queue.read(Self.integrityProblem) {
            throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: problem)
        }
        try Self.migrator.migrate(queue)
    }

    /// What `PRAGMA quick_check` finds wrong with the file, or nil.
    private static func integrityProblem(_ db: Database) throws -> String? {
        let check = try String.fetchOne(db, sql: "PRAGMA quick_check") ?? "missing"
        return check == "ok" ? nil : check
    }

    /// The file beside the cache file that says it was found damaged.
    private static func damageMark(_ path: String) -> String { path + ".damaged" }

    private static func moveAside(_ path: String, problem: String, logger: Logger) {
        let aside = path + ".corrupt-\(Int(Date().timeIntervalSince1970))"
        logger.error("cache file is unreadable; moving it aside and starting empty", metadata: [
            "path": "\(path)", "moved_to": "\(aside)", "error": "\(problem)",
        ])
        try? FileManager.default.moveItem(atPath: path, toPath: aside)
        for suffix in ["-wal", "-shm", ".damaged"] {
            try? FileManager.default.removeItem(atPath: path + suffix)
        }
    }

    /// Checks the whole file on a connection and a thread of its own, off the queue that every
    /// cache call waits on. Until it ends, a damaged page shows only as a failed read, which
    /// the list cache answers from the upstream. The file is not replaced while in use: its
    /// connection cannot be closed safely under calls in flight, so the next start does it.
    private func checkInBackground() {
        backgroundCheck.enter()
        DispatchQueue.global(qos: .utility).async { [self] in
            defer { backgroundCheck.leave() }
            let problem: String?
            do {
                var configuration = Configuration()
                configuration.readonly = true
                configuration.label = "mixpeek-proxy.cache-check"
                problem = try DatabaseQueue(path: path, configuration: configuration).read(Self.integrityProblem)
            } catch {
                problem = "\(error)"
            }
            guard let problem else { return }
            damaged.withLockedValue { $0 = true }
            try? DataFiles.createPrivateFile(at: Self.damageMark(path))
            logger.error("cache file is damaged; lists are no longer read from or stored in it, and the next start moves it aside",
                         metadata: ["path": "\(path)", "problem": "\(problem)"])
        }
    }

    /// Returns once the check in the background (if any) has ended.
    func backgroundCheckFinished() async {
        await withCheckedContinuation { continuation in
            backgroundCheck.notify(queue: .global()) { continuation.resume() }
        }
    }

    private var isDamaged: Bool { damaged.withLockedValue { $0 } }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "cache_entries") { t in
                t.column("credential", .text).notNull()
                t.column("user_email", .text).notNull()
                t.column("include_revoked", .boolean).notNull()
                t.column("status", .integer).notNull()
                t.column("content_type", .text)
                t.column("etag", .text)
                t.column("last_modified", .text)
                t.column("body", .blob).notNull()
                t.column("stored_at", .double).notNull()
                t.primaryKey(["credential", "user_email", "include_revoked"])
            }
            try db.create(index: "cache_entries_user", on: "cache_entries", columns: ["user_email"])
            try db.create(index: "cache_entries_stored_at", on: "cache_entries", columns: ["stored_at"])
            try db.create(table: "cache_counters") { t in
                t.primaryKey("id", .integer)
                t.column("counters", .text).notNull()
            }
        }
        // Invalidation drops every spelling of a user (`UserIdentity`): lists are found by the
        // folded address, kept beside the spelling that was sent.
        migrator.registerMigration("v2-user-fold") { db in
            db.add(function: .foldUser())
            try db.alter(table: "cache_entries") { t in t.add(column: "user_fold", .text) }
            try db.execute(sql: "UPDATE cache_entries SET user_fold = mixpeek_fold_user(user_email)")
            try db.create(index: "cache_entries_user_fold", on: "cache_entries", columns: ["user_fold"])
            try db.drop(index: "cache_entries_user")
        }
        // RFC 9111's freshness bounds and stale rules from the upstream (`Policy.storage`).
        migrator.registerMigration("v3-upstream-directives") { db in
            try db.alter(table: "cache_entries") { t in
                t.add(column: "lifetime", .double)
                t.add(column: "may_serve_stale", .boolean).notNull().defaults(to: true)
            }
        }
        // Keys revoked through the proxy, by the hash of their secret (`Credentials`).
        migrator.registerMigration("v4-revocations") { db in
            try db.create(table: "revoked_credentials") { t in
                t.primaryKey("key_hash", .text)
                t.column("key_prefix", .text)
                t.column("name", .text).notNull()
                t.column("user_email", .text).notNull()
                t.column("via", .text).notNull()
                t.column("revoked_at", .double).notNull()
            }
        }
        return migrator
    }

    public func load(_ key: CacheKey) async throws -> CachedList? {
        try await withCheckedThrowingContinuation { continuation in
            load(key) { continuation.resume(with: $0) }
        }
    }

    /// Reads one entry, queued after every write submitted before; `completion` runs on the
    /// store's queue.
    public func load(_ key: CacheKey, completion: @escaping @Sendable (Result<CachedList?, any Error>) -> Void) {
        guard !isDamaged else { return completion(.success(nil)) }
        queue.asyncRead { db in
            completion(Result {
                try Row.fetchOne(
                    try db.get(),
                    sql: "SELECT * FROM cache_entries WHERE credential = ? AND user_email = ? AND include_revoked = ?",
                    arguments: [key.credential, key.user, key.includeRevoked]
                ).map(Self.entry(from:))
            })
        }
    }

    /// Queues the write now (so it keeps its place among deletes) and returns at once.
    public func save(_ entry: CachedList, for key: CacheKey, logger: Logger) {
        guard !isDamaged else { return }
        queue.asyncWrite({ db in
            var totals = try self.currentTotals(db)
            let replaced = try Int.fetchOne(
                db, sql: "SELECT length(body) FROM cache_entries WHERE credential = ? AND user_email = ? AND include_revoked = ?",
                arguments: [key.credential, key.user, key.includeRevoked])
            try db.execute(
                sql: """
                    INSERT OR REPLACE INTO cache_entries
                    (credential, user_email, include_revoked, status, content_type, etag, last_modified, body, stored_at, user_fold,
                     lifetime, may_serve_stale)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [key.credential, key.user, key.includeRevoked, entry.status, entry.contentType,
                            entry.etag, entry.lastModified, Data(buffer: entry.body), entry.storedAt, UserIdentity.folded(key.user),
                            entry.lifetime, entry.mayServeStale])
            totals.count += replaced == nil ? 1 : 0
            totals.bytes += entry.body.readableBytes - (replaced ?? 0)
            try self.evictBeyondBounds(db, totals: totals, keeping: db.lastInsertedRowID)
        }, completion: { _, result in
            if case .failure(let error) = result {
                self.totals.withLockedValue { $0 = nil }
                logger.warning("could not store a list in the cache file", metadata: ["error": "\(error)"])
            }
        })
    }

    /// Deletes every entry of `user` in every spelling (`UserIdentity`) and for every
    /// credential, or every entry when `user` is nil.
    public func delete(user: String?) async throws {
        try await withCheckedThrowingContinuation { continuation in
            enqueueDelete(user: user) { continuation.resume(with: $0) }
        }
    }

    /// Queues the delete now, so it lands before any read or write submitted after this call.
    public func enqueueDelete(user: String?, completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        guard !isDamaged else { return completion(.success(())) }
        queue.asyncWrite({ db in
            if let user {
                let sizes = try Int.fetchAll(
                    db, sql: "DELETE FROM cache_entries WHERE user_fold = ? RETURNING length(body)", arguments: [UserIdentity.folded(user)])
                self.totals.withLockedValue { totals in
                    totals = totals.map { ($0.count - sizes.count, $0.bytes - sizes.reduce(0, +)) }
                }
            } else {
                try db.execute(sql: "DELETE FROM cache_entries")
                self.totals.withLockedValue { $0 = (0, 0) }
            }
        }, completion: { _, result in
            if case .failure = result { self.totals.withLockedValue { $0 = nil } }
            completion(result)
        })
    }

    /// The file's totals: kept ones, or counted once.
    private func currentTotals(_ db: Database) throws -> (count: Int, bytes: Int) {
        if let known = totals.withLockedValue({ $0 }) { return known }
        let row = try Row.fetchOne(db, sql: "SELECT count(*) AS n, total(length(body)) AS bytes FROM cache_entries")
        return (row?["n"] ?? 0, Int(row?["bytes"] as Double? ?? 0))
    }

    /// Deletes the oldest entries while the file is over a bound. Should that reach `newest`,
    /// the entry just stored, the totals were off (another process emptied the file, say
    /// `cache purge`): they are counted again before anything is deleted.
    private func evictBeyondBounds(_ db: Database, totals start: (count: Int, bytes: Int), keeping newest: Int64) throws {
        var (count, bytes) = start
        var recounted = false
        while count > bounds.maxEntries || bytes > bounds.maxBytes {
            let excess = max(count - bounds.maxEntries, 1)
            let victims = try Row.fetchAll(
                db, sql: "SELECT rowid, length(body) AS size FROM cache_entries ORDER BY stored_at LIMIT ?", arguments: [excess])
            if !recounted, victims.isEmpty || victims.contains(where: { $0["rowid"] as Int64 == newest }) {
                recounted = true
                totals.withLockedValue { $0 = nil }
                (count, bytes) = try currentTotals(db)
                continue
            }
            guard !victims.isEmpty else { break }
            for victim in victims {
                try db.execute(sql: "DELETE FROM cache_entries WHERE rowid = ?", arguments: [victim["rowid"] as Int64])
                count -= 1
                bytes -= victim["size"] as Int? ?? 0
            }
        }
        totals.withLockedValue { $0 = (count, bytes) }
    }

    /// Entries and bytes in the file from the running totals, counted once (on the queue,
    /// in order with the writes) when not known yet; nil once the file was found damaged.
    public func footprint(completion: @escaping @Sendable (Result<(count: Int, bytes: Int)?, any Error>) -> Void) {
        guard !isDamaged else { return completion(.success(nil)) }
        if let known = totals.withLockedValue({ $0 }) { return completion(.success(known)) }
        queue.asyncRead { db in
            completion(Result {
                let counted = try self.currentTotals(db.get())
                self.totals.withLockedValue { totals in
                    if totals == nil { totals = counted }
                }
                return counted
            })
        }
    }

    /// Entries and bytes on disk.
    public func size() throws -> (entries: Int, bytes: Int) {
        try queue.read { db in
            let row = try Row.fetchOne(db, sql: "SELECT count(*) AS n, total(length(body)) AS bytes FROM cache_entries")
            return (row?["n"] ?? 0, Int(row?["bytes"] as Double? ?? 0))
        }
    }

    public func loadCounters() throws -> CacheCounters {
        try queue.read { db in
            guard let text = try String.fetchOne(db, sql: "SELECT counters FROM cache_counters WHERE id = 1") else {
                return CacheCounters()
            }
            return (try? JSONDecoder().decode(CacheCounters.self, from: Data(text.utf8))) ?? CacheCounters()
        }
    }

    public func saveCounters(_ counters: CacheCounters) throws {
        guard !isDamaged else { return }
        let text = String(decoding: try JSONEncoder().encode(counters), as: UTF8.self)
        try queue.write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO cache_counters (id, counters) VALUES (1, ?)", arguments: [text])
        }
    }

    public func enqueueDelete(credential: String) {
        guard !isDamaged else { return }
        queue.asyncWrite({ db in
            let sizes = try Int.fetchAll(db, sql: "DELETE FROM cache_entries WHERE credential = ? RETURNING length(body)", arguments: [credential])
            self.totals.withLockedValue { totals in
                totals = totals.map { ($0.count - sizes.count, $0.bytes - sizes.reduce(0, +)) }
            }
        }, completion: { _, result in
            if case .failure = result { self.totals.withLockedValue { $0 = nil } }
        })
    }

    public func loadRevocations() throws -> [Revocation] {
        try queue.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM revoked_credentials ORDER BY revoked_at").map { row in
                Revocation(keyHash: row["key_hash"], keyPrefix: row["key_prefix"], name: row["name"], user: row["user_email"],
                           via: row["via"], at: row["revoked_at"])
            }
        }
    }

    public func saveRevocations(_ revocations: [Revocation], logger: Logger) {
        guard !isDamaged, !revocations.isEmpty else { return }
        queue.asyncWrite({ db in
            for revocation in revocations {
                try db.execute(sql: """
                    INSERT OR IGNORE INTO revoked_credentials (key_hash, key_prefix, name, user_email, via, revoked_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [revocation.keyHash, revocation.keyPrefix, revocation.name, revocation.user, revocation.via, revocation.at])
            }
        }, completion: { _, result in
            if case .failure(let error) = result {
                logger.error("could not keep a revocation in the cache file; it holds until restart", metadata: ["error": "\(error)"])
            }
        })
    }

    private static func entry(from row: Row) -> CachedList {
        let body: Data = row["body"]
        return CachedList(
            status: row["status"], contentType: row["content_type"], etag: row["etag"],
            lastModified: row["last_modified"], body: ByteBuffer(bytes: body), storedAt: row["stored_at"],
            lifetime: row["lifetime"], mayServeStale: row["may_serve_stale"])
    }
}
