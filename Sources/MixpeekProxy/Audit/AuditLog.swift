import Crypto
import Foundation
import GRDB
import Logging
import MixpeekAPI
import NIOConcurrencyHelpers

/// Why an audit file cannot be read.
public enum AuditFileError: Error, CustomStringConvertible {
    case newerSchema(String)
    case olderSchema(String)

    public var description: String {
        switch self {
        case .newerSchema(let path): "\(path) was written by a newer mixpeek-proxy (its schema has migrations this version does not know); read it with that version"
        case .olderSchema(let path): "\(path) has an older or incomplete schema; start this version's proxy on the data dir once to migrate it, then read it"
        }
    }
}

/// The append-only, hash-chained audit log in its own SQLite file (WAL, `synchronous=FULL`,
/// mode 0600). Triggers refuse `UPDATE` and `DELETE` inside the database itself.
///
/// Appends are group-committed: requests that arrive while a commit is being made to disk
/// wait for the next one and share its fsync. An append returns only once its record is
/// durable, so an intent is on disk before its mutation is forwarded.
///
/// Each record is also an entry of the verifiable log (`LogTree`): a batch stores the subtree
/// hashes its records complete and, with `signing`, a signed checkpoint of the tree, in its own
/// transaction. So an answer sent after its outcome is durable is covered by a checkpoint.
public final class AuditLog: Sendable {
    /// A `DatabasePool` for the writer (its one writer connection appends; its readers serve
    /// the status page, the tiles and `newest` beside the appends, WAL snapshots): one pool
    /// for the file in the process. A `DatabaseQueue` for a read-only log (`audit query`).
    let queue: any DatabaseWriter
    let key: Data?
    /// Nil: batches store the tree but sign no checkpoint (`audit reconcile`, which has no key;
    /// the proxy signs one covering its resolutions at its next batch or start).
    let signing: LogSigning?
    private let logger: Logger
    private let commits = ChainWriter<AuditRecord, AuditRecord>()
    /// The last committed record, once read: this log is the file's only writer, so it need
    /// not be read again for every batch. Forgotten when a batch fails, since its transaction
    /// was rolled back and the file is then the only word on where it ends.
    private let head = NIOLockedValueBox<Head?>(nil)

    private struct Head {
        var seq: Int64
        var hash: String
        /// The log's right edge after record `seq`.
        var tree: LogTree.Frontier
    }

    /// - Parameter hmacKey: when set, the chain is an HMAC chain: only holders of the key can
    ///   recompute (or forge) it.
    /// - Parameter immutable: with `readOnly`, open the file as SQLite's `immutable` when no
    ///   writer has it open (no `-wal` beside it): nothing is written, not even the `-shm` and
    ///   `-wal` files a WAL reader makes, so an archived copy stays byte for byte as it was and
    ///   a read-only mount can be read.
    /// - Parameter signing: the key and origin checkpoints are signed with (writers only).
    public init(path: String, hmacKey: String? = nil, busyTimeout: TimeInterval = 5, readOnly: Bool = false,
                immutable: Bool = false, signing: LogSigning? = nil, logger: Logger) throws {
        if !readOnly { try DataFiles.createPrivateFile(at: path) }
        var configuration = Configuration()
        configuration.journalMode = readOnly ? .default : .wal
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(busyTimeout)
        configuration.label = "mixpeek-proxy.audit"
        // A SQLite that does not read URIs finds no file by that name, and the path is opened.
        if readOnly, immutable, let uri = Self.immutableURI(path), let snapshot = try? DatabaseQueue(path: uri, configuration: configuration) {
            queue = snapshot
        } else if readOnly {
            queue = try DatabaseQueue(path: path, configuration: configuration)
        } else {
            queue = try DatabasePool(path: path, configuration: configuration)
        }
        // After opening: GRDB's WAL set-up sets synchronous = NORMAL, which would leave
        // commits unsynced. The pool has one writer connection, so this holds for every append.
        if !readOnly {
            try queue.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
        }
        key = hmacKey.map { Data($0.utf8) }
        self.signing = readOnly ? nil : signing
        self.logger = logger
        if readOnly {
            // A reader never changes the file: it only says when it cannot read this schema.
            try queue.read { db in
                if try Self.migrator.hasBeenSuperseded(db) { throw AuditFileError.newerSchema(path) }
                if try !Self.migrator.hasCompletedMigrations(db) { throw AuditFileError.olderSchema(path) }
            }
        } else {
            try Self.migrator.migrate(queue)
            if let signing {
                // A tree built at migration, or records another writer appended, get their
                // checkpoint before anything else is appended.
                try queue.write { db in
                    let size = try LogTree.size(db)
                    try LogTree.sign(try LogTree.frontier(db, size: size), by: signing, db)
                }
            }
        }
    }

