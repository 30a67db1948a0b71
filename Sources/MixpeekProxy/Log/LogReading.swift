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
            if let level = tile.level {
                // The tile's hashes in one range read, not one query each.
                let start = tile.index * Int64(Tiles.width)
                var hashes: [Int64: TreeHash] = [:]
                let rows = try Row.fetchCursor(db, sql: "SELECT idx, hash FROM log_subtrees WHERE level = ? AND idx >= ? AND idx < ?",
                                               arguments: [level * Tiles.height, start, start + Int64(tile.width)])
                while let row = try rows.next() {
                    if let hash = TreeHash(row["hash"] as Data) { hashes[row["idx"]] = hash }
                }
                return try Tiles.hashTile(tile, size: size) { level, index in
                    guard let hash = hashes[index] else { throw LogTreeError.missingSubtree(level: level, index: index) }
                    return hash
                }
            }
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

    /// `audit query --records`: each chain record from `seq` `after + 1` on, in order, as its
    /// log entry (the bytes the tree hashes), at most `limit`.
    public func entries(after: Int64 = 0, limit: Int? = nil, _ body: ([UInt8]) throws -> Void) throws {
        try queue.read { db in
            let records = try AuditRecord.fetchCursor(
                db, sql: "SELECT * FROM audit_records WHERE seq > ? ORDER BY seq LIMIT ?", arguments: [after, limit ?? -1])
            while let record = try records.next() { try body(record.logEntry) }
        }
    }

    /// Whether today's log extends `saved` (a checkpoint kept from earlier): every record's
    /// entry is the leaf the tree stores for it, the records hash to `saved`'s root at its size
    /// and to the tree's root now, and the consistency proof from `saved` to now verifies.
    /// Names the first bad entry index when it can tell which.
    public func verifyLog(extending saved: Checkpoint, verifier: SignedNote.Verifier? = nil) throws -> LogVerification {
        try queue.read { db in
            let notes = try String.fetchAll(db, sql: "SELECT note FROM log_checkpoints WHERE size <= ? ORDER BY size", arguments: [saved.size])
            var check = LogCheck(saved: saved, signed: LogCheck.verified(notes, by: verifier))
            let records = try AuditRecord.fetchCursor(db, sql: "SELECT * FROM audit_records ORDER BY seq")
            while let record = try records.next() {
                let stored = try? LogTree.subtree(db, level: 0, index: check.size)
                if !(try check.next(record, storedLeaf: stored)) { break }
            }
            return try check.finish(proof: check.needsProof
                ? try MerkleTree.consistencyProof(old: saved.size, new: check.size, read: LogTree.reader(db)) : [])
        }
    }
}

/// The checks of `audit verify --checkpoint`, for any log's records and stored tree (the
/// lone proxy's `audit.sqlite`, the group's PostgreSQL): fed each record in `seq` order with
/// the leaf the tree stores for it, then the consistency proof from the saved size to the
/// records' size.
///
/// `signed`, the other checkpoints the log keeps whose signature verifies, tells where a
/// rewritten history starts: after the last whose root the records still make, at or before
/// the first whose they do not (one a batch, so usually one entry).
struct LogCheck {
    let saved: Checkpoint
    private var rebuilt = LogTree.Frontier()
    private var problem: (String, Int64?)?
    private var oldRoot: TreeHash?
    private var signed: [Checkpoint]
    private var lastMatching: Int64 = 0
    private var firstDiffering: Int64?

    init(saved: Checkpoint, signed: [Checkpoint] = []) {
        self.saved = saved
        self.signed = signed.filter { $0.origin == saved.origin && $0.size > 0 }.sorted { $0.size > $1.size }
        if saved.size == 0 { oldRoot = MerkleTree.emptyTreeHash }
    }

    /// The signed checkpoints of the log whose signature `verifier` checks (others are dropped).
    static func verified(_ notes: [String], by verifier: SignedNote.Verifier?) -> [Checkpoint] {
        guard let verifier else { return [] }
        return notes.compactMap { note in
            guard let opened = try? SignedNote.open(note, verifiers: [verifier]), opened.verifiedBy.contains(verifier.name) else { return nil }
            return Checkpoint(text: opened.text)
        }
    }

    /// The entries checked so far: the index the next record must have.
    var size: Int64 { rebuilt.size }

    /// Checks `record` as the next entry; false once a problem is found (stop feeding).
    mutating func next(_ record: AuditRecord, storedLeaf stored: TreeHash?) throws -> Bool {
        guard problem == nil else { return false }
        let index = rebuilt.size
        guard record.seq == index + 1 else {
            problem = ("entry \(index): record seq \(index + 1) is missing", index)
            return false
        }
        let leaf = MerkleTree.leafHash(record.logEntry)
        if stored != leaf {
            problem = (stored == nil ? "entry \(index): the tree has no leaf for record \(record.seq)"
                : "entry \(index): record \(record.seq) is not the entry the tree holds (it was changed)", index)
            return false
        }
        _ = try rebuilt.append(leaf)
        if rebuilt.size == saved.size { oldRoot = try rebuilt.root() }
        while firstDiffering == nil, let next = signed.last, next.size <= rebuilt.size {
            signed.removeLast()
            guard next.size == rebuilt.size else { continue }
            if try rebuilt.root() == next.root { lastMatching = next.size } else { firstDiffering = next.size }
        }
        if firstDiffering == nil, let oldRoot, oldRoot != saved.root { firstDiffering = saved.size }
        return true
    }

    /// Whether `finish` needs the consistency proof from `saved.size` to `size`.
    var needsProof: Bool { finding == nil }

    /// The problem the records show without the proof.
    private var finding: (String, Int64?)? {
        if let problem { return problem }
        if size < saved.size {
            return ("entry \(size): the log has \(size) entries, fewer than the saved checkpoint's \(saved.size) (truncated)", size)
        }
        if let oldRoot, oldRoot != saved.root {
            let end = firstDiffering ?? saved.size
            if end - lastMatching == 1 {
                return ("entry \(lastMatching): rewritten, with the tree recomputed (the first \(lastMatching) entries make the root of the log's signed checkpoint of that size, the first \(end) do not)", lastMatching)
            }
            return ("the first \(saved.size) entries do not hash to the saved checkpoint's root: history rewritten in entries \(lastMatching) to \(end - 1)", lastMatching)
        }
        return nil
    }

    func finish(proof: [TreeHash]) throws -> LogVerification {
        var found = finding
        if found == nil {
            let newRoot = try rebuilt.root()
            if !MerkleTree.verifyConsistency(old: saved.size, new: size, oldRoot: saved.root, newRoot: newRoot, proof: proof) {
                found = ("the tree of \(size) entries is not consistent with the saved checkpoint of \(saved.size)", nil)
            }
        }
        return LogVerification(entries: size, savedSize: saved.size, problem: found?.0, badIndex: found?.1)
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
