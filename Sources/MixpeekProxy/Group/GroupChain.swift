import Foundation
import Logging
import MixpeekAPI
import PostgresNIO

/// Reading the group's chain: `audit query` and `audit verify` with `--postgres-url`, and the
/// reaper's look at one intent. Readers never write.
public enum GroupChain {
    static let recordColumns = AuditRecord.columns.names()

    static func record(_ row: PostgresRow) throws -> AuditRecord {
        try AuditRecord.columns.decode(into: .blank, row: row)
    }

    /// The record that `sql`, a clause on the chain (aliased `i`) after `SELECT … FROM`,
    /// selects (the last row when it selects several), or nil; `seq`, when given, is its `$1`.
    static func record(_ sql: String, seq: Int64? = nil, on connection: PostgresConnection, logger: Logger) async throws -> AuditRecord? {
        var bindings = PostgresBindings()
        if let seq { bindings.append(seq) }
        var found: AuditRecord?
        for try await row in try await connection.query(
            PostgresQuery(unsafeSQL: "SELECT \(recordColumns) FROM mixpeek_audit i " + sql, binds: bindings), logger: logger) {
            found = try record(row)
        }
        return found
    }

    /// Intent `seq` while it has no outcome; nil once it has one.
    static func openIntent(_ seq: Int64, on connection: PostgresConnection, logger: Logger) async throws -> AuditRecord? {
        try await record("""
            WHERE i.seq = $1 AND i.kind = 'intent' AND NOT EXISTS (SELECT 1 FROM mixpeek_audit o WHERE o.intent_seq = i.seq)
            """, seq: seq, on: connection, logger: logger)
    }

    /// Whether record `seq` is in the chain with `hash`: `audit verify --expect-head`, which
    /// finds records removed from the end.
    public static func contains(seq: Int64, hash: String, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        var found = false
        for try await value in try await connection.query(
            "SELECT EXISTS (SELECT 1 FROM mixpeek_audit WHERE seq = \(seq) AND hash = \(hash))", logger: logger).decode(Bool.self) {
            found = value
        }
        return found
    }

