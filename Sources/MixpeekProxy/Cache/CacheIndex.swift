import GRDB
import MixpeekAPI

/// Which lists may be in the cache file, so a miss asks SQLite only when the answer can be
/// yes. Holds hashes, not keys: a collision costs one needless read, never a wrong answer.
///
/// Until the file's keys are read (in the background at start) everything may be on disk.
/// Keys stored since then are added as they are stored; deletes and evictions are not
/// removed, which again only costs a read.
///
/// Users are kept by folded name (`UserIdentity`), exactly: an invalidation skips the file's
/// delete only for a user none of whose spellings has anything in it, so a collision can never
/// leave a stale list behind.
struct CacheIndex {
    private var known: Set<Int>?
    private var storedWhileLoading: Set<Int> = []
    private var users: Set<String>?
    private var usersStoredWhileLoading: Set<String> = []

    static func hash(_ key: CacheKey) -> Int { key.hashValue }

    func mayContain(_ key: CacheKey) -> Bool {
        known?.contains(Self.hash(key)) ?? true
    }

    /// False only when the file certainly holds no list of any spelling of the user whose
    /// folded name is `folded`.
    func mayHaveLists(ofFolded folded: String) -> Bool {
        users?.contains(folded) ?? true
    }

    mutating func noteStored(_ key: CacheKey) {
        if known != nil {
            known!.insert(Self.hash(key))
            users!.insert(UserIdentity.folded(key.user))
        } else {
            storedWhileLoading.insert(Self.hash(key))
            usersStoredWhileLoading.insert(UserIdentity.folded(key.user))
        }
    }

    /// What the file held, read by a read queued before any store it has not seen.
    mutating func loaded(hashes: Set<Int>, users loadedUsers: Set<String>) {
        known = hashes.union(storedWhileLoading)
        users = loadedUsers.union(usersStoredWhileLoading)
        storedWhileLoading = []
        usersStoredWhileLoading = []
    }

    /// A delete of every list of every spelling of `folded` is queued: whatever was stored
    /// before it is gone, and what is stored after it adds the user again.
    mutating func deleted(folded: String) {
        users?.remove(folded)
    }

    /// After a purge of everything, nothing stored before is on disk.
    mutating func purged() {
        if known != nil {
            known = []
            users = []
        }
    }
}

extension CacheStore {
    /// Reads the key of every stored list, queued like any other read, and hands their
    /// hashes and the (folded) users they belong to to `completion` (on the store's queue).
    public func loadIndex(completion: @escaping @Sendable (Result<(hashes: Set<Int>, users: Set<String>), any Error>) -> Void) {
        queue.asyncRead { db in
            completion(Result {
                var hashes = Set<Int>()
                var users = Set<String>()
                let rows = try Row.fetchCursor(try db.get(), sql: "SELECT credential, user_email, include_revoked, user_fold FROM cache_entries")
                while let row = try rows.next() {
                    let key = CacheKey(credential: row[0], user: row[1], includeRevoked: row[2])
                    hashes.insert(CacheIndex.hash(key))
                    users.insert(row[3])
                }
                return (hashes, users)
            })
        }
    }
}