    /// Opens the log for `audit query` and `audit verify`: read-only, never migrated, safe
    /// beside a running proxy (WAL readers).
    public static func openForReading(path: String, logger: Logger) throws -> AuditLog {
        try AuditLog(path: path, readOnly: true, immutable: true, logger: logger)
    }

    /// The `file:` URI that opens `path` immutable, when nothing is writing to it: no `-wal`
    /// beside it (a proxy holding the file open keeps one, and then the reader must share its
    /// WAL index). Nil otherwise.
    static func immutableURI(_ path: String) -> String? {
        let manager = FileManager.default
        guard !manager.fileExists(atPath: path + "-wal"), manager.fileExists(atPath: path) else { return nil }
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "?#%")
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        guard let encoded = absolute.addingPercentEncoding(withAllowedCharacters: allowed) else { return nil }
        return "file:\(encoded)?mode=ro&immutable=1"
    }

    /// The table of records as v1 made it, and v3 again (with `kinds` and `extra` columns):
    /// migrations are history, so this stays as they ran.
    private static func recordsTable(_ name: String, kinds: String, extra: String) -> String {
        """
        CREATE TABLE \(name) (
            seq INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN (\(kinds))),
            intent_seq INTEGER, time TEXT NOT NULL, action TEXT NOT NULL, user_email TEXT NOT NULL,
            key_name TEXT, caller TEXT NOT NULL, client TEXT NOT NULL, request_id TEXT NOT NULL,
            upstream_status INTEGER, outcome TEXT, duration_ms DOUBLE, key_id TEXT, key_prefix TEXT,
            key_hash TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL\(extra));

        """
    }

    /// What makes `audit_records` append-only to SQL (v1, and again after v3's rebuild).
    private static let appendOnlyTriggers = """
        CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
        CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
        """

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: recordsTable("audit_records", kinds: "'intent', 'outcome'", extra: "") + """
                CREATE INDEX audit_intent_seq ON audit_records (intent_seq);
                CREATE INDEX audit_user_time ON audit_records (user_email, time);
                """ + appendOnlyTriggers)
        }
        migrator.registerMigration("v2-trace-id") { db in
            // Nullable: the records before it have none, and their hashes never covered one.
            try db.alter(table: "audit_records") { t in t.add(column: "trace_id", .text) }
        }
        migrator.registerMigration("v3-resolution") { db in
            // SQLite cannot change a CHECK in place: the table is rebuilt, every row copied as it
            // is (DROP TABLE fires no trigger), then the indexes and the append-only triggers
            // are made again. The hashes do not change: the rows do not.
            try db.execute(sql: recordsTable("audit_records_v3", kinds: "'intent', 'outcome', 'resolution'", extra: ", trace_id TEXT, upstream_audit_id TEXT") + """
                INSERT INTO audit_records_v3 (seq, kind, intent_seq, time, action, user_email, key_name, caller, client,
                    request_id, upstream_status, outcome, duration_ms, key_id, key_prefix, key_hash, prev_hash, hash, trace_id)
                SELECT seq, kind, intent_seq, time, action, user_email, key_name, caller, client,
                    request_id, upstream_status, outcome, duration_ms, key_id, key_prefix, key_hash, prev_hash, hash, trace_id
                FROM audit_records;
                DROP TABLE audit_records;
                ALTER TABLE audit_records_v3 RENAME TO audit_records;
                CREATE INDEX audit_intent_seq ON audit_records (intent_seq);
                CREATE INDEX audit_user_time ON audit_records (user_email, time);
                CREATE INDEX audit_resolutions ON audit_records (intent_seq) WHERE kind = 'resolution';
                """ + appendOnlyTriggers)
        }
        // The key that acted (issue 22): nullable, hashed only when present.
        migrator.registerMigration("v4-actor-key") { db in
            try db.alter(table: "audit_records") { t in
                t.add(column: "actor_key_id", .text)
                t.add(column: "actor_key_prefix", .text)
                t.add(column: "actor_key_name", .text)
                t.add(column: "actor_user", .text)
            }
            try db.create(index: "audit_actor_key", on: "audit_records", columns: ["actor_key_id"])
        }
        // The verifiable log (issue 24): the tree of the records already there is built once, here.
        migrator.registerMigration("v5-log-tree") { db in try LogTree.migrate(db) }
        return migrator
    }

    // MARK: Appending

    /// Records a mutation's intent durably; throws when it cannot, and then the mutation must
    /// not be forwarded.
    public func recordIntent(_ intent: AuditIntent) async throws -> AuditRecord {
        // Refused before forwarding when its outcome could not be a log entry either: the outcome
        // adds its status, duration and the new key's identifiers (each at most
        // `Proxy.maximumIdentifierSize`).
        try await append(Self.intent(intent, time: Self.now()), leaving: Self.outcomeEntryGrowth)
    }

    /// What an outcome's entry adds at most to its intent's.
    static let outcomeEntryGrowth = 1_024

    /// The unchained record of `intent` (`seq`, `prev_hash` and `hash` are filled in by the
    /// append that chains it): this log's and the group chain's.
    static func intent(_ intent: AuditIntent, time: String) -> AuditRecord {
        AuditRecord(
            seq: 0, kind: .intent, intent_seq: nil, time: time, action: intent.action, user_email: intent.user,
            key_name: intent.key, caller: intent.caller, client: intent.client, request_id: intent.requestID,
            upstream_status: nil, outcome: nil, duration_ms: nil, key_id: nil, key_prefix: nil, key_hash: nil,
            prev_hash: "", hash: "", trace_id: intent.traceID, actor_key_id: intent.actor?.keyID,
            actor_key_prefix: intent.actor?.keyPrefix, actor_key_name: intent.actor?.name, actor_user: intent.actor?.user)
    }

    /// Records how the mutation of `intent` ended.
    @discardableResult
    public func recordOutcome(of intent: AuditRecord, _ result: AuditResult) async throws -> AuditRecord {
        try await append(Self.outcome(of: intent, result, time: Self.now()))
    }

    /// A draft that follows `intent` (its fields, its seq as `intent_seq`), not yet chained.
    private static func following(_ intent: AuditRecord, as kind: AuditRecord.Kind, time: String) -> AuditRecord {
        var record = intent
        record.seq = 0
        record.kind = kind
        record.intent_seq = intent.seq
        record.time = time
        return record
    }

    static func outcome(of intent: AuditRecord, _ result: AuditResult, time: String) -> AuditRecord {
        var record = following(intent, as: .outcome, time: time)
        record.upstream_status = result.upstreamStatus
        record.outcome = result.outcome
        record.duration_ms = (result.durationMS * 1000).rounded() / 1000
        record.key_id = result.keyID
        record.key_prefix = result.keyPrefix
        record.key_hash = result.keyHash
        return record
    }

    /// Records what the upstream's audit log says of `intent`, whose outcome was `unknown`:
    /// `applied` with the event's `audit_id` (and the key it names), or `notApplied`. A new
    /// record, never a change to the outcome.
    @discardableResult
    public func recordResolution(of intent: AuditRecord, _ resolution: AuditResolution) async throws -> AuditRecord {
        try await append(Self.resolution(of: intent, resolution, time: Self.now()))
    }

    static func resolution(of intent: AuditRecord, _ resolution: AuditResolution, time: String) -> AuditRecord {
        var record = following(intent, as: .resolution, time: time)
        record.outcome = resolution.outcome
        record.key_id = resolution.keyID
        record.upstream_audit_id = resolution.auditID
        return record
    }

    /// Appends `draft` once it is durable; refused when its entry, grown by `room` bytes, could
    /// exceed what a log entry may hold (its JSON is measured once, here).
    private func append(_ draft: AuditRecord, leaving room: Int = 0) async throws -> AuditRecord {
        let size = draft.chainedEntrySizeBound + room
        guard size <= AuditRecord.maximumEntrySize else { throw LogTreeError.entryTooLarge(bytes: size) }
        return try await commits.append(draft, flush: flush)
    }

    /// Writes the next batch (`ChainWriter`) in one transaction, then the one after while any
    /// came in: chained after the head, each record its tree leaf, the checkpoint signed.
    private func flush() {
        guard let batch = commits.nextBatch() else { return }
        let knownHead = head.withLockedValue { $0 }
        let key = key
        let signing = signing
        let drafts = batch.items
        queue.asyncWrite({ db -> ([AuditRecord], Head) in
            func chain(after start: Head) -> [AuditRecord] {
                AuditRecord.chain(drafts, after: (start.seq, start.hash), key: key)
            }
            var start = try knownHead ?? Self.readHead(db)
            var records = chain(after: start)
            // A seq taken by another writer fails the insert (primary key), never forks the chain.
            // The only other writer is `audit reconcile` appending a resolution: when the head
            // this log remembered is no longer the file's, the batch is chained after the file's.
            do {
                try Self.insert(records[0], db)
            } catch let error as DatabaseError where knownHead != nil && error.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY {
                start = try Self.readHead(db)
                records = chain(after: start)
                try Self.insert(records[0], db)
            }
            for record in records.dropFirst() { try Self.insert(record, db) }
            var tree = start.tree
            for record in records { try LogTree.append(record, to: &tree, db) }
            if let signing { try LogTree.sign(tree, by: signing, db) }
            let last = records[records.count - 1]
            return (records, Head(seq: last.seq, hash: last.hash, tree: tree))
        }, completion: { _, result in
            switch result {
            case .success(let (records, head)):
                self.head.withLockedValue { $0 = head }
                self.commits.finish(batch, .success(records))
            case .failure(let error):
                self.head.withLockedValue { $0 = nil }
                self.logger.error("audit log write failed", metadata: ["error": "\(error)"])
                self.commits.finish(batch, .failure(error))
            }
            self.flush()
        })
    }

    private static func readHead(_ db: Database) throws -> Head {
        let (seq, hash) = try Row.fetchOne(db, sql: "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1")
            .map { ($0["seq"] as Int64, $0["hash"] as String) } ?? (0, AuditRecord.genesis)
        return Head(seq: seq, hash: hash, tree: try LogTree.frontier(db, size: seq))
    }

    /// One prepared statement for every append: GRDB's record insert goes through `Codable`
    /// and builds its query each time, a cost that shows at a thousand records a second.
    private static func insert(_ record: AuditRecord, _ db: Database) throws {
        try db.cachedStatement(sql: insertSQL).execute(arguments: StatementArguments(AuditRecord.columns.map { $0.read(record).databaseValue }))
    }

    private static let insertSQL = """
        INSERT INTO audit_records (\(AuditRecord.columns.names()))
        VALUES (\(AuditRecord.columns.map { _ in "?" }.joined(separator: ", ")))
        """

    /// Closes every intent left without an outcome (the proxy stopped in between) with an
    /// `unknown` outcome. Run at start, before any new mutation.
    @discardableResult
    public func closeOrphans() async throws -> Int {
        let orphans = try await queue.read { db -> [AuditRecord] in
            // Each intent gets one outcome unless the proxy stopped in between, so equal counts
            // mean nothing to close. Counted from the intent_seq index, they cost a small part
            // of the search below, which reads every intent and made a long log slow to start.
            // A resolution names its intent too, and is counted back from its own partial index.
            let intentsWithoutOutcome = try Int.fetchOne(db, sql: """
                SELECT count(*) - 2 * count(intent_seq) + (SELECT count(*) FROM audit_records WHERE kind = 'resolution')
                FROM audit_records
                """) ?? 0
            guard intentsWithoutOutcome != 0 else { return [] }
            return try AuditRecord.fetchAll(db, sql: """
                SELECT * FROM audit_records i WHERE i.kind = 'intent'
                AND NOT EXISTS (SELECT 1 FROM audit_records o WHERE o.intent_seq = i.seq) ORDER BY seq
                """)
        }
        for intent in orphans {
            try await recordOutcome(of: intent, AuditResult(outcome: .unknown, upstreamStatus: nil, durationMS: 0))
        }
        if !orphans.isEmpty {
            logger.warning("closed mutations left without an outcome as unknown", metadata: ["count": "\(orphans.count)"])
        }
        return orphans.count
    }

    /// SQLite's `synchronous` setting of the log's connection (2 is FULL).
    public func synchronousMode() throws -> Int {
        try queue.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    /// Number of records in the log.
    public func count() throws -> Int {
        try queue.read { db in try AuditRecord.fetchCount(db) }
    }

    static func now() -> String {
        Timestamp.string(Date())
    }
}
