import Foundation
import Logging
import MixpeekAPI
import MixpeekLog
import PostgresNIO

/// The group's verifiable log in PostgreSQL (schema v5): the same tree as `LogTree` keeps in
/// `audit.sqlite`, over the one chain.
///
/// - `mixpeek_log_subtrees`: every perfect subtree hash the records complete, written by
///   `mixpeek_log_append` inside the append functions, so in the records' transaction: the
///   tree never lags the chain. The entry PostgreSQL hashes is built from `log_middle` (the
///   record's entry between `seq` and `prev_hash`, which the proxy sends) and the `seq`,
///   `prev_hash` and `hash` the record gets.
/// - `mixpeek_log_checkpoints`: the checkpoints the members signed, one row per member key and
///   size: the checkpoint's text and the member's signature line. The checkpoint a member
///   serves is its own latest with every signature on that same text.
///
/// Both are append-only like the chain.
public enum GroupLogTree {
    static let version = "v5-log-tree"

    static let migration: [String] = [
        // No append may interleave with building the tree of the records already there.
        "SELECT pg_advisory_xact_lock(\(GroupSchema.appendLock))",
        """
        CREATE TABLE mixpeek_log_subtrees (level integer NOT NULL, idx bigint NOT NULL, hash bytea NOT NULL,
            PRIMARY KEY (level, idx))
        """,
        """
        CREATE TABLE mixpeek_log_checkpoints (
            verifier_key text NOT NULL,
            size bigint NOT NULL,
            root text NOT NULL,
            body text NOT NULL,
            signature text NOT NULL,
            proxy_id text NOT NULL,
            signed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (verifier_key, size))
        """,
        "CREATE INDEX mixpeek_log_checkpoints_size ON mixpeek_log_checkpoints (size)",
        """
        CREATE FUNCTION mixpeek_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$
        """,
        """
        CREATE TRIGGER mixpeek_log_subtrees_no_change BEFORE UPDATE OR DELETE ON mixpeek_log_subtrees
        FOR EACH ROW EXECUTE FUNCTION mixpeek_log_append_only()
        """,
        """
        CREATE TRIGGER mixpeek_log_subtrees_no_truncate BEFORE TRUNCATE ON mixpeek_log_subtrees
        FOR EACH STATEMENT EXECUTE FUNCTION mixpeek_log_append_only()
        """,
        """
        CREATE TRIGGER mixpeek_log_checkpoints_no_change BEFORE UPDATE OR DELETE ON mixpeek_log_checkpoints
        FOR EACH ROW EXECUTE FUNCTION mixpeek_log_append_only()
        """,
        """
        CREATE TRIGGER mixpeek_log_checkpoints_no_truncate BEFORE TRUNCATE ON mixpeek_log_checkpoints
        FOR EACH STATEMENT EXECUTE FUNCTION mixpeek_log_append_only()
        """,
        // Entries `first_seq - 1` on: their leaves, then, a level at a time, each perfect
        // subtree they complete (RFC 6962): set-based, a statement a level, not three a record.
        """
        CREATE FUNCTION mixpeek_log_append(first_seq bigint, entries bytea[]) RETURNS void LANGUAGE plpgsql AS $$
        DECLARE
            lvl integer := 0;
            lo bigint := first_seq - 1;
            hi bigint := first_seq - 2 + cardinality(entries);
            made bigint;
        BEGIN
            IF array_position(entries, NULL) IS NOT NULL THEN
                RAISE EXCEPTION 'records from % on come without their log entries: this mixpeek-proxy is older than the group''s schema (\(version)); upgrade it', first_seq;
            END IF;
            INSERT INTO mixpeek_log_subtrees (level, idx, hash)
                SELECT 0, lo + e.n - 1, sha256('\\x00'::bytea || e.entry) FROM unnest(entries) WITH ORDINALITY AS e(entry, n);
            LOOP
                INSERT INTO mixpeek_log_subtrees (level, idx, hash)
                    SELECT lvl + 1, r.idx / 2, sha256('\\x01'::bytea || l.hash || r.hash)
                    FROM mixpeek_log_subtrees r JOIN mixpeek_log_subtrees l ON l.level = lvl AND l.idx = r.idx - 1
                    WHERE r.level = lvl AND r.idx BETWEEN lo AND hi AND r.idx % 2 = 1;
                GET DIAGNOSTICS made = ROW_COUNT;
                EXIT WHEN made = 0;
                lvl := lvl + 1;
                lo := lo / 2;
                hi := hi / 2;
            END LOOP;
        END $$
        """,
        // The roles that may append to the chain may append to the tree and sign checkpoints.
        """
        DO $$ DECLARE r text; BEGIN
            FOR r IN SELECT DISTINCT grantee FROM information_schema.role_table_grants
                WHERE table_name = 'mixpeek_audit' AND privilege_type = 'INSERT' AND grantee NOT IN (current_user, 'PUBLIC') LOOP
                EXECUTE format('GRANT SELECT, INSERT ON mixpeek_log_subtrees, mixpeek_log_checkpoints TO %I', r);
            END LOOP;
        END $$
        """,
        // A proxy of v4 sends no log entries: its appends are refused by `mixpeek_log_append`,
        // and its lease renewals here, so that the others stop waiting for it.
        """
        CREATE OR REPLACE FUNCTION mixpeek_proxies_protocol() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.protocol < 3 THEN
                RAISE EXCEPTION 'this mixpeek-proxy is older than the group''s schema (\(version)): upgrade it';
            END IF;
            RETURN NEW;
        END $$
        """,
        GroupSchema.appendFunction(GroupSchema.fieldsV4, replacing: true, log: true),
        GroupSchema.chainFunction(GroupSchema.fieldsV4, replacing: true, log: true),
    ]

