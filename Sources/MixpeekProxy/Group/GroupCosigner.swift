import Foundation
import Logging
import MixpeekLog
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO

/// A member's part in the group's one verifiable log (CONTRACT §5, issue 24 §6): it signs a
/// checkpoint of the central tree only after checking that the tree extends the last one it
/// signed, which it keeps in its own data dir (`group-log.checkpoint`, its witness state).
///
/// - After each of its own outcomes (`cover`), so that a mutation is answered only once a
///   checkpoint this member signed covers it, and every `roundInterval` for the others'
///   appends: each member's signature is on the tree within a round of the last mutation.
/// - Each round reads the tree's size and the subtree hashes of its root and of the
///   consistency proof from the saved checkpoint (one query), and checks them: a tree that is
///   shorter, has another root at the same size, or does not extend the saved one was
///   rewritten by whoever controls the database. The member then fails closed: it refuses
///   every mutation (`problem`, 503) and says so on the status page and in `/metrics`, until an
///   operator has looked (restarting does not clear it: the saved checkpoint stays).
/// - Its signature goes to `mixpeek_log_checkpoints`; the checkpoint it serves is its own
///   latest with every member's signature on that same text.
///
/// Rounds run one at a time; waiters that arrive during one are covered by the next.
public final class GroupCosigner: Sendable {
    public static let stateFile = "group-log.checkpoint"
    static let roundInterval: Duration = .milliseconds(500)

    let signing: LogSigning
    private let proxyID: String
    private let link: GroupLink
    private let statePath: String
    private let logger: Logger

    private struct State {
        /// The last checkpoint this member signed, and its signed note.
        var signed: Checkpoint?
        var note: String?
        var problem: String?
        var running = false
        /// The right edge of the tree of `signed`, once a round has read and checked it.
        var frontier: LogTree.Frontier?
        /// The newest signature not yet in `mixpeek_log_checkpoints`, and whether one is going in.
        var unpublished: (checkpoint: Checkpoint, line: String)?
        var publishing = false
        var waiters: [(seq: Int64, continuation: CheckedContinuation<Bool, Never>)] = []
    }
    private let state = NIOLockedValueBox(State())

    init(signing: LogSigning, proxyID: String, database: PostgresURL, dataDir: String, logger: Logger) {
        self.signing = signing
        self.proxyID = proxyID
        self.logger = logger
        statePath = URL(fileURLWithPath: dataDir).appendingPathComponent(Self.stateFile).path
        // The signature rows need no synchronous commit: the checkpoint a member signed is
        // durable in its data dir first, and a row lost in a crash is signed again next round.
        link = GroupLink(url: database, applicationName: "mixpeek-proxy \(proxyID) log", setup: ["SET synchronous_commit = off"], logger: logger)
        do {
            if let (checkpoint, note) = try Self.readState(statePath, signing: signing) {
                state.withLockedValue { $0.signed = checkpoint; $0.note = note }
            }
        } catch {
            fail("\(error)")
        }
    }

    public var verifierKey: String { signing.verifierKey }

    /// Why this member refuses mutations, or nil while the log extends what it signed.
    public var problem: String? { state.withLockedValue { $0.problem } }

    /// The size of the last checkpoint this member signed.
    var signedSize: Int64 { state.withLockedValue { $0.signed?.size ?? 0 } }

    /// Returns once a checkpoint this member signed covers record `seq` (true), or false when
    /// none could be signed (the database failed, or the log is not what this member signed).
    func cover(_ seq: Int64) async -> Bool {
        await withCheckedContinuation { continuation in
            let start = state.withLockedValue { state -> Bool? in
                if state.problem != nil { return nil }
                if (state.signed?.size ?? 0) >= seq { return nil }
                state.waiters.append((seq, continuation))
                defer { state.running = true }
                return !state.running
            }
            switch start {
            case nil: continuation.resume(returning: problem == nil)
            case true?: Task { await self.drive() }
            case false?: break
            }
        }
    }

