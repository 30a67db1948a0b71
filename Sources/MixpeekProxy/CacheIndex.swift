import GRDB

/// Which lists may be in the cache file, so a miss asks SQLite only when the answer can be
/// yes. Holds hashes, not keys: a collision costs one needless read, never a wrong answer.
///
/// Until the file's keys are read (in the background at start) everything may be on disk.
/// Keys stored since then are added as they are stored; deletes and evictions are not
/// removed, which again only costs a read.
struct CacheIndex {
    private var known: Set<Int>?
    private var storedWhileLoading: Set<Int> = []

    static func hash(_ key: CacheKey) -> Int { key.hashValue }

    func mayContain(_ key: CacheKey) -> Bool {
        known?.contains(Self.hash(key)) ?? true
    }

    mutating func noteStored(_ key: CacheKey) {
        if known != nil {
            known!.insert(Self.hash(key))
        } else {
            storedWhileLoading.insert(Self.hash(key))
        }
    }

    /// The hashes read from the file (by a read queued before any store it has not seen).
    mutating func loaded(_ hashes: Set<Int>) {
        known = hashes.union(storedWhileLoading)
        storedWhileLoading = []
    }

    /// After a purge of everything, nothing stored before is on disk.
    mutating func purged() {
        if known != nil { known = [] }
    }
}

extension CacheStore {
    /// Reads the key of every stored list, queued like any other read, and hands their
    /// hashes to `completion` (on the store's queue).
    func loadKeyHashes(completion: @escaping @Sendable (Result<Set<Int>, any Error>) -> Void) {
        queue.asyncRead { db in
            completion(Result {
                var hashes = Set<Int>()
                let rows = try Row.fetchCursor(try db.get(), sql: "SELECT credential, user_email, include_revoked FROM cache_entries")
                while let row = try rows.next() {
                    hashes.insert(CacheIndex.hash(CacheKey(credential: row[0], user: row[1], includeRevoked: row[2])))
                }
                return hashes
            })
        }
    }
}