    /// The entry of a record at `seq` placed after `prev` with `hash`, as SQL on `middle`.
    static func entrySQL(seq: String, middle: String, prev: String, hash: String) -> String {
        "convert_to('{\"seq\":' || \(seq) || ',' || \(middle) || ',\"prev_hash\":\"' || \(prev) || '\",\"hash\":\"' || \(hash) || '\"}', 'UTF8')"
    }

    /// At the migration, in its transaction: the tree of the records already in the chain.
    static func build(_ connection: PostgresConnection, logger: Logger) async throws {
        var frontier = LogTree.Frontier()
        var levels: [Int32] = []
        var indices: [Int64] = []
        var hashes: [String] = []
        func flush() async throws {
            guard !levels.isEmpty else { return }
            try await connection.query("""
                INSERT INTO mixpeek_log_subtrees (level, idx, hash)
                SELECT l, i, decode(h, 'hex') FROM unnest(\(levels)::integer[], \(indices)::bigint[], \(hashes)::text[]) AS t(l, i, h)
                """, logger: logger)
            levels.removeAll(keepingCapacity: true)
            indices.removeAll(keepingCapacity: true)
            hashes.removeAll(keepingCapacity: true)
        }
        try await eachRecord(connection, logger: logger) { record in
            guard record.seq == frontier.size + 1 else { throw LogTreeError.outOfOrder(seq: record.seq, size: frontier.size) }
            for subtree in try frontier.append(MerkleTree.leafHash(record.logEntry)) {
                levels.append(Int32(subtree.level))
                indices.append(subtree.index)
                hashes.append(subtree.hash.hex)
            }
            if levels.count >= 5_000 { try await flush() }
        }
        try await flush()
        logger.notice("group log tree built from the chain", metadata: ["entries": "\(frontier.size)"])
    }

    // MARK: Reading

    /// The entries the tree holds (its level-0 subtrees are indexed from 0 without gaps).
    static func size(_ connection: PostgresConnection, logger: Logger) async throws -> Int64 {
        var size: Int64 = 0
        for try await value in try await connection.query(
            "SELECT coalesce(max(idx) + 1, 0)::bigint FROM mixpeek_log_subtrees WHERE level = 0", logger: logger).decode(Int64.self) {
            size = value
        }
        return size
    }

