import Foundation
import GRDB
import MixpeekLog

/// What a reader of `audit.sqlite` asks of the verifiable log: the latest checkpoint, tiles,
/// proofs, and whether the tree still extends a checkpoint saved earlier. Reads only, each in
/// one read transaction, so that a tile and the checkpoint it belongs to agree.
extension AuditLog {
    /// The latest signed checkpoint (a signed note), nil before the first.
    public func latestCheckpoint() throws -> String? {
        try queue.read { db in try LogTree.latestCheckpoint(db) }
    }

    /// The bytes of `tile` in the tree of the latest checkpoint; nil when that tree has no such
    /// tile (past its end).
    public func tile(_ tile: Tiles.Tile) throws -> [UInt8]? {
        try queue.read { db in
            guard let size = try Int64.fetchOne(db, sql: "SELECT max(size) FROM log_checkpoints") else { return nil }
            guard tile.level == nil else { return try Tiles.hashTile(tile, size: size, read: LogTree.reader(db)) }
            let start = tile.index * Int64(Tiles.width)
            guard start + Int64(tile.width) <= size else { return nil }
            let records = try AuditRecord.fetchAll(
                db, sql: "SELECT * FROM audit_records WHERE seq > ? AND seq <= ? ORDER BY seq", arguments: [start, start + Int64(tile.width)])
            return Tiles.entryBundle(records.map(\.logEntry))
        }
    }

    /// The entry at `index` (its record's `logEntry`) and its inclusion proof in the tree of
    /// `size` entries (default: the latest checkpoint's), with that tree's root.
    public func inclusion(index: Int64, size: Int64? = nil) throws -> LogInclusion? {
        try queue.read { db in
            guard let size = try size ?? Int64.fetchOne(db, sql: "SELECT max(size) FROM log_checkpoints"), index >= 0, index < size,
                  size <= (try LogTree.size(db)),
                  let record = try AuditRecord.fetchOne(db, sql: "SELECT * FROM audit_records WHERE seq = ?", arguments: [index + 1]) else {
                return nil
            }
            let read = LogTree.reader(db)
            return LogInclusion(
                index: index, size: size, entry: record.logEntry,
                proof: try MerkleTree.inclusionProof(index: index, size: size, read: read),
                root: try MerkleTree.treeHash(size: size, read: read))
        }
    }

    /// Whether today's log extends `saved` (a checkpoint kept from earlier): every record's
    /// entry is the leaf the tree stores for it, the records hash to `saved`'s root at its size
    /// and to the tree's root now, and the consistency proof from `saved` to now verifies.
    /// Names the first bad entry index when it can tell which.
    public func verifyLog(extending saved: Checkpoint) throws -> LogVerification {
        try queue.read { db in
            var rebuilt = LogTree.Frontier()
            var problem: (String, Int64?)?
            var oldRoot: TreeHash?
            let records = try AuditRecord.fetchCursor(db, sql: "SELECT * FROM audit_records ORDER BY seq")
            while problem == nil, let record = try records.next() {
                let index = rebuilt.size
                guard record.seq == index + 1 else {
                    problem = ("entry \(index): record seq \(index + 1) is missing", index)
                    break
                }
                let leaf = MerkleTree.leafHash(record.logEntry)
                let stored = try? LogTree.subtree(db, level: 0, index: index)
                if stored != leaf {
                    problem = (stored == nil ? "entry \(index): the tree has no leaf for record \(record.seq)"
                        : "entry \(index): record \(record.seq) is not the entry the tree holds (it was changed)", index)
                    break
                }
                _ = try rebuilt.append(leaf)
                if rebuilt.size == saved.size { oldRoot = try rebuilt.root() }
            }
            if saved.size == 0 { oldRoot = MerkleTree.emptyTreeHash }
            let size = rebuilt.size
            if problem == nil, size < saved.size {
                problem = ("entry \(size): the log has \(size) entries, fewer than the saved checkpoint's \(saved.size) (truncated)", size)
            }
            if problem == nil, let oldRoot, oldRoot != saved.root {
                problem = ("the first \(saved.size) entries do not hash to the saved checkpoint's root (history rewritten at or before entry \(saved.size - 1))", nil)
            }
            if problem == nil {
                let newRoot = try rebuilt.root()
                let proof = try MerkleTree.consistencyProof(old: saved.size, new: size, read: LogTree.reader(db))
                if !MerkleTree.verifyConsistency(old: saved.size, new: size, oldRoot: saved.root, newRoot: newRoot, proof: proof) {
                    problem = ("the tree of \(size) entries is not consistent with the saved checkpoint of \(saved.size)", nil)
                }
            }
            return LogVerification(entries: size, savedSize: saved.size, problem: problem?.0, badIndex: problem?.1)
        }
    }
}

/// An entry and its inclusion proof (`audit prove`).
public struct LogInclusion: Sendable {
    public var index: Int64
    public var size: Int64
    public var entry: [UInt8]
    public var proof: [TreeHash]
    public var root: TreeHash

    public var verifies: Bool {
        MerkleTree.verifyInclusion(leaf: MerkleTree.leafHash(entry), index: index, size: size, proof: proof, root: root)
    }
}

/// What `audit verify --checkpoint` found.
public struct LogVerification: Sendable {
    public var entries: Int64
    public var savedSize: Int64
    public var problem: String?
    /// The first entry found bad, when the check can tell.
    public var badIndex: Int64?
    public var isIntact: Bool { problem == nil }
}