    /// Connects for one command (`audit query`, `verify`, `reconcile`), to a chain whose schema
    /// is the one this build reads.
    public static func connect(_ url: PostgresURL, logger: Logger) async throws -> PostgresConnection {
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(
                configuration: url.connectionConfiguration(applicationName: "mixpeek-proxy audit"), id: 0, logger: logger)
        } catch {
            throw GroupError.unavailable("cannot connect to \(url): \(GroupError.describe(error))")
        }
        let applied: [String]
        do {
            applied = try await GroupSchema.applied(connection, logger: logger)
        } catch {
            try? await connection.close()
            throw GroupError.unavailable("cannot read the group's schema version: \(GroupError.describe(error))")
        }
        guard GroupSchema.isCurrent(applied) else {
            try? await connection.close()
            try GroupSchema.refuseNewer(applied)
            throw GroupError.schema("the group's schema is at \(applied.last ?? "nothing yet"); this mixpeek-proxy reads \(GroupSchema.currentVersion): start a proxy of this version once, or run `mixpeek-proxy group migrate`")
        }
        return connection
    }

    /// The group's members as `mixpeek_proxies` has them, and the chain's head: the status
    /// page's group panel.
    static func members(on connection: PostgresConnection, logger: Logger) async throws
        -> (head: Int64, members: [StatusSnapshot.Member]) {
        var head: Int64 = 0
        for try await value in try await connection.query("SELECT coalesce(max(seq), 0)::bigint FROM mixpeek_audit", logger: logger).decode(Int64.self) {
            head = value
        }
        var members: [StatusSnapshot.Member] = []
        for try await (id, left, read, version) in try await connection.query("""
            SELECT proxy_id, extract(epoch FROM lease_until - now())::float8, read_seq, protocol
            FROM mixpeek_proxies ORDER BY lease_until > now() DESC, proxy_id LIMIT 200
            """, logger: logger).decode((String, Double, Int64, Int32).self) {
            members.append(.init(proxy_id: id, live: left > 0, lease_left_seconds: (left * 10).rounded() / 10,
                                 read_seq: read, lag: max(0, head - read), protocol: Int(version)))
        }
        return (head, members)
    }

    /// `audit query --postgres-url`: the same filters, rows and order as `AuditLog.query`.
    public static func query(_ filter: AuditFilter, on connection: PostgresConnection, logger: Logger,
                             _ body: (AuditEntry) throws -> Void) async throws {
        var conditions = ["i.kind = 'intent'"]
        var bindings = PostgresBindings()
        for condition in filter.conditions(foldedUser: "i.user_fold", foldedActor: "i.actor_user_fold", outcome: AuditLog.settledOutcomeSQL) {
            bindings.append(condition.value)
            conditions.append(condition.sql.replacingOccurrences(of: "?", with: "$\(bindings.count)"))
        }
        var sql = entriesSQL(where: conditions.joined(separator: " AND "), order: "i.seq")
        if let limit = filter.limit {
            bindings.append(limit)
            sql += " LIMIT $\(bindings.count)"
        }
        for try await row in try await connection.query(PostgresQuery(unsafeSQL: sql, binds: bindings), logger: logger) {
            try body(entry(row))
        }
    }

    /// `AuditLog.entriesSQL`'s columns, from the group's table: each intent with its first
    /// outcome and its resolution.
    static func entriesSQL(where conditions: String, order: String) -> String {
        """
        SELECT i.seq, i.time, i.action, i.user_email, i.key_name, i.caller, i.client, i.request_id,
               \(AuditLog.settledOutcomeSQL) AS outcome, o.upstream_status, o.duration_ms,
               COALESCE(r.key_id, o.key_id) AS key_id, o.key_prefix, o.key_hash, o.time AS finished_at, i.trace_id,
               r.seq AS resolution_seq, r.upstream_audit_id, i.actor_key_id, i.actor_key_prefix, i.actor_key_name, i.actor_user
        FROM mixpeek_audit i
        LEFT JOIN LATERAL (SELECT * FROM mixpeek_audit o WHERE o.intent_seq = i.seq AND o.kind = 'outcome' ORDER BY o.seq LIMIT 1) o ON true
        LEFT JOIN LATERAL (SELECT * FROM mixpeek_audit r WHERE r.intent_seq = i.seq AND r.kind = 'resolution' ORDER BY r.seq LIMIT 1) r ON true
        WHERE \(conditions) ORDER BY \(order)
        """
    }

    static func entry(_ row: PostgresRow) throws -> AuditEntry {
        try AuditEntry.storedColumns.decode(into: .blank, row: row)
    }

    /// The record count (the chain's seqs have no gaps: the head's), the head (`seq:hash`) and
    /// the newest `count` mutations, newest first: the status page's audit panel in a group.
    static func newest(_ count: Int, on connection: PostgresConnection, logger: Logger) async throws
        -> (records: Int, head: String?, mutations: [AuditEntry]) {
        var head: (Int64, String)?
        for try await (seq, hash) in try await connection.query(
            "SELECT seq, hash FROM mixpeek_audit ORDER BY seq DESC LIMIT 1", logger: logger).decode((Int64, String).self) {
            head = (seq, hash)
        }
        var mutations: [AuditEntry] = []
        let sql = entriesSQL(where: "i.kind = 'intent'", order: "i.seq DESC LIMIT $1")
        for try await row in try await connection.query(
            PostgresQuery(unsafeSQL: sql, binds: { var b = PostgresBindings(); b.append(count); return b }()), logger: logger) {
            mutations.append(try entry(row))
        }
        return (Int(head?.0 ?? 0), head.map { "\($0.0):\($0.1)" }, mutations)
    }

    /// `audit verify --postgres-url [--witness DIR…]`: the whole chain, streamed in order, then
    /// every witnessed `(seq, hash)`: a witnessed record missing or different means the chain
    /// was rewritten or cut short after that proxy appended it.
    public static func verify(on connection: PostgresConnection, hmacKey: String?, witnesses: [String],
                              logger: Logger) async throws -> AuditVerification {
        var check = AuditChainCheck(key: hmacKey.map { Data($0.utf8) })
        var hashes: [Int64: String] = [:]
        let witnessed = try witnesses.map { ($0, try WitnessFile.read(directory: $0)) }
        let wanted = Set(witnessed.flatMap { $0.1.map(\.seq) })
        for try await row in try await connection.query(
            PostgresQuery(unsafeSQL: "SELECT \(recordColumns) FROM mixpeek_audit ORDER BY seq"), logger: logger) {
            let record = try record(row)
            guard check.next(record) else { break }
            if wanted.contains(record.seq) { hashes[record.seq] = record.hash }
        }
        var result = check.verification
        guard result.isIntact else { return result }
        for (directory, lines) in witnessed {
            for line in lines {
                guard let hash = hashes[line.seq] else {
                    result.problem = "record \(line.seq), witnessed in \(directory), is not in the chain, which ends at \(check.lastSeq): records were removed from the end"
                    result.problemSeq = line.seq
                    return result
                }
                if hash != line.hash {
                    result.problem = "record \(line.seq) differs from the hash witnessed in \(directory): the chain was rewritten from there"
                    result.problemSeq = line.seq
                    return result
                }
            }
        }
        return result
    }
}

