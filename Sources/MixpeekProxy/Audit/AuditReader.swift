import Crypto
import Foundation
import GRDB
import MixpeekAPI

/// One mutation as compliance reads it: its intent joined with its outcome.
public struct AuditEntry: Codable, Sendable, Equatable {
    public var seq: Int64
    public var time: String
    public var action: String
    public var user_email: String
    public var key_name: String?
    public var caller: String
    public var client: String
    public var request_id: String
    public var outcome: String
    public var upstream_status: Int?
    public var duration_ms: Double?
    public var key_id: String?
    public var key_prefix: String?
    public var key_hash: String?
    public var finished_at: String?
    /// The W3C trace id of the request that made it, when the proxy kept one.
    public var trace_id: String? = nil
    /// The key that acted, when the proxy knew the key of its secret (`AuditRecord.actor_key_id`).
    public var actor_key_id: String? = nil
    public var actor_key_prefix: String? = nil
    public var actor_key_name: String? = nil
    public var actor_user: String? = nil
    /// For an `unknown` that `audit reconcile` settled (`outcome` is then `applied` or
    /// `not_applied`): the seq of the resolution record, and the upstream's `audit_id` of the
    /// event that showed it applied.
    public var resolution_seq: Int64? = nil
    public var upstream_audit_id: String? = nil

    /// The CSV header and the table's columns (`storedColumns`).
    public static var columns: [String] { storedColumns.map(\.label) }

    public var values: [String?] { Self.storedColumns.map { $0.read(self).printed } }
}

/// The filters of `audit query`; every one is optional.
public struct AuditFilter: Sendable {
    public var action: AuditAction?
    public var user: String?
    public var key: String?
    /// RFC 3339 UTC instants (`2026-10-01T12:00:00Z`, seconds and fraction optional) or dates
    /// (`2026-10-01`, midnight); `since` is inclusive, `until` exclusive.
    public var since: String?
    public var until: String?
    public var outcome: AuditOutcome?
    public var limit: Int?
    /// The acting key's `key_id` (`--actor-key`), and its owner (`--actor-user`, every spelling).
    public var actorKey: String?
    public var actorUser: String?

    public init(action: AuditAction? = nil, user: String? = nil, key: String? = nil, since: String? = nil,
                until: String? = nil, outcome: AuditOutcome? = nil, limit: Int? = nil) {
        self.action = action
        self.user = user
        self.key = key
        self.since = since
        self.until = until
        self.outcome = outcome
        self.limit = limit
    }
}

extension AuditFilter {
    /// The filter as SQL conditions on an intent `i` and its outcome `o`, each with its one
    /// value in the `?` it holds: the same for `audit.sqlite` and the group's chain.
    /// `foldedUser` is the intent's user folded (`UserIdentity`) in that database, so that every
    /// spelling of the address matches; each record keeps the one sent.
    /// `foldedActor` is the acting key's owner folded likewise, where the database records it.
    func conditions(foldedUser: String, foldedActor: String? = nil,
                    outcome outcomeSQL: String = "COALESCE(o.outcome, 'unknown')") -> [(sql: String, value: String)] {
        var conditions: [(sql: String, value: String)] = []
        if let action { conditions.append(("i.action = ?", action.rawValue)) }
        if let user { conditions.append(("\(foldedUser) = ?", UserIdentity.folded(user))) }
        if let key { conditions.append(("i.key_name = ?", key)) }
        if let since { conditions.append(("i.time >= ?", AuditLog.storedTime(since) ?? since)) }
        if let until { conditions.append(("i.time < ?", AuditLog.storedTime(until) ?? until)) }
        if let outcome { conditions.append(("\(outcomeSQL) = ?", outcome.rawValue)) }
        if let actorKey { conditions.append(("i.actor_key_id = ?", actorKey)) }
        if let actorUser, let foldedActor { conditions.append(("\(foldedActor) = ?", UserIdentity.folded(actorUser))) }
        return conditions
    }
}

/// What `audit verify` found.
public struct AuditVerification: Sendable {
    public var records: Int
    /// The first record that breaks the chain, and how; nil when the chain is intact.
    public var problem: String?
    public var problemSeq: Int64?
    /// Intents whose outcome is unknown (the proxy stopped before the upstream answered).
    public var unknownOutcomes: [Int64]
    /// The last record: keep `seq:hash` somewhere else to detect truncation later.
    public var head: String
    public var isIntact: Bool { problem == nil }
}

extension AuditLog {
    /// Streams the mutations matching `filter`, oldest first, one at a time: a million-record
    /// log is never loaded into memory. Works while the proxy appends (WAL readers).
    public func query(_ filter: AuditFilter, _ body: (AuditEntry) throws -> Void) throws {
        let conditions = filter.conditions(foldedUser: "mixpeek_fold_user(i.user_email)", foldedActor: "mixpeek_fold_user(i.actor_user)",
                                           outcome: Self.settledOutcomeSQL)
        var arguments = StatementArguments(conditions.map(\.value))
        var sql = Self.entriesSQL(where: (["i.kind = 'intent'"] + conditions.map(\.sql)).joined(separator: " AND "), order: "i.seq")
        if let limit = filter.limit {
            sql += " LIMIT ?"
            _ = arguments.append(contentsOf: [limit])
        }
        try queue.read { db in
            db.add(function: .foldUser())
            let rows = try Row.fetchCursor(db, sql: sql, arguments: arguments)
            while let row = try rows.next() {
                try body(try Self.entry(from: row))
            }
        }
    }