    /// The tree's size, its leaves from `after` on, and its stored right edge (the last
    /// subtree at each level): `GroupCosigner`'s round, in one statement.
    static func edge(after: Int64, _ connection: PostgresConnection, logger: Logger) async throws
        -> (size: Int64, leaves: [Int64: TreeHash], edge: [Int: (index: Int64, hash: TreeHash)]) {
        var size: Int64 = 0
        var leaves: [Int64: TreeHash] = [:]
        var edge: [Int: (index: Int64, hash: TreeHash)] = [:]
        let rows = try await connection.query("""
            WITH s AS (SELECT coalesce(max(idx) + 1, 0)::bigint AS n FROM mixpeek_log_subtrees WHERE level = 0)
            SELECT s.n, t.leaf, t.level, t.idx, encode(t.hash, 'hex') FROM s LEFT JOIN LATERAL (
                SELECT true AS leaf, 0 AS level, x.idx, x.hash FROM mixpeek_log_subtrees x
                    WHERE x.level = 0 AND x.idx >= \(after) AND x.idx < s.n
                UNION ALL
                SELECT false, x.level, x.idx, x.hash FROM generate_series(0, 62) AS l(level)
                    JOIN mixpeek_log_subtrees x ON x.level = l.level AND x.idx = (s.n >> l.level) - 1
                    WHERE s.n >> l.level > 0
            ) t ON true
            """, logger: logger)
        for try await (n, leaf, level, index, hex) in rows.decode((Int64, Bool?, Int32?, Int64?, String?).self) {
            size = n
            guard let leaf, let level, let index, let hex, let bytes = Base16.decode(hex), let hash = TreeHash(bytes) else { continue }
            if leaf { leaves[index] = hash } else { edge[Int(level)] = (index, hash) }
        }
        return (size, leaves, edge)
    }

    /// The lowest level where `frontier` and the stored `edge` differ; nil when they agree.
    static func firstDifference(_ frontier: LogTree.Frontier, _ edge: [Int: (index: Int64, hash: TreeHash)]) -> Int? {
        var level = 0
        while frontier.size >> level > 0 {
            let mine = frontier.latest[level]
            let stored = edge[level]
            if mine?.index != stored?.index || mine?.hash != stored?.hash { return level }
            level += 1
        }
        return edge.keys.contains { $0 >= level } ? level : nil
    }

    /// Runs `body`, a pure function of the tree (`MerkleTree`, `Tiles`), on the stored subtree
    /// hashes it reads. The subtrees a tree hash or proof reads depend on the sizes alone, so a
    /// first run with placeholder hashes names them, one query fetches them all, and a second
    /// run computes the answer.
    static func reading<T>(_ connection: PostgresConnection, logger: Logger, _ body: (SubtreeReader) throws -> T) async throws -> T {
        var wanted: [Int: Set<Int64>] = [:]
        let placeholder = TreeHash([UInt8](repeating: 0, count: TreeHash.size))!
        _ = try body { level, index in
            wanted[level, default: []].insert(index)
            return placeholder
        }
        var levels: [Int32] = []
        var indices: [Int64] = []
        for (level, set) in wanted {
            for index in set {
                levels.append(Int32(level))
                indices.append(index)
            }
        }
        var found: [Int: [Int64: TreeHash]] = [:]
        if !levels.isEmpty {
            let rows = try await connection.query("""
                SELECT s.level, s.idx, encode(s.hash, 'hex') FROM mixpeek_log_subtrees s
                JOIN unnest(\(levels)::integer[], \(indices)::bigint[]) AS w(l, i) ON s.level = w.l AND s.idx = w.i
                """, logger: logger)
            for try await (level, index, hex) in rows.decode((Int32, Int64, String).self) {
                if let bytes = Base16.decode(hex), let hash = TreeHash(bytes) { found[Int(level), default: [:]][index] = hash }
            }
        }
        return try body { level, index in
            guard let hash = found[level]?[index] else { throw LogTreeError.missingSubtree(level: level, index: index) }
            return hash
        }
    }

    /// The records of entries `start ..< end` (seq `start + 1 ... end`), in order.
    static func records(from start: Int64, to end: Int64, _ connection: PostgresConnection, logger: Logger) async throws -> [AuditRecord] {
        var records: [AuditRecord] = []
        try await eachRecord(after: start, limit: Int(end - start), connection, logger: logger) { records.append($0) }
        return records
    }