/// A group's chain as `audit reconcile --postgres-url` reads and settles it. Resolutions are
/// chained here (with the HMAC key when the chain has one) on the head read just before, and
/// appended by `mixpeek_audit_append`, which inserts them only if that is still the head: on
/// a moved head they are chained again. Their `proxy_id` is `audit-reconcile` (one word: announcements are split at spaces), and the proxies
/// hear them as they hear every record.
public final class GroupChainLog: ReconciledLog {
    public static let appender = "audit-reconcile"
    let connection: PostgresConnection
    private let key: Data?
    private let logger: Logger

    public init(connection: PostgresConnection, hmacKey: String?, logger: Logger) {
        self.connection = connection
        key = hmacKey.map { Data($0.utf8) }
        self.logger = logger
    }

    public func mutations(_ filter: AuditFilter) async throws -> [AuditEntry] {
        var entries: [AuditEntry] = []
        try await GroupChain.query(filter, on: connection, logger: logger) { entries.append($0) }
        return entries
    }

    private func last() async throws -> AuditRecord? {
        try await GroupChain.record("ORDER BY i.seq DESC LIMIT 1", on: connection, logger: logger)
    }

    public func headVerifies() async throws -> Bool {
        guard let last = try await last() else { return true }
        return last.hash == last.computeHash(key: key)
    }

    public func intent(seq: Int64) async throws -> AuditRecord? {
        try await GroupChain.record("WHERE i.seq = $1 AND i.kind = 'intent'", seq: seq, on: connection, logger: logger)
    }

    @discardableResult
    public func recordResolution(of intent: AuditRecord, _ resolution: AuditResolution) async throws -> AuditRecord {
        let draft = AuditLog.resolution(of: intent, resolution, time: AuditLog.now())
        var head = try await last().map { ($0.seq, $0.hash) } ?? (0, AuditRecord.genesis)
        for _ in 0..<100 {
            let record = draft.chained(after: head, key: key)
            let call = AppendCall(expectedSeq: head.0, expectedHash: head.1, records: ChainRows.json([record], placed: true),
                                  me: Self.appender, onlyIfOpen: [])
            var moved: (Int64, String)?
            for try await (conflict, seq, hash, _, _, _) in try await connection.execute(call, logger: logger) where conflict {
                if let seq, let hash { moved = (seq, hash) }
            }
            guard let moved else { return record }
            head = moved
        }
        throw GroupError.chain("the chain's head kept moving: 100 tries to append a resolution failed")
    }
}
