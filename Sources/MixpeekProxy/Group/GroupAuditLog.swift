import Foundation
import Logging
import MixpeekAPI
import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO

/// The group's one audit chain in PostgreSQL, as an `AuditSink`.
///
/// Appends are group-committed like `AuditLog`'s: records that arrive while a batch is being
/// written go together into the next one. A batch is written in one call and one round trip
/// (`appendChained`), under an advisory lock: without an HMAC key PostgreSQL chains it on the
/// head (`chainedByDatabase`); with one, this proxy chains it on the head it knows and the call
/// inserts it only if that is still the head (`chainedHere`). (The proxies' role may INSERT and
/// SELECT the chain, never UPDATE it, so there is no head row to lock `FOR UPDATE`; the primary
/// key on `seq` refuses a fork even if the lock were bypassed.) No round trip is made while
/// the lock is held.
///
/// Durability: the call commits with `synchronous_commit = on`, so it returns only once the
/// records are on disk; then the `(seq, hash)` of each record is written to this proxy's
/// witness file and synced (one fsync a batch), and only then is an append reported done (and
/// a mutation forwarded; not one whose intent could not be witnessed).
///
/// An intent returns only when it is committed **and** every live proxy has read past it
/// (`GroupMember.awaitPeers`): only then may the mutation be forwarded.
public final class GroupAuditLog: AuditSink, Sendable {
    private struct Draft: Sendable {
        var record: AuditRecord
        /// For the reaper's `unknown`: written only if that intent still has no outcome.
        var onlyIfOpen: Int64?
    }

    /// An append's result: the record (nil when the reaper's was not needed) and the other
    /// proxies with a live lease once the chain's lock was held, with their `read_seq` then.
    struct Appended: Sendable {
        var record: AuditRecord?
        var peers: [String: Int64]
        /// Why the batch's witness lines could not be written and synced, or nil when they were.
        var witnessProblem: String?
    }

    let member: GroupMember
    /// This member's signatures on the group's verifiable log; nil signs none.
    public let cosigner: GroupCosigner?
    private let writer: GroupLink
    private let key: Data?
    private let witness: WitnessFile?
    private let logger: Logger
    /// At most 1,000 records a transaction (20 bind parameters each; PostgreSQL takes 65,535).
    private let commits = ChainWriter<Draft, Appended>(limit: 1_000)

    public init(member: GroupMember, hmacKey: String?, witness: WitnessFile?, cosigner: GroupCosigner? = nil, logger: Logger) {
        self.member = member
        self.cosigner = cosigner
        self.key = hmacKey.map { Data($0.utf8) }
        self.witness = witness
        self.logger = logger
        // `on` whatever the server's default: an append is reported done only once on disk.
        writer = GroupLink(url: member.settings.database, applicationName: "mixpeek-proxy \(member.settings.proxyID)",
                           setup: ["SET synchronous_commit = on"], logger: logger)
    }

    /// Returns the intent once it is durable and every live proxy has read it, within one
    /// lease and a second of being asked; else throws (the mutation is refused, not forwarded)
    /// after recording an `error` outcome for an intent already in the chain. The bound keeps
    /// the owner ahead of any proxy's reaper, which waits `upstream_timeout` + a lease + 2 s.
    public func recordIntent(_ intent: AuditIntent) async throws -> AuditRecord {
        let asked = NIODeadline.now()
        // Fail closed: the log is not the one this member signed.
        if let problem = cosigner?.problem { throw GroupError.unavailable(problem) }
        let draft = AuditLog.intent(intent, time: AuditLog.now())
        try Self.check(draft)
        let written = try await append(draft, onlyIfOpen: nil)
        guard let record = written.record else { throw GroupError.chain("intent not written") }
        // This proxy stops caching the user at once; the others once they have read it.
        member.noteOpen(record.seq, user: UserIdentity.folded(record.user_email))
        let settings = member.settings
        let deadline = asked + .nanoseconds(Int64((settings.leaseSeconds + 1) * 1e9))
        do {
            // An intent this proxy could not witness is not forwarded: the witness is what
            // shows later that the chain still holds it.
            if let problem = written.witnessProblem {
                throw GroupError.unavailable("the witness file could not be written: \(problem)")
            }
            try await member.awaitPeers(pastSeq: record.seq, live: written.peers, until: deadline)
            guard NIODeadline.now() < deadline else {
                throw GroupError.unavailable("the intent took longer than a lease to be written and read by the group")
            }
        } catch {
            // Not forwarded: say so in the chain, which also reopens the user everywhere.
            let elapsed = Double((NIODeadline.now() - asked).nanoseconds) / 1e6
            _ = try? await recordOutcome(of: record, AuditResult(outcome: .error, upstreamStatus: nil, durationMS: elapsed))
            throw error
        }
        return record
    }