    /// Each record of the chain from `seq` `after + 1` on, in order, at most `limit`.
    static func eachRecord(after: Int64 = 0, limit: Int? = nil, _ connection: PostgresConnection, logger: Logger,
                           _ body: (AuditRecord) async throws -> Void) async throws {
        var bindings = PostgresBindings()
        bindings.append(after)
        let sql = "SELECT \(GroupChain.recordColumns) FROM mixpeek_audit WHERE seq > $1 ORDER BY seq" + (limit.map { " LIMIT \($0)" } ?? "")
        for try await row in try await connection.query(PostgresQuery(unsafeSQL: sql, binds: bindings), logger: logger) {
            try await body(try GroupChain.record(row))
        }
    }
}

// MARK: The offline tools (`audit checkpoint`, `prove`, `verify --checkpoint` with `--postgres-url`)

extension GroupLogTree {
    /// The latest checkpoint a member signed, with every member's signature on that same
    /// text; nil before the first.
    public static func latestCheckpoint(on connection: PostgresConnection, logger: Logger) async throws -> String? {
        var note: String?
        for try await (body, signatures) in try await connection.query("""
            SELECT body, string_agg(signature, '' ORDER BY verifier_key) FROM mixpeek_log_checkpoints
            WHERE size = (SELECT max(size) FROM mixpeek_log_checkpoints) GROUP BY body ORDER BY count(*) DESC LIMIT 1
            """, logger: logger).decode((String, String).self) {
            note = body + "\n" + signatures
        }
        return note
    }

    /// `audit query --records --postgres-url`: `AuditLog.entries` for the group's chain.
    public static func entries(after: Int64 = 0, limit: Int? = nil, on connection: PostgresConnection, logger: Logger,
                               _ body: ([UInt8]) throws -> Void) async throws {
        try await eachRecord(after: after, limit: limit, connection, logger: logger) { try body($0.logEntry) }
    }

    /// Entry `index` and its inclusion proof in the tree of `size` entries, with that tree's
    /// root as PostgreSQL stores it; nil when the tree has no such entry.
    public static func inclusion(index: Int64, size: Int64, on connection: PostgresConnection, logger: Logger) async throws -> LogInclusion? {
        guard index >= 0, index < size, size <= (try await self.size(connection, logger: logger)),
              let record = try await records(from: index, to: index + 1, connection, logger: logger).first else { return nil }
        let (proof, root) = try await reading(connection, logger: logger) { read in
            (try MerkleTree.inclusionProof(index: index, size: size, read: read), try MerkleTree.treeHash(size: size, read: read))
        }
        return LogInclusion(index: index, size: size, entry: record.logEntry, proof: proof, root: root)
    }

    /// `AuditLog.verifyLog` for the group's chain: every record's entry is the leaf the tree
    /// stores, and the tree extends `saved`.
    public static func verify(extending saved: Checkpoint, verifier: SignedNote.Verifier? = nil,
                              on connection: PostgresConnection, logger: Logger) async throws -> LogVerification {
        var notes: [String] = []
        if let verifier {
            for try await (body, signature) in try await connection.query("""
                SELECT body, signature FROM mixpeek_log_checkpoints WHERE size <= \(saved.size) AND verifier_key = \(verifier.verifierKey) ORDER BY size
                """, logger: logger).decode((String, String).self) {
                notes.append(body + "\n" + signature)
            }
        }
        var leaves: [TreeHash] = []
        for try await (index, hex) in try await connection.query(
            "SELECT idx, encode(hash, 'hex') FROM mixpeek_log_subtrees WHERE level = 0 ORDER BY idx", logger: logger).decode((Int64, String).self) {
            guard index == Int64(leaves.count), let bytes = Base16.decode(hex), let leaf = TreeHash(bytes) else { break }
            leaves.append(leaf)
        }
        var check = LogCheck(saved: saved, signed: LogCheck.verified(notes, by: verifier))
        var stopped = false
        try await eachRecord(connection, logger: logger) { record in
            guard !stopped else { return }
            let index = Int(check.size)
            stopped = !(try check.next(record, storedLeaf: index < leaves.count ? leaves[index] : nil))
        }
        let size = check.size
        let proof = check.needsProof
            ? try await reading(connection, logger: logger) { read in try MerkleTree.consistencyProof(old: saved.size, new: size, read: read) }
            : []
        return try check.finish(proof: proof)
    }
}

/// Lower-case hexadecimal, as PostgreSQL's `encode(…, 'hex')` writes it.
enum Base16 {
    static func decode(_ text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = PathSpelling.hexValue(digits[index]), let low = PathSpelling.hexValue(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }
}