    /// Rounds every `roundInterval` until cancelled: the others' appends get this member's
    /// signature, and a rewritten tree is found within a round.
    func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: Self.roundInterval)
            let start = state.withLockedValue { state -> Bool in
                guard state.problem == nil, !state.running else { return false }
                state.running = true
                return true
            }
            if start { await drive() }
        }
        await link.close()
    }

    /// Runs rounds while waiters remain that the last round did not cover.
    private func drive() async {
        while true {
            var failed = false
            do {
                try await round()
            } catch let error as LogTreeError {
                // A subtree the tree must hold is not there: rows were removed, not delayed.
                failed = true
                fail("the group's log tree is missing what it held: \(error)")
            } catch {
                failed = true
                logger.warning("group log: no checkpoint could be signed", metadata: ["error": "\(GroupError.describe(error))"])
            }
            let (covered, uncovered, again) = state.withLockedValue { state -> ([CheckedContinuation<Bool, Never>], [CheckedContinuation<Bool, Never>], Bool) in
                let size = state.signed?.size ?? 0
                let done = state.waiters.filter { $0.seq <= size }.map(\.continuation)
                var left = state.waiters.filter { $0.seq > size }
                var refused: [CheckedContinuation<Bool, Never>] = []
                if failed || state.problem != nil {
                    refused = left.map(\.continuation)
                    left = []
                }
                state.waiters = left
                if left.isEmpty { state.running = false }
                return (done, refused, !left.isEmpty)
            }
            for continuation in covered { continuation.resume(returning: true) }
            for continuation in uncovered { continuation.resume(returning: false) }
            if !again { return }
        }
    }

    /// Reads the tree, checks that it extends the saved checkpoint, and signs it if it grew.
    ///
    /// Once this member knows the right edge (`Frontier`) of the tree it signed, a round is one
    /// query: the tree's size, the leaves since, and the stored right edge now. The member
    /// appends the new leaves to its own edge and finds the stored one equal, or the tree was
    /// rewritten (the edge's subtrees cover every entry). The first round after a start checks
    /// the saved checkpoint by a consistency proof instead, and takes the stored edge.
    private func round() async throws {
        let (saved, known) = state.withLockedValue { ($0.signed, $0.frontier) }
        let old = saved?.size ?? 0
        var frontier: LogTree.Frontier
        if let known {
            let (size, leaves, stored) = try await link.run { connection in
                try await GroupLogTree.edge(after: old, connection, logger: self.logger)
            }
            if size < old {
                return fail("the group's log has \(size) entries, fewer than the \(old) of the checkpoint this proxy signed (truncated or replaced)")
            }
            frontier = known
            for index in old..<size {
                guard let leaf = leaves[index] else { throw LogTreeError.missingSubtree(level: 0, index: index) }
                _ = try frontier.append(leaf)
            }
            if let level = GroupLogTree.firstDifference(frontier, stored) {
                return fail("the group's tree of \(size) entries does not extend the checkpoint of \(old) this proxy signed (history rewritten: its subtree at level \(level) differs)")
            }
            if size == old { return }
        } else {
            let (size, root, proof, stored) = try await link.run { connection in
                let size = try await GroupLogTree.size(connection, logger: self.logger)
                guard size >= old else { return (size, MerkleTree.emptyTreeHash, [TreeHash](), LogTree.Frontier()) }
                return try await GroupLogTree.reading(connection, logger: self.logger) { read in
                    (size, try MerkleTree.treeHash(size: size, read: read),
                     old > 0 && old < size ? try MerkleTree.consistencyProof(old: old, new: size, read: read) : [],
                     try LogTree.Frontier(size: size, read: read))
                }
            }
            if let saved {
                if size < old {
                    return fail("the group's log has \(size) entries, fewer than the \(old) of the checkpoint this proxy signed (truncated or replaced)")
                }
                if size == old, root != saved.root {
                    return fail("the group's tree of \(size) entries no longer has the root this proxy signed (history rewritten)")
                }
                if old > 0, old < size, !MerkleTree.verifyConsistency(old: old, new: size, oldRoot: saved.root, newRoot: root, proof: proof) {
                    return fail("the group's tree of \(size) entries does not extend the checkpoint of \(old) this proxy signed (history rewritten)")
                }
            }
            guard try stored.root() == root else { throw LogTreeError.missingSubtree(level: 0, index: size) }
            frontier = stored
            if let saved, size == saved.size {
                state.withLockedValue { $0.frontier = frontier }
                return
            }
        }
        let checkpoint = Checkpoint(origin: signing.origin, size: frontier.size, root: try frontier.root())
        let line = try signing.signer.signatureLine(for: checkpoint.text)
        let note = checkpoint.text + "\n" + line
        // Kept (synced) before anything is answered under it or it is published: this member
        // never signs a tree that does not extend it.
        try Self.writeState(note, to: statePath)
        let publish = state.withLockedValue { state -> Bool in
            state.signed = checkpoint
            state.note = note
            state.frontier = frontier
            state.unpublished = (checkpoint, line)
            defer { state.publishing = true }
            return !state.publishing
        }
        if publish { Task { await self.publish() } }
    }

    /// Inserts this member's latest signature into `mixpeek_log_checkpoints`, for the others'
    /// served checkpoints, off the answers' way (their cover is the synced file above): one
    /// insert at a time, the newest pending one next.
    private func publish() async {
        while true {
            guard let (checkpoint, line) = state.withLockedValue({ state -> (Checkpoint, String)? in
                defer { state.unpublished = nil }
                if state.unpublished == nil { state.publishing = false }
                return state.unpublished
            }) else { return }
            let (verifierKey, proxyID) = (signing.verifierKey, self.proxyID)
            do {
                try await link.run { connection in
                    _ = try await connection.query("""
                        INSERT INTO mixpeek_log_checkpoints (verifier_key, size, root, body, signature, proxy_id)
                        VALUES (\(verifierKey), \(checkpoint.size), \(checkpoint.root.base64), \(checkpoint.text), \(line), \(proxyID))
                        ON CONFLICT DO NOTHING
                        """, logger: self.logger)
                }
            } catch {
                logger.warning("group log: this member's signature could not be published", metadata: [
                    "size": "\(checkpoint.size)", "error": "\(GroupError.describe(error))"])
            }
        }
    }

    private func fail(_ problem: String) {
        let first = state.withLockedValue { state -> Bool in
            defer { if state.problem == nil { state.problem = problem } }
            return state.problem == nil
        }
        if first {
            logger.critical("group log: the audit log is not the one this proxy signed; mutations are refused", metadata: [
                "problem": "\(problem)", "saved_checkpoint": "\(statePath)"])
        }
    }

    // MARK: Serving

    /// This member's latest checkpoint with every member's signature on it; nil before its first.
    func servedCheckpoint() async throws -> String? {
        guard let (signed, own) = state.withLockedValue({ state in state.signed.flatMap { s in state.note.map { (s, $0) } } }) else { return nil }
        let text = signed.text
        let mine = signing.verifierKey
        let lines = try await link.run { connection in
            var lines: [String] = []
            for try await line in try await connection.query("""
                SELECT signature FROM mixpeek_log_checkpoints
                WHERE size = \(signed.size) AND body = \(text) AND verifier_key <> \(mine) ORDER BY verifier_key
                """, logger: self.logger).decode(String.self) {
                lines.append(line)
            }
            return lines
        }
        return own + lines.joined()
    }

    /// The bytes of `tile` in the tree of this member's latest checkpoint; nil past its end.
    func tile(_ tile: Tiles.Tile) async throws -> [UInt8]? {
        let size = signedSize
        return try await link.run { connection in
            if tile.level != nil {
                return try await GroupLogTree.reading(connection, logger: self.logger) { read in
                    try Tiles.hashTile(tile, size: size, read: read)
                }
            }
            let start = tile.index * Int64(Tiles.width)
            guard start + Int64(tile.width) <= size else { return nil }
            let records = try await GroupLogTree.records(from: start, to: start + Int64(tile.width), connection, logger: self.logger)
            return Tiles.entryBundle(records.map(\.logEntry))
        }
    }

    // MARK: The witness state

    /// The checkpoint saved in `path`, checked against this member's own key; nil when there is
    /// none yet. Throws when the file is there but is not a checkpoint this key signed.
    static func readState(_ path: String, signing: LogSigning) throws -> (Checkpoint, String)? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let note = try? String(contentsOfFile: path, encoding: .utf8),
              let opened = try? SignedNote.open(note, verifiers: [signing.verifier]), !opened.verifiedBy.isEmpty,
              let checkpoint = Checkpoint(text: opened.text) else {
            throw GroupError.chain("\(path) is not a checkpoint signed by this proxy's log key (\(signing.verifierKey))")
        }
        guard checkpoint.origin == signing.origin else {
            throw GroupError.chain("\(path) is a checkpoint of the log \(checkpoint.origin), not of \(signing.origin)")
        }
        return (checkpoint, note)
    }

    /// Replaces the saved checkpoint: written to a file beside it, synced, then renamed over it.
    static func writeState(_ note: String, to path: String) throws {
        let temporary = path + ".new"
        try? FileManager.default.removeItem(atPath: temporary)
        try DataFiles.createPrivateFile(at: temporary)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temporary))
        defer { try? handle.close() }
        try handle.write(contentsOf: Data(note.utf8))
        try handle.synchronize()
        guard rename(temporary, path) == 0 else { throw GroupError.chain("cannot replace \(path) (errno \(errno))") }
    }
}