    /// Refuses, for this mutation alone, a record PostgreSQL would refuse (and with it every
    /// record group-committed beside it): a NUL in a text field, or a user too long to announce.
    static func check(_ record: AuditRecord) throws {
        let fields = [record.user_email, record.key_name ?? "", record.caller, record.client, record.request_id,
                      record.trace_id ?? "", record.actor_key_id ?? "", record.actor_key_prefix ?? "",
                      record.actor_key_name ?? "", record.actor_user ?? "", record.upstream_audit_id ?? ""]
        if fields.contains(where: { $0.utf8.contains(0) }) {
            throw GroupError.chain("a NUL character cannot be recorded in the group's chain")
        }
        if UserIdentity.folded(record.user_email).utf8.count > 4000 || (record.key_name?.utf8.count ?? 0) > 100_000
            || (record.actor_key_name?.utf8.count ?? 0) > 100_000 || (record.actor_user?.utf8.count ?? 0) > 100_000 {
            throw GroupError.chain("a user or key name too long to record in the group's chain")
        }
    }

    @discardableResult
    public func recordOutcome(of intent: AuditRecord, _ result: AuditResult) async throws -> AuditRecord {
        guard let record = try await append(AuditLog.outcome(of: intent, result, time: AuditLog.now()), onlyIfOpen: nil).record else {
            throw GroupError.chain("outcome not written")
        }
        return record
    }

    public var isVerifiableLog: Bool { cosigner != nil }

    /// Once a checkpoint this member signed covers `outcome`.
    public func covers(_ outcome: AuditRecord) async -> Bool {
        guard let cosigner else { return false }
        return await cosigner.cover(outcome.seq)
    }

    /// At shutdown, after the last request: closes this sink's connections.
    public func close() async {
        await writer.close()
    }

    public func recordCount() async throws -> Int {
        try await member.link.run { connection in
            var count = 0
            for try await value in try await connection.query("SELECT count(*)::bigint FROM mixpeek_audit", logger: self.logger).decode(Int64.self) {
                count = Int(value)
            }
            return count
        }
    }

    private func append(_ record: AuditRecord, onlyIfOpen: Int64?) async throws -> Appended {
        try await commits.append(Draft(record: record, onlyIfOpen: onlyIfOpen), flush: flush)
    }

    /// Writes the next batch (`ChainWriter`), one call and one transaction, then its witness
    /// lines; then the one after while any came in.
    private func flush() {
        guard let batch = commits.nextBatch() else { return }
        Task {
            do {
                let (written, peers) = try await appendChained(batch.items.map { ($0.record, $0.onlyIfOpen) })
                let witnessProblem = self.writeWitness(written.compactMap { $0 })
                self.commits.finish(batch, .success(written.map { Appended(record: $0, peers: peers, witnessProblem: witnessProblem) }))
            } catch {
                let problem = GroupError.describe(error)
                self.logger.error("group: audit append failed", metadata: ["error": "\(problem)"])
                self.commits.finish(batch, .failure(GroupError.unavailable(problem)))
            }
            self.flush()
        }
    }

    /// Writes and syncs a committed batch's witness lines (one fsync a batch); returns why not,
    /// logged and counted (`mixpeek_proxy_witness_failures_total`), when that failed.
    private func writeWitness(_ records: [AuditRecord]) -> String? {
        guard let witness else { return nil }
        do {
            try witness.append(records)
            return nil
        } catch {
            let problem = "\(error)"
            logger.error("group: the witness file could not be written; mutations are refused until it can", metadata: [
                "file": "\(witness.path)", "first_seq": "\(records.first?.seq ?? 0)", "records": "\(records.count)", "error": "\(problem)"])
            return problem
        }
    }

    /// Batches whose witness lines could not be written or synced.
    public var witnessFailures: Int { witness?.failures ?? 0 }

    /// Appends `drafts` in one call and one transaction. A draft with `onlyIfOpen` (the
    /// reaper's `unknown`) is written only if that intent has no outcome yet under the chain's
    /// lock; else its result is nil and the rest are sent again.
    private func appendChained(_ drafts: [(record: AuditRecord, onlyIfOpen: Int64?)]) async throws
        -> (written: [AuditRecord?], peers: [String: Int64]) {
        key == nil ? try await chainedByDatabase(drafts) : try await chainedHere(drafts)
    }

