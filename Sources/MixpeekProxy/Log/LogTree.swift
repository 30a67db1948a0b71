import Foundation
import GRDB
import MixpeekLog

/// The verifiable log's storage in `audit.sqlite`: every perfect subtree hash the records
/// complete (`log_subtrees`, what the hash tiles serve) and the signed checkpoints
/// (`log_checkpoints`), both append-only like the records, written in the records' transaction.
enum LogTree {
    /// The migration that adds the tree to a file and builds it from the records already there.
    static func migrate(_ db: Database) throws {
        try db.execute(sql: """
            CREATE TABLE log_subtrees (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
                PRIMARY KEY (level, idx)) WITHOUT ROWID;
            CREATE TABLE log_checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
            CREATE TRIGGER log_subtrees_no_update BEFORE UPDATE ON log_subtrees
            BEGIN SELECT RAISE(ABORT, 'the log tree is append-only'); END;
            CREATE TRIGGER log_subtrees_no_delete BEFORE DELETE ON log_subtrees
            BEGIN SELECT RAISE(ABORT, 'the log tree is append-only'); END;
            CREATE TRIGGER log_checkpoints_no_update BEFORE UPDATE ON log_checkpoints
            BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
            CREATE TRIGGER log_checkpoints_no_delete BEFORE DELETE ON log_checkpoints
            BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
            """)
        var frontier = Frontier()
        let records = try AuditRecord.fetchCursor(db, sql: "SELECT * FROM audit_records ORDER BY seq")
        while let record = try records.next() {
            try append(record, to: &frontier, db)
        }
    }

    /// Appends `record` as entry `frontier.size` (its seq must follow), storing the subtrees it
    /// completes.
    static func append(_ record: AuditRecord, to frontier: inout Frontier, _ db: Database) throws {
        guard record.seq == frontier.size + 1 else { throw LogTreeError.outOfOrder(seq: record.seq, size: frontier.size) }
        let subtrees = try frontier.append(MerkleTree.leafHash(record.logEntry))
        let statement = try db.cachedStatement(sql: "INSERT INTO log_subtrees (level, idx, hash) VALUES (?, ?, ?)")
        for subtree in subtrees {
            try statement.execute(arguments: [subtree.level, subtree.index, Data(subtree.hash.bytes)])
        }
    }

    /// The stored hash of the subtree at `level`, `index`.
    static func subtree(_ db: Database, level: Int, index: Int64) throws -> TreeHash {
        guard let data = try Data.fetchOne(
            db, sql: "SELECT hash FROM log_subtrees WHERE level = ? AND idx = ?", arguments: [level, index]),
            let hash = TreeHash(data) else {
            throw LogTreeError.missingSubtree(level: level, index: index)
        }
        return hash
    }

    static func reader(_ db: Database) -> SubtreeReader {
        { level, index in try subtree(db, level: level, index: index) }
    }

    /// The tree's right edge for the first `size` entries, read from storage.
    static func frontier(_ db: Database, size: Int64) throws -> Frontier {
        try Frontier(size: size, read: reader(db))
    }

    /// The entries the tree holds: one per subtree at level 0, indexed from 0 without gaps
    /// (`append` takes them in order), so the last index says it from the primary key without
    /// counting every entry at each start.
    static func size(_ db: Database) throws -> Int64 {
        try Int64.fetchOne(db, sql: "SELECT coalesce(max(idx) + 1, 0) FROM log_subtrees WHERE level = 0") ?? 0
    }

    /// The latest signed checkpoint, nil before the first.
    static func latestCheckpoint(_ db: Database) throws -> String? {
        try String.fetchOne(db, sql: "SELECT note FROM log_checkpoints ORDER BY size DESC LIMIT 1")
    }

    /// Signs and stores a checkpoint of the tree as `frontier` has it, unless one of that size
    /// exists.
    static func sign(_ frontier: Frontier, by signing: LogSigning, _ db: Database) throws {
        let checkpoint = Checkpoint(origin: signing.origin, size: frontier.size, root: try frontier.root())
        let note = try SignedNote.sign(checkpoint.text, by: [signing.signer])
        try db.cachedStatement(sql: "INSERT OR IGNORE INTO log_checkpoints (size, note) VALUES (?, ?)")
            .execute(arguments: [frontier.size, note])
    }

    /// The right edge of the tree: the last perfect subtree completed at each level, which is
    /// all an append and the root read. Kept in memory by the writer, so that a batch reads
    /// nothing back.
    struct Frontier: Sendable {
        var size: Int64 = 0
        var latest: [Int: (index: Int64, hash: TreeHash)] = [:]

        init() {}

        /// The right edge of the tree of `size` entries, read through `read`.
        init(size: Int64, read: SubtreeReader) throws {
            self.size = size
            var level = 0
            while size >> level > 0 {
                latest[level] = ((size >> level) - 1, try read(level, (size >> level) - 1))
                level += 1
            }
        }

        func read(_ level: Int, _ index: Int64) throws -> TreeHash {
            guard let subtree = latest[level], subtree.index == index else { throw LogTreeError.missingSubtree(level: level, index: index) }
            return subtree.hash
        }

        mutating func append(_ leaf: TreeHash) throws -> [(level: Int, index: Int64, hash: TreeHash)] {
            let before = self
            let subtrees = try MerkleTree.completedSubtrees(appending: size, leaf: leaf, read: before.read)
            for subtree in subtrees { latest[subtree.level] = (subtree.index, subtree.hash) }
            size += 1
            return subtrees
        }

        func root() throws -> TreeHash {
            try MerkleTree.treeHash(size: size, read: read)
        }
    }
}

enum LogTreeError: Error, CustomStringConvertible {
    case outOfOrder(seq: Int64, size: Int64)
    case missingSubtree(level: Int, index: Int64)
    case entryTooLarge(bytes: Int)

    var description: String {
        switch self {
        case .outOfOrder(let seq, let size): "record \(seq) does not follow the log's \(size) entries"
        case .missingSubtree(let level, let index): "the log has no subtree hash at level \(level), index \(index)"
        case .entryTooLarge(let bytes): "the audit record would be \(bytes) bytes, more than a log entry may hold (65,535)"
        }
    }
}
