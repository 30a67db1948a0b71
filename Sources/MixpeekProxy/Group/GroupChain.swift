import Foundation
import Logging
import MixpeekAPI
import PostgresNIO

/// Reading the group's chain: `audit query` and `audit verify` with `--postgres-url`, and the
/// reaper's look at one intent. Readers never write.
public enum GroupChain {
    static let recordColumns = """
        seq, kind, intent_seq, time, action, user_email, key_name, caller, client, request_id,
        upstream_status, outcome, duration_ms, key_id, key_prefix, key_hash, prev_hash, hash
        """

    static func record(_ row: PostgresRow) throws -> AuditRecord {
        let row = row.makeRandomAccess()
        func text(_ name: String) throws -> String { try row[name].decode(String.self) }
        func optionalText(_ name: String) throws -> String? { try row[name].decode(String?.self) }
        guard let kind = AuditRecord.Kind(rawValue: try text("kind")), let action = AuditAction(rawValue: try text("action")) else {
            throw GroupError.chain("record \(try row["seq"].decode(Int64.self)) has an unknown kind or action")
        }
        return AuditRecord(
            seq: try row["seq"].decode(Int64.self), kind: kind, intent_seq: try row["intent_seq"].decode(Int64?.self),
            time: try text("time"), action: action, user_email: try text("user_email"), key_name: try optionalText("key_name"),
            caller: try text("caller"), client: try text("client"), request_id: try text("request_id"),
            upstream_status: try row["upstream_status"].decode(Int32?.self).map(Int.init),
            outcome: try optionalText("outcome").flatMap(AuditOutcome.init(rawValue:)),
            duration_ms: try row["duration_ms"].decode(Double?.self), key_id: try optionalText("key_id"),
            key_prefix: try optionalText("key_prefix"), key_hash: try optionalText("key_hash"),
            prev_hash: try text("prev_hash"), hash: try text("hash"))
    }

    /// Intent `seq` while it has no outcome; nil once it has one.
    static func openIntent(_ seq: Int64, on connection: PostgresConnection, logger: Logger) async throws -> AuditRecord? {
        var found: AuditRecord?
        for try await row in try await connection.query(PostgresQuery(unsafeSQL: """
            SELECT \(recordColumns) FROM mixpeek_audit i WHERE i.seq = $1 AND i.kind = 'intent'
            AND NOT EXISTS (SELECT 1 FROM mixpeek_audit o WHERE o.intent_seq = i.seq)
            """, binds: { var b = PostgresBindings(); b.append(seq); return b }()), logger: logger) {
            found = try record(row)
        }
        return found
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

    /// Connects for one command (`audit query`, `audit verify`).
    public static func connect(_ url: PostgresURL, logger: Logger) async throws -> PostgresConnection {
        do {
            return try await PostgresConnection.connect(
                configuration: url.connectionConfiguration(applicationName: "mixpeek-proxy audit"), id: 0, logger: logger)
        } catch {
            throw GroupError.unavailable("cannot connect to \(url): \(GroupError.describe(error))")
        }
    }

    /// `audit query --postgres-url`: the same filters, rows and order as `AuditLog.query`.
    public static func query(_ filter: AuditFilter, on connection: PostgresConnection, logger: Logger,
                             _ body: (AuditEntry) throws -> Void) async throws {
        if filter.actorKey != nil || filter.actorUser != nil {
            throw GroupError.chain("--actor-key and --actor-user: a group's chain does not record the acting key yet (audit.sqlite does)")
        }
        var conditions = ["i.kind = 'intent'"]
        var bindings = PostgresBindings()
        for condition in filter.conditions(foldedUser: "i.user_fold") {
            bindings.append(condition.value)
            conditions.append(condition.sql.replacingOccurrences(of: "?", with: "$\(bindings.count)"))
        }
        var sql = """
            SELECT i.seq, i.time, i.action, i.user_email, i.key_name, i.caller, i.client, i.request_id,
                   COALESCE(o.outcome, 'unknown') AS outcome, o.upstream_status, o.duration_ms,
                   o.key_id, o.key_prefix, o.key_hash, o.time AS finished_at
            FROM mixpeek_audit i
            LEFT JOIN LATERAL (SELECT * FROM mixpeek_audit o WHERE o.intent_seq = i.seq AND o.kind = 'outcome' ORDER BY o.seq LIMIT 1) o ON true
            WHERE \(conditions.joined(separator: " AND ")) ORDER BY i.seq
            """
        if let limit = filter.limit {
            bindings.append(limit)
            sql += " LIMIT $\(bindings.count)"
        }
        for try await row in try await connection.query(PostgresQuery(unsafeSQL: sql, binds: bindings), logger: logger) {
            let row = row.makeRandomAccess()
            try body(AuditEntry(
                seq: row["seq"].decode(Int64.self), time: row["time"].decode(String.self),
                action: row["action"].decode(String.self), user_email: row["user_email"].decode(String.self),
                key_name: row["key_name"].decode(String?.self), caller: row["caller"].decode(String.self),
                client: row["client"].decode(String.self), request_id: row["request_id"].decode(String.self),
                outcome: row["outcome"].decode(String.self),
                upstream_status: row["upstream_status"].decode(Int32?.self).map(Int.init),
                duration_ms: row["duration_ms"].decode(Double?.self), key_id: row["key_id"].decode(String?.self),
                key_prefix: row["key_prefix"].decode(String?.self), key_hash: row["key_hash"].decode(String?.self),
                finished_at: row["finished_at"].decode(String?.self)))
        }
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