    /// Without an HMAC key: `mixpeek_audit_chain` chains the drafts on whatever the head is
    /// once it holds the lock, so no call is refused for another proxy's append. This proxy
    /// computes each record's hash too, from the head PostgreSQL chained on, and writes its
    /// own to the witness file: a hash PostgreSQL computed otherwise is found by `audit verify`.
    private func chainedByDatabase(_ drafts: [(record: AuditRecord, onlyIfOpen: Int64?)]) async throws
        -> (written: [AuditRecord?], peers: [String: Int64]) {
        let me = member.settings.proxyID
        return try await writer.run { connection in
            var closed = Set<Int64>()
            while true {
                let kept = drafts.indices.filter { drafts[$0].onlyIfOpen.map { !closed.contains($0) } ?? true }
                var written = [AuditRecord?](repeating: nil, count: drafts.count)
                if kept.isEmpty { return (written, [:]) }
                let records = kept.map { drafts[$0].record }
                let call = ChainCall(
                    records: ChainRows.json(records, placed: false),
                    bodies: records.map { String(decoding: $0.canonicalBody, as: UTF8.self) },
                    me: me, onlyIfOpen: kept.compactMap { drafts[$0].onlyIfOpen })
                var chainedOn: (seq: Int64, hash: String)?
                var hashes: [String] = []
                var closing: [Int64] = []
                var peers: [String: Int64] = [:]
                for try await (seq, hash, rowHashes, peerIDs, readSeqs, closedIntents) in try await connection.execute(call, logger: self.logger) {
                    closing = closedIntents ?? []
                    if let seq, let hash, let rowHashes { chainedOn = (seq, hash); hashes = rowHashes }
                    if let peerIDs, let readSeqs { peers = Dictionary(zip(peerIDs, readSeqs), uniquingKeysWith: max) }
                }
                if !closing.isEmpty {
                    // Closed meanwhile: nothing was written; again without those outcomes.
                    closed.formUnion(closing)
                    continue
                }
                guard let start = chainedOn, hashes.count == kept.count else {
                    throw GroupError.chain("mixpeek_audit_chain did not say where it chained the records")
                }
                let chained = AuditRecord.chain(records, after: start, key: nil)
                for (position, index) in kept.enumerated() {
                    let record = chained[position]
                    if record.hash != hashes[position] {
                        self.logger.error("group: PostgreSQL chained a record under another hash than this proxy computes; `audit verify` will report it", metadata: [
                            "seq": "\(record.seq)"])
                    }
                    written[index] = record
                }
                let head = chained.last.map { (seq: $0.seq, hash: $0.hash) } ?? start
                self.member.noteHead(head.seq, head.hash)
                return (written, peers)
            }
        }
    }

    /// With an HMAC key, which PostgreSQL never sees: `mixpeek_audit_append` inserts the drafts
    /// as this proxy chained them on the head it knows if that is still the head, and else
    /// returns the head, on which they are chained again.
    private func chainedHere(_ drafts: [(record: AuditRecord, onlyIfOpen: Int64?)]) async throws
        -> (written: [AuditRecord?], peers: [String: Int64]) {
        let me = member.settings.proxyID
        return try await writer.run { connection in
            var head = self.member.chainHead
            var closed = Set<Int64>()
            while true {
                let expected = head
                let kept = drafts.indices.filter { drafts[$0].onlyIfOpen.map { !closed.contains($0) } ?? true }
                let rows = AuditRecord.chain(kept.lazy.map { drafts[$0].record }, after: head, key: self.key)
                var written = [AuditRecord?](repeating: nil, count: drafts.count)
                for (position, index) in kept.enumerated() { written[index] = rows[position] }
                if rows.isEmpty { return (written, [:]) }
                let onlyIfOpen = drafts.compactMap { $0.onlyIfOpen }.filter { !closed.contains($0) }
                var found: (seq: Int64, hash: String)?
                var closing = Set<Int64>()
                var peers: [String: Int64] = [:]
                let call = AppendCall(expectedSeq: expected.seq, expectedHash: expected.hash,
                                      records: ChainRows.json(rows, placed: true), me: me, onlyIfOpen: onlyIfOpen)
                for try await (conflict, seq, hash, peer, readSeq, closedIntent) in try await connection.execute(call, logger: self.logger) {
                    if let closedIntent { closing.insert(closedIntent) }
                    if conflict, let seq, let hash { found = (seq, hash) }
                    if let peer, let readSeq { peers[peer] = readSeq }
                }
                if let found {
                    // Another proxy appended first: chain on what it wrote.
                    self.member.noteHead(found.seq, found.hash, truth: true)
                    head = found
                    continue
                }
                if !closing.isEmpty {
                    // Closed meanwhile: nothing was written; again without those outcomes.
                    closed.formUnion(closing)
                    continue
                }
                let last = rows[rows.count - 1]
                self.member.noteHead(last.seq, last.hash)
                return (written, peers)
            }
        }
    }

    // MARK: The reaper