    /// A mutation's outcome as it stands: a resolution's when `audit reconcile` settled it.
    static let settledOutcomeSQL = "COALESCE(r.outcome, o.outcome, 'unknown')"

    /// Intents joined with their outcomes and resolutions: the one query behind `query`, the
    /// status page and `audit reconcile`. Reconcile appends one resolution an intent at most.
    static func entriesSQL(where conditions: String, order: String) -> String {
        """
        SELECT i.seq, i.time, i.action, i.user_email, i.key_name, i.caller, i.client, i.request_id,
               \(settledOutcomeSQL) AS outcome, o.upstream_status, o.duration_ms,
               COALESCE(r.key_id, o.key_id) AS key_id, o.key_prefix, o.key_hash, o.time AS finished_at, i.trace_id,
               r.seq AS resolution_seq, r.upstream_audit_id, i.actor_key_id, i.actor_key_prefix, i.actor_key_name, i.actor_user
        FROM audit_records i LEFT JOIN audit_records o ON o.intent_seq = i.seq AND o.kind = 'outcome'
        LEFT JOIN audit_records r ON r.intent_seq = i.seq AND r.kind = 'resolution'
        WHERE \(conditions) ORDER BY \(order)
        """
    }

    static func entry(from row: Row) throws -> AuditEntry {
        try AuditEntry.storedColumns.decode(into: .blank, row: row)
    }

    /// A time bound in the records' own form, `YYYY-MM-DDTHH:MM:SS.mmmZ`, so that comparing
    /// strings compares instants: `…T12:00:00Z` as it is would sort after every record of that
    /// second. A date is midnight, missing seconds are zero, a fraction is cut to milliseconds
    /// (the records' precision). Nil for anything else: the command line refuses it.
    public static func storedTime(_ bound: String) -> String? {
        guard let match = bound.wholeMatch(of: #/(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2})(?::(\d{2})(?:\.(\d+))?)?Z?)?/#) else {
            return nil
        }
        let fraction = (match.4 ?? "") + "000"
        return "\(match.1)T\(match.2 ?? "00:00"):\(match.3 ?? "00").\(fraction.prefix(3))Z"
    }

    /// Walks the whole chain in order and names the first record that was altered, inserted,
    /// removed or reordered. A record removed from the very end leaves a valid shorter chain:
    /// compare `head` with one kept elsewhere (`audit verify --expect-head`) to catch that.
    public func verify(hmacKey: String? = nil) throws -> AuditVerification {
        try verify(key: hmacKey.map { Data($0.utf8) })
    }

    /// `verify` with the key the log was opened with (the status page's verify button).
    func verifyWithOwnKey() throws -> AuditVerification {
        try verify(key: key)
    }

    private func verify(key: Data?) throws -> AuditVerification {
        try queue.read { db in
            var check = AuditChainCheck(key: key)
            let records = try AuditRecord.fetchCursor(db, sql: "SELECT * FROM audit_records ORDER BY seq")
            while let record = try records.next(), check.next(record) {}
            return check.verification
        }
    }
}

extension AuditLog {
    /// The record count, the head (`seq:hash`) and the newest `count` mutations, newest first,
    /// in one read transaction so that they agree with one another.
    public func newest(_ count: Int) async throws -> (records: Int, head: String?, mutations: [AuditEntry]) {
        try await queue.read { db in
            let head = try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            let records = try AuditRecord.fetchCount(db)
            let mutations = try Row.fetchAll(db, sql: Self.entriesSQL(where: "i.kind = 'intent'", order: "i.seq DESC LIMIT ?"), arguments: [count])
                .map(Self.entry(from:))
            return (records, head.map { "\($0["seq"] as Int64):\($0["hash"] as String)" }, mutations)
        }
    }

    /// The intent record `seq`, as `audit reconcile` chains a resolution after it.
    public func intent(seq: Int64) throws -> AuditRecord? {
        try queue.read { db in
            try AuditRecord.fetchOne(db, sql: "SELECT * FROM audit_records WHERE seq = ? AND kind = 'intent'", arguments: [seq])
        }
    }

    /// Whether the last record's hash is the one this log's key makes of it: a resolution
    /// appended under another key (or none, to an HMAC chain) would break the chain.
    public func headVerifies() throws -> Bool {
        try queue.read { db in
            guard let last = try AuditRecord.fetchOne(db, sql: "SELECT * FROM audit_records ORDER BY seq DESC LIMIT 1") else { return true }
            return last.hash == last.computeHash(key: key)
        }
    }

    /// True when record `seq` is in the log with this hash (for `verify --expect-head`).
    public func contains(seq: Int64, hash: String) throws -> Bool {
        try queue.read { db in
            try String.fetchOne(db, sql: "SELECT hash FROM audit_records WHERE seq = ?", arguments: [seq]) == hash
        }
    }
}
