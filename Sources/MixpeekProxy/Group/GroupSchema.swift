import Logging
import PostgresNIO

/// The group's tables in PostgreSQL, created by versioned migrations.
///
/// - `mixpeek_audit`: the one audit chain, the same records and hash as `audit.sqlite` (the
///   trace id, the acting key and resolutions since v4), plus `user_fold` (which user's lists
///   a record invalidates), `actor_user_fold` and `proxy_id`, outside the hash:
///   each proxy's witness file is what binds its appends. Triggers refuse UPDATE, DELETE and
///   TRUNCATE, and announce every insert on the `mixpeek_proxy` channel
///   (`i seq intent_seq proxy_id hash user`; v1 had no hash).
/// - `mixpeek_proxies`: a row per proxy: its lease and how far it has read the chain; a change
///   of `read_seq` is announced on the same channel (`a proxy_id read_seq`), as is each
///   acknowledgement (`GroupState`'s `acknowledge`, sent by `GroupMember.perform`). A row whose
///   lease ended `group_peer_ttl` ago is deleted by `mixpeek_proxies_reap` (v6).
/// - `mixpeek_audit_append`: a batch of records chained by the proxy, appended in one call (v2);
///   `mixpeek_audit_chain`: a batch chained and appended by PostgreSQL (v3); both write the
///   log tree (`mixpeek_log_subtrees`, `mixpeek_log_checkpoints`: v5, `GroupLogTree`).
public enum GroupSchema {
    /// The versions this build knows, oldest first.
    static let migrations: [(version: String, sql: [String])] = [
        ("v1-audit-chain-leases", [
            """
            CREATE TABLE mixpeek_audit (
                seq bigint PRIMARY KEY,
                kind text NOT NULL CHECK (kind IN ('intent', 'outcome')),
                intent_seq bigint,
                time text NOT NULL,
                action text NOT NULL,
                user_email text NOT NULL,
                user_fold text NOT NULL,
                key_name text,
                caller text NOT NULL,
                client text NOT NULL,
                request_id text NOT NULL,
                upstream_status integer,
                outcome text,
                duration_ms double precision,
                key_id text,
                key_prefix text,
                key_hash text,
                prev_hash text NOT NULL,
                hash text NOT NULL,
                proxy_id text NOT NULL,
                committed_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX mixpeek_audit_intent_seq ON mixpeek_audit (intent_seq)",
            "CREATE INDEX mixpeek_audit_user_fold ON mixpeek_audit (user_fold, seq)",
            "CREATE INDEX mixpeek_audit_open_intents ON mixpeek_audit (seq) WHERE kind = 'intent'",
            """
            CREATE TABLE mixpeek_proxies (
                proxy_id text PRIMARY KEY,
                lease_until timestamptz NOT NULL,
                read_seq bigint NOT NULL DEFAULT 0,
                started_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            // One row per proxy, rewritten by `GroupAuditLog.flushBarrier`: a row of its own, so
            // the fsync it waits for holds up no lease renewal or `read_seq` write.
            "CREATE TABLE mixpeek_flushes (proxy_id text PRIMARY KEY, flushes bigint NOT NULL DEFAULT 0)",
            """
            CREATE FUNCTION mixpeek_audit_lock_head(OUT head_seq bigint, OUT head_hash text) LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock(\(appendLock));
                -- A statement of its own, so its snapshot is taken after the lock is held.
                SELECT a.seq, a.hash INTO head_seq, head_hash FROM mixpeek_audit a ORDER BY a.seq DESC LIMIT 1;
            END $$
            """,
            """
            CREATE FUNCTION mixpeek_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'mixpeek_audit is append-only'; END $$
            """,
            """
            CREATE TRIGGER mixpeek_audit_no_change BEFORE UPDATE OR DELETE ON mixpeek_audit
            FOR EACH ROW EXECUTE FUNCTION mixpeek_audit_append_only()
            """,
            """
            CREATE TRIGGER mixpeek_audit_no_truncate BEFORE TRUNCATE ON mixpeek_audit
            FOR EACH STATEMENT EXECUTE FUNCTION mixpeek_audit_append_only()
            """,
        ] + rowTrigger("mixpeek_audit_announce", "AFTER INSERT ON mixpeek_audit", """
                PERFORM pg_notify('mixpeek_proxy', 'i ' || NEW.seq || ' ' || coalesce(NEW.intent_seq, 0) || ' ' || NEW.proxy_id || ' ' || NEW.user_fold);
                RETURN NULL;
            """) + rowTrigger("mixpeek_proxies_announce", "AFTER INSERT OR UPDATE ON mixpeek_proxies", """
                IF TG_OP = 'INSERT' OR NEW.read_seq IS DISTINCT FROM OLD.read_seq THEN
                    PERFORM pg_notify('mixpeek_proxy', 'a ' || NEW.proxy_id || ' ' || NEW.read_seq);
                END IF;
                RETURN NULL;
            """)),
        ("v2-one-call-appends", [
            // Announcements carry the record's hash, so that every proxy knows the chain's head.
            """
            CREATE OR REPLACE FUNCTION mixpeek_audit_announce() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('mixpeek_proxy', 'i ' || NEW.seq || ' ' || coalesce(NEW.intent_seq, 0) || ' ' || NEW.proxy_id
                    || ' ' || NEW.hash || ' ' || NEW.user_fold);
                RETURN NULL;
            END $$
            """,
            // `GroupAuditLog.appendChained`: one call, one transaction. Under the chain's lock,
            // inserts `records` (chained by the caller on the head it expects) if the head is
            // that one and every intent in `only_if_open` (the reaper's) still has no outcome,
            // then returns the other proxies with a live lease and their `read_seq`, read after
            // the lock was taken. Else it inserts nothing and returns the head, or the intents
            // of `only_if_open` that are closed.
            appendFunction(fieldsV1, replacing: false),
            "DROP TABLE mixpeek_flushes",
            // A proxy of v1 still running would misread the announcements above (and drop the
            // wrong user's lists): its lease renewals and `read_seq` writes are refused from now
            // on, so its lease lapses, it serves no hit, the others stop waiting for it once
            // that lease has run out, and at its reconnect it says to upgrade.
            "ALTER TABLE mixpeek_proxies ADD COLUMN protocol integer NOT NULL DEFAULT 1",
        ] + rowTrigger("mixpeek_proxies_protocol", "BEFORE INSERT OR UPDATE ON mixpeek_proxies", """
                IF NEW.protocol < 2 THEN
                    RAISE EXCEPTION 'this mixpeek-proxy is older than the group''s schema (v2-one-call-appends): upgrade it';
                END IF;
                RETURN NEW;
            """)),
        ("v3-chained-by-the-database", [
            // `GroupAuditLog.chainedByDatabase` (no HMAC key): one call, one transaction, one
            // row, and never refused for a moved head. Under the chain's lock, unless an intent
            // of `only_if_open` (the reaper's) has an outcome already, chains `records` on the
            // head: record i gets seq head + i and the SHA-256 of its canonical encoding
            // (`AuditRecord.canonicalEncoding`), made of its seq, `bodies[i]` (the caller's
            // encoding of its other fields) and the previous record's hash. Returns the head it
            // chained on, the hashes, and the other proxies with a live lease and their
            // `read_seq`; or, having inserted nothing, the intents of `only_if_open` closed.
            chainFunction(fieldsV1, replacing: false),
        ]),
        ("v4-trace-actor-resolution", [
            // The fields audit.sqlite gained after v3 (its migrations v2-trace-id, v3-resolution
            // and v4-actor-key): the trace id, the acting key (and its owner folded, outside the
            // hash, as `user_fold` is), the upstream's audit id; and resolution records, which
            // `audit reconcile --postgres-url` appends. Adding nullable columns rewrites no row
            // (no UPDATE trigger fires); records from before have them NULL and hash as before.
            """
            ALTER TABLE mixpeek_audit ADD COLUMN trace_id text, ADD COLUMN actor_key_id text,
                ADD COLUMN actor_key_prefix text, ADD COLUMN actor_key_name text, ADD COLUMN actor_user text,
                ADD COLUMN actor_user_fold text, ADD COLUMN upstream_audit_id text
            """,
            "ALTER TABLE mixpeek_audit DROP CONSTRAINT mixpeek_audit_kind_check",
            "ALTER TABLE mixpeek_audit ADD CONSTRAINT mixpeek_audit_kind_check CHECK (kind IN ('intent', 'outcome', 'resolution'))",
            "CREATE INDEX mixpeek_audit_actor_key ON mixpeek_audit (actor_key_id, seq) WHERE actor_key_id IS NOT NULL",
            // The same functions, writing the new columns too (a proxy of v3 leaves them NULL).
            appendFunction(fieldsV4, replacing: true),
            chainFunction(fieldsV4, replacing: true),
        ]),
        // The verifiable log (issue 24): the tree over the chain, written by the append
        // functions in the records' transaction, and the members' signed checkpoints
        // (`GroupLogTree`). The tree of the records already there is built once, here.
        (GroupLogTree.version, GroupLogTree.migration),
        // Bounded bookkeeping (issue 25): a member whose lease ended more than `group_peer_ttl`
        // ago loses its row. A proxy's role may not DELETE (`grants`); this function, run with
        // its owner's rights, deletes only such rows, and a member that comes back inserts its
        // row again at its next catch-up.
        (reapVersion, [
            """
            CREATE FUNCTION mixpeek_proxies_reap(ttl_seconds double precision) RETURNS bigint
            LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
                WITH gone AS (DELETE FROM mixpeek_proxies
                    WHERE lease_until < now() - make_interval(secs => greatest(ttl_seconds, 10)) RETURNING 1)
                SELECT count(*) FROM gone
            $$
            """,
        ]),
    ]

    static let reapVersion = "v6-reap-members"

    /// A plpgsql function `name` run for each row `when` (`AFTER INSERT ON t`), as its two
    /// statements: the function with `body` between its BEGIN and END, then its trigger.
    private static func rowTrigger(_ name: String, _ when: String, _ body: String) -> [String] {
        [
            "CREATE FUNCTION \(name)() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n\(body)\nEND $$",
            "CREATE TRIGGER \(name) \(when)\nFOR EACH ROW EXECUTE FUNCTION \(name)()",
        ]
    }

    /// Whether `applied` is exactly the migrations this build knows, in whatever order (one
    /// applied again by hand comes last); one it does not know is a newer schema, which
    /// `migrate` and `GroupChain` refuse.
    static func isCurrent(_ applied: [String]) -> Bool {
        Set(migrations.map(\.version)) == Set(applied)
    }

    static var currentVersion: String { migrations.last!.version }

    /// A record's columns as the append functions read them from JSON, in the order of the
    /// table, but `seq`, `prev_hash`, `hash` and `proxy_id`: v1's, and v4's.
    static let fieldsV1: [(name: String, type: String)] = [
        ("kind", "text"), ("intent_seq", "bigint"), ("time", "text"), ("action", "text"), ("user_email", "text"),
        ("user_fold", "text"), ("key_name", "text"), ("caller", "text"), ("client", "text"), ("request_id", "text"),
        ("upstream_status", "integer"), ("outcome", "text"), ("duration_ms", "double precision"), ("key_id", "text"),
        ("key_prefix", "text"), ("key_hash", "text"),
    ]
    static let fieldsV4 = fieldsV1 + [
        ("trace_id", "text"), ("actor_key_id", "text"), ("actor_key_prefix", "text"), ("actor_key_name", "text"),
        ("actor_user", "text"), ("actor_user_fold", "text"), ("upstream_audit_id", "text"),
    ]

    /// Inserts `records` as the caller chained them (`seq`, `prev_hash` and `hash` given).
    private static func insertPlaced(_ fields: [(name: String, type: String)]) -> String {
        let names = fields.map(\.name)
        return """
            INSERT INTO mixpeek_audit (seq, \(names.joined(separator: ", ")), prev_hash, hash, proxy_id)
                SELECT r.seq, \(names.map { "r." + $0 }.joined(separator: ", ")), r.prev_hash, r.hash, me
                FROM jsonb_to_recordset(records) AS r(seq bigint, \(fields.map { "\($0.name) \($0.type)" }.joined(separator: ", ")),
                    prev_hash text, hash text)
                ORDER BY r.seq;
            """
    }

    /// Inserts `records` chained on `head_seq`/`head_hash` with `hashes`, in their order.
    private static func insertChained(_ fields: [(name: String, type: String)]) -> String {
        let names = fields.map(\.name)
        return """
            INSERT INTO mixpeek_audit (seq, \(names.joined(separator: ", ")), prev_hash, hash, proxy_id)
                SELECT head_seq + r.n, \(names.map { "r." + $0 }.joined(separator: ", ")),
                    CASE WHEN r.n = 1 THEN head_hash ELSE hashes[r.n::int - 1] END, hashes[r.n::int], me
                FROM ROWS FROM (json_to_recordset(records) AS (\(fields.map { "\($0.name) \($0.type)" }.joined(separator: ", "))))
                    WITH ORDINALITY AS r(\(names.joined(separator: ", ")), n)
                ORDER BY r.n;
            """
    }

    /// v5: the records inserted by `insertPlaced`, as entries of the log.
    private static let appendPlacedToLog = """
        PERFORM mixpeek_log_append(min(r.seq), array_agg(\(GroupLogTree.entrySQL(seq: "r.seq", middle: "r.log_middle", prev: "r.prev_hash", hash: "r.hash")) ORDER BY r.seq))
            FROM jsonb_to_recordset(records) AS r(seq bigint, log_middle text, prev_hash text, hash text);
        """

    /// v5: the records inserted by `insertChained`, as entries of the log.
    private static let appendChainedToLog = """
        PERFORM mixpeek_log_append(head_seq + 1, array_agg(\(GroupLogTree.entrySQL(
                seq: "head_seq + r.n", middle: "r.log_middle", prev: "CASE WHEN r.n = 1 THEN head_hash ELSE hashes[r.n::int - 1] END",
                hash: "hashes[r.n::int]")) ORDER BY r.n))
            FROM ROWS FROM (json_to_recordset(records) AS (log_middle text)) WITH ORDINALITY AS r(log_middle, n);
        """

    /// `GroupAuditLog.chainedHere` (v2; v4 with the new columns): see the migration's comment.
    static func appendFunction(_ fields: [(name: String, type: String)], replacing: Bool, log: Bool = false) -> String {
        """
        CREATE \(replacing ? "OR REPLACE " : "")FUNCTION mixpeek_audit_append(expected_seq bigint, expected_hash text, records jsonb, me text,
            only_if_open bigint[], OUT conflict boolean, OUT head_seq bigint, OUT head_hash text, OUT peer_id text,
            OUT peer_read_seq bigint, OUT closed_intent bigint)
        -- A generic plan: a custom one would be planned again at each call, parsing `records` to fold it.
        RETURNS SETOF record LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
        DECLARE
            any_closed boolean := false;
        BEGIN
            PERFORM pg_advisory_xact_lock(\(appendLock));
            SELECT a.seq, a.hash INTO head_seq, head_hash FROM mixpeek_audit a ORDER BY a.seq DESC LIMIT 1;
            head_seq := coalesce(head_seq, 0);
            head_hash := coalesce(head_hash, '\(AuditRecord.genesis)');
            conflict := head_seq <> expected_seq OR head_hash <> expected_hash;
            IF conflict THEN
                RETURN NEXT;
                RETURN;
            END IF;
            -- One equality at a time, which the generic plan answers from the intent_seq index
            -- (`= ANY(array)` it would answer by scanning the chain).
            head_seq := NULL;
            head_hash := NULL;
            FOREACH closed_intent IN ARRAY only_if_open LOOP
                IF EXISTS (SELECT 1 FROM mixpeek_audit a WHERE a.intent_seq = closed_intent) THEN
                    any_closed := true;
                    RETURN NEXT;
                END IF;
            END LOOP;
            IF any_closed THEN
                RETURN;
            END IF;
            closed_intent := NULL;
            \(insertPlaced(fields))
            \(log ? appendPlacedToLog : "")
            RETURN NEXT;
            -- A statement of its own: its snapshot is taken after the lock was (see catchUp).
            RETURN QUERY SELECT false, NULL::bigint, NULL::text, p.proxy_id, p.read_seq, NULL::bigint
                FROM mixpeek_proxies p WHERE p.proxy_id <> me AND p.lease_until > now();
        END $$
        """
    }

    /// `GroupAuditLog.chainedByDatabase` (v3; v4 with the new columns): see the migration's comment.
    static func chainFunction(_ fields: [(name: String, type: String)], replacing: Bool, log: Bool = false) -> String {
        """
        CREATE \(replacing ? "OR REPLACE " : "")FUNCTION mixpeek_audit_chain(records json, bodies text[], me text, only_if_open bigint[],
            OUT head_seq bigint, OUT head_hash text, OUT hashes text[], OUT peer_ids text[],
            OUT peer_read_seqs bigint[], OUT closed_intents bigint[])
        LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
        DECLARE
            intent bigint;
            body text;
            s bigint;
            h text;
        BEGIN
            PERFORM pg_advisory_xact_lock(\(appendLock));
            closed_intents := '{}';
            -- One equality at a time, which the generic plan answers from the intent_seq index.
            FOREACH intent IN ARRAY only_if_open LOOP
                IF EXISTS (SELECT 1 FROM mixpeek_audit a WHERE a.intent_seq = intent) THEN
                    closed_intents := closed_intents || intent;
                END IF;
            END LOOP;
            IF cardinality(closed_intents) > 0 THEN
                RETURN;
            END IF;
            -- A statement of its own: its snapshot is taken after the lock was.
            SELECT a.seq, a.hash INTO head_seq, head_hash FROM mixpeek_audit a ORDER BY a.seq DESC LIMIT 1;
            head_seq := coalesce(head_seq, 0);
            head_hash := coalesce(head_hash, '\(AuditRecord.genesis)');
            s := head_seq;
            h := head_hash;
            hashes := '{}';
            FOREACH body IN ARRAY bodies LOOP
                s := s + 1;
                h := encode(sha256(convert_to('mixpeek-proxy-audit-v1|' || length(s::text) || ':' || s::text || body
                    || '|' || length(h) || ':' || h, 'UTF8')), 'hex');
                hashes := hashes || h;
            END LOOP;
            \(insertChained(fields))
            \(log ? appendChainedToLog : "")
            -- A statement of its own: its snapshot is taken after the lock was (see catchUp).
            SELECT coalesce(array_agg(p.proxy_id), '{}'), coalesce(array_agg(p.read_seq), '{}')
                INTO peer_ids, peer_read_seqs
                FROM mixpeek_proxies p WHERE p.proxy_id <> me AND p.lease_until > now();
        END $$
        """
    }

    /// The grants a proxy's role needs, and no more: it may add to the chain and read it, never
    /// change or remove a record. Whatever the role held on the chain before is revoked first,
    /// so running `group migrate --grant` again narrows a role granted too much by hand.
    static func grants(to role: String) -> [String] {
        let role = quoteIdentifier(role)
        return [
            "REVOKE ALL ON mixpeek_audit FROM \(role)",
            "GRANT SELECT, INSERT ON mixpeek_audit TO \(role)",
            "GRANT SELECT, INSERT, UPDATE ON mixpeek_proxies TO \(role)",
            "GRANT SELECT ON mixpeek_schema_migrations TO \(role)",
            "REVOKE ALL ON mixpeek_log_subtrees, mixpeek_log_checkpoints FROM \(role)",
            "GRANT SELECT, INSERT ON mixpeek_log_subtrees, mixpeek_log_checkpoints TO \(role)",
        ]
    }

    /// What lets `role` (nil: the connection's own) rewrite the chain, in words: being a
    /// superuser, or owning (or being able to become the owner of) the chain's table, its
    /// trigger functions or the schema they are in: an owner can `ALTER TABLE … DISABLE
    /// TRIGGER`, replace the function the triggers run, or drop the table. Empty for a role
    /// that may only append and read; nil before the chain exists.
    static func rewriteRights(_ connection: PostgresConnection, role: String? = nil, logger: Logger) async throws -> [String]? {
        let query: PostgresQuery = """
            SELECT array_remove(ARRAY[
                CASE WHEN r.rolsuper THEN 'it is a superuser' END,
                CASE WHEN NOT r.rolsuper AND pg_has_role(r.oid, c.relowner, 'MEMBER') THEN 'it owns mixpeek_audit' END,
                CASE WHEN NOT r.rolsuper AND EXISTS (SELECT 1 FROM pg_proc p
                    WHERE p.oid IN (to_regprocedure('mixpeek_audit_append_only()'), to_regprocedure('mixpeek_audit_announce()'))
                    AND pg_has_role(r.oid, p.proowner, 'MEMBER')) THEN 'it owns the chain''s trigger functions' END,
                CASE WHEN NOT r.rolsuper AND pg_has_role(r.oid, n.nspowner, 'MEMBER') THEN 'it owns the schema ' || n.nspname END
            ], NULL)
            FROM pg_roles r, pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE r.rolname = coalesce(\(role), current_user::text) AND c.oid = to_regclass('mixpeek_audit')
            """
        var rights: [String]?
        for try await value in try await connection.query(query, logger: logger).decode([String].self) { rights = value }
        return rights
    }

    static func quoteIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// Brings the schema to `currentVersion`, one transaction per migration, serialised among
    /// proxies starting together by an advisory lock. Throws `GroupError.schema` when the
    /// database has a newer schema, or when this role may not create it.
    static func migrate(_ connection: PostgresConnection, logger: Logger) async throws {
        if isCurrent(try await applied(connection, logger: logger)) { return }
        try await connection.query("SELECT pg_advisory_lock(\(GroupSchema.migrationLock))", logger: logger)
        defer { Task { try? await connection.query("SELECT pg_advisory_unlock(\(GroupSchema.migrationLock))", logger: logger) } }
        do {
            try await connection.query("""
                CREATE TABLE IF NOT EXISTS mixpeek_schema_migrations (
                    version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())
                """, logger: logger)
        } catch {
            throw GroupError.schema("cannot create the group's tables as this role (\(GroupError.describe(error))); run `mixpeek-proxy group migrate --postgres-url <an owner's URL> --grant <this role>` once")
        }
        let done = try await applied(connection, logger: logger)
        try refuseNewer(done)
        for migration in migrations where !done.contains(migration.version) {
            do {
                try await connection.query("BEGIN", logger: logger)
                for statement in migration.sql {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                if migration.version == GroupLogTree.version { try await GroupLogTree.build(connection, logger: logger) }
                try await connection.query("INSERT INTO mixpeek_schema_migrations (version) VALUES (\(migration.version))", logger: logger)
                try await connection.query("COMMIT", logger: logger)
                logger.notice("group schema migrated", metadata: ["version": "\(migration.version)"])
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: logger)
                throw GroupError.schema("migration \(migration.version) failed (\(GroupError.describe(error))); run `mixpeek-proxy group migrate --postgres-url <an owner's URL> --grant <this role>` once")
            }
        }
    }

    /// Throws when `applied` has a migration this build does not know: the database is newer.
    static func refuseNewer(_ applied: [String]) throws {
        let known = Set(migrations.map(\.version))
        if let unknown = applied.first(where: { !known.contains($0) }) {
            throw GroupError.schema("the database's schema has migration \(unknown), which this mixpeek-proxy does not know: it is newer; upgrade the proxy")
        }
    }

    /// The migrations recorded in the database; empty before the first.
    static func applied(_ connection: PostgresConnection, logger: Logger) async throws -> [String] {
        let exists = try await connection.query("SELECT to_regclass('mixpeek_schema_migrations') IS NOT NULL", logger: logger)
        var present = false
        for try await value in exists.decode(Bool.self) { present = value }
        guard present else { return [] }
        var versions: [String] = []
        for try await version in try await connection.query("SELECT version FROM mixpeek_schema_migrations ORDER BY applied_at, version", logger: logger).decode(String.self) {
            versions.append(version)
        }
        return versions
    }

    /// `group migrate`: brings the schema up to date as an owner, then grants `role` what a
    /// proxy needs and no more. Throws when `role` could still rewrite the chain (it is a
    /// superuser or owns what the chain relies on), naming why.
    public static func migrate(url: PostgresURL, grant role: String?, logger: Logger) async throws {
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(
                configuration: url.connectionConfiguration(applicationName: "mixpeek-proxy migrate"), id: 0, logger: logger)
        } catch {
            throw GroupError.unavailable("cannot connect to \(url): \(GroupError.describe(error))")
        }
        defer { Task { try? await connection.close() } }
        try await migrate(connection, logger: logger)
        guard let role else { return }
        // One transaction, undone when the role could rewrite the chain anyway (an owner would
        // otherwise be left with its own rights revoked).
        do {
            try await connection.query("BEGIN", logger: logger)
            for grant in grants(to: role) {
                do {
                    try await connection.query(PostgresQuery(unsafeSQL: grant), logger: logger)
                } catch {
                    throw GroupError.schema("\(grant) failed: \(GroupError.describe(error))")
                }
            }
            if let rights = try await rewriteRights(connection, role: role, logger: logger), !rights.isEmpty {
                throw GroupError.schema("role \(role) could still rewrite the audit chain: \(rights.joined(separator: ", ")); nothing was granted. Grant to a role that owns nothing of the group's schema and is not a superuser")
            }
            try await connection.query("COMMIT", logger: logger)
        } catch {
            _ = try? await connection.query("ROLLBACK", logger: logger)
            throw error
        }
    }

    /// Advisory-lock keys: one serialises migrations, one serialises appends to the chain.
    static let migrationLock: Int64 = 0x6D69_7870_6D69_6701
    static let appendLock: Int64 = 0x6D69_7870_6175_6401
}

/// What can go wrong in a group, with messages that never show a password.
public enum GroupError: Error, CustomStringConvertible, Sendable {
    case schema(String)
    case unavailable(String)
    case chain(String)

    public var description: String {
        switch self {
        case .schema(let message), .unavailable(let message), .chain(let message): return message
        }
    }

    /// An error from PostgresNIO in words: the server's message and SQLSTATE when it sent one
    /// (`PSQLError`'s own description hides them).
    public static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] {
                return message + (error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? "")
            }
            return "\(error.code)"
        }
        if let error = error as? GroupError { return error.description }
        return "\(error)"
    }
}