    /// Closes, as `unknown`, intents left open longer than the upstream timeout, one lease and
    /// a margin: their proxy died or was cut off mid-mutation. Any proxy may; the append
    /// checks under the chain's lock that no outcome came first. Runs until cancelled.
    public func reap() async {
        let settings = member.settings
        let age = TimeAmount.nanoseconds(Int64((settings.upstreamTimeoutSeconds + settings.leaseSeconds + settings.reapMarginSeconds) * 1e9))
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            for seq in member.openIntents(olderThan: age) {
                do {
                    guard let intent = try await member.link.run({ connection in
                        try await GroupChain.openIntent(seq, on: connection, logger: self.logger)
                    }) else {
                        member.noteClosed(seq)
                        continue
                    }
                    if try await append(
                        AuditLog.outcome(of: intent, AuditResult(outcome: .unknown, upstreamStatus: nil, durationMS: 0), time: AuditLog.now()),
                        onlyIfOpen: seq).record != nil {
                        logger.warning("group: closed a mutation left without an outcome as unknown", metadata: [
                            "seq": "\(seq)", "user": "\(intent.user_email)", "proxy_id": "\(settings.proxyID)"])
                    }
                } catch {
                    logger.warning("group: reaper could not close an open intent", metadata: ["seq": "\(seq)", "error": "\(GroupError.describe(error))"])
                }
            }
        }
    }
}

/// `mixpeek_audit_append`, prepared once per connection.
struct AppendCall: PostgresPreparedStatement {
    static let name = "mixpeek_audit_append_v2"
    static let sql = """
        SELECT conflict, head_seq, head_hash, peer_id, peer_read_seq, closed_intent
        FROM mixpeek_audit_append($1, $2, $3::jsonb, $4, $5)
        """
    typealias Row = (Bool, Int64?, String?, String?, Int64?, Int64?)
    var expectedSeq: Int64
    var expectedHash: String
    var records: String
    var me: String
    var onlyIfOpen: [Int64]

    func makeBindings() -> PostgresBindings {
        .of(expectedSeq, expectedHash, records, me, onlyIfOpen)
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// `mixpeek_audit_chain`, prepared once per connection: one row.
private struct ChainCall: PostgresPreparedStatement {
    static let name = "mixpeek_audit_chain_v3"
    static let sql = """
        SELECT head_seq, head_hash, hashes, peer_ids, peer_read_seqs, closed_intents
        FROM mixpeek_audit_chain($1::json, $2, $3, $4)
        """
    typealias Row = (Int64?, String?, [String]?, [String]?, [Int64]?, [Int64]?)
    var records: String
    var bodies: [String]
    var me: String
    var onlyIfOpen: [Int64]

    func makeBindings() -> PostgresBindings {
        .of(records, bodies, me, onlyIfOpen)
    }

    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

/// This proxy's own record of its appends to the group chain: a line `seq hash` per record,
/// in its data directory. `audit verify --witness DIR` checks that each is still in the chain,
/// which finds a chain rewritten or cut short by whoever controls the database.
public final class WitnessFile: Sendable {
    public static let name = "group-witness.log"
    let path: String
    /// The file, and whether a write failed since the last good one (it may have left half a
    /// line, which the next write ends first so that no line reads as another record).
    private let handle: NIOLockedValueBox<(file: FileHandle, broken: Bool)>
    private let failureCount = NIOLockedValueBox(0)

    public init(directory: String) throws {
        path = URL(fileURLWithPath: directory).appendingPathComponent(Self.name).path
        try DataFiles.createPrivateFile(at: path)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seekToEnd()
        self.handle = NIOLockedValueBox((handle, false))
    }

    /// Writes a line per record and syncs the file to disk once for them all; throws, counting
    /// a failure, when either fails.
    func append(_ records: [AuditRecord]) throws {
        guard !records.isEmpty else { return }
        let lines = records.map { "\($0.seq) \($0.hash)\n" }.joined()
        do {
            try handle.withLockedValue { handle in
                let text = (handle.broken ? "\n" : "") + lines
                handle.broken = true
                try handle.file.write(contentsOf: Data(text.utf8))
                try handle.file.synchronize()
                handle.broken = false
            }
        } catch {
            failureCount.withLockedValue { $0 += 1 }
            throw error
        }
    }

    /// Batches that could not be written or synced.
    var failures: Int { failureCount.withLockedValue { $0 } }

    /// The `(seq, hash)` pairs in the witness file of `directory`.
    public static func read(directory: String) throws -> [(seq: Int64, hash: String)] {
        let path = URL(fileURLWithPath: directory).appendingPathComponent(name).path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw GroupError.chain("no \(name) in \(directory)")
        }
        return text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            guard parts.count == 2, let seq = Int64(parts[0]) else { return nil }
            return (seq, String(parts[1]))
        }
    }
}

extension PostgresBindings {
    /// `values` as `$1`, `$2`, … in their order.
    static func of<each Value: PostgresNonThrowingEncodable>(_ values: repeat each Value) -> PostgresBindings {
        var bindings = PostgresBindings()
        for value in repeat each values { bindings.append(value) }
        return bindings
    }
}
