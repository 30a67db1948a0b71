import ArgumentParser
import Foundation
import Logging
import MixpeekAPI
import MixpeekLog
import MixpeekProxy
import PostgresNIO

struct DataDirOption: ParsableArguments {
    @Option(help: "The proxy's data directory (default $MIXPEEK_PROXY_DATA_DIR or ./mixpeek-proxy-data).")
    var dataDir: String?

    var path: String {
        dataDir ?? ProcessInfo.processInfo.environment["MIXPEEK_PROXY_DATA_DIR"] ?? "./mixpeek-proxy-data"
    }

    func existingFile(_ name: String) throws -> String {
        let file = URL(fileURLWithPath: path).appendingPathComponent(name).path
        guard FileManager.default.fileExists(atPath: file) else {
            throw ValidationError("no \(name) in \(path): is --data-dir the proxy's data directory?")
        }
        return file
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Query, verify and export the audit log.",
        subcommands: [Query.self, Verify.self, Reconcile.self, LogKey.self, ShowCheckpoint.self, Prove.self])

    static func connect(_ url: PostgresURL, logger: Logger) async throws -> PostgresConnection {
        do {
            return try await GroupChain.connect(url, logger: logger)
        } catch {
            throw ValidationError("\(error)")
        }
    }

    static func open(_ dataDir: DataDirOption) throws -> AuditLog {
        do {
            return try AuditLog.openForReading(path: try dataDir.existingFile("audit.sqlite"), logger: Logger(label: "mixpeek-proxy.audit"))
        } catch let error as AuditFileError {
            throw ValidationError(error.description)
        }
    }

    /// Runs `body` on the chain the options name (the group's with `--postgres-url`, else the
    /// data dir's audit.sqlite; `group` says which), closed after. A chain that cannot be
    /// opened is a usage error; one that fails while being read prints `what: why` on stderr and
    /// exits 2.
    static func reading<T>(_ dataDir: DataDirOption, _ postgres: PostgresOption, _ what: String,
                           _ body: (_ reader: any AuditReader, _ group: Bool) async throws -> T) async throws -> T {
        let reader: any AuditReader
        let group: Bool
        if let url = try postgres.url(dataDirGiven: dataDir.dataDir != nil) {
            let logger = Logs.quiet("mixpeek-proxy.audit")
            reader = GroupChainReader(connection: try await connect(url, logger: logger), logger: logger)
            group = true
        } else {
            reader = try open(dataDir)
            group = false
        }
        do {
            let result = try await body(reader, group)
            await reader.close()
            return result
        } catch {
            await reader.close()
            if error is ExitCode || error is ValidationError { throw error }
            FileHandle.standardError.write(Data("\(what): \(GroupError.describe(error))\n".utf8))
            throw ExitCode(2)
        }
    }

    struct Query: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List mutations (intent joined with outcome), oldest first, streamed.",
            discussion: """
                Examples:
                  # every rotation for alice@example.com in October 2026
                  mixpeek-proxy audit query --action rotate --user alice@example.com --since 2026-10-01 --until 2026-11-01
                  # all failed deletes
                  mixpeek-proxy audit query --action delete --outcome error
                  # last month as CSV for the auditors
                  mixpeek-proxy audit query --since 2026-10-01 --until 2026-11-01 --format csv > audit-2026-10.csv
                """)

        enum Format: String, ExpressibleByArgument, CaseIterable { case table, json, jsonl, csv }

        @OptionGroup var dataDir: DataDirOption
        @OptionGroup var postgres: PostgresOption
        @Option(help: "create, update, rotate or delete.") var action: String?
        @Option(help: "Only this user_email.") var user: String?
        @Option(help: "Only this key_name.") var key: String?
        @Option(help: "From this time on (RFC 3339 UTC, or a date: 2026-10-01).") var since: String?
        @Option(help: "Before this time (RFC 3339 UTC, or a date).") var until: String?
        @Option(help: "ok, rejected, error, timeout, unknown, or applied / not_applied (an unknown settled by reconcile).") var outcome: String?
        @Option(help: "Only mutations made with the secret of this key (its key_id), when the proxy knew the key.") var actorKey: String?
        @Option(help: "Only mutations made with a key owned by this user_email.") var actorUser: String?
        @Option(help: "At most this many rows.") var limit: Int?
        @Option(help: "table, json, jsonl or csv.") var format: Format = .table
        @Flag(help: "Every chain record (intent, outcome, resolution) instead of mutations, each as its verifiable-log entry: with --format jsonl, line N is entry N, the bytes the tree hashes. Takes --after-seq and --limit only.")
        var records = false
        @Option(help: "With --records: from the record after this seq on.") var afterSeq: Int64 = 0

        func run() async throws {
            if records { return try await printRecords() }
            var filter = AuditFilter(user: user, key: key, since: since, until: until, limit: limit)
            filter.actorKey = actorKey
            filter.actorUser = actorUser
            if let action {
                guard let parsed = AuditAction(rawValue: action) else { throw ValidationError("--action must be create, update, rotate or delete") }
                filter.action = parsed
            }
            if let outcome {
                guard let parsed = AuditOutcome(rawValue: outcome) else { throw ValidationError("--outcome must be ok, rejected, error, timeout, unknown, applied or not_applied") }
                filter.outcome = parsed
            }
            for (name, value) in [("--since", since), ("--until", until)] {
                if let value, AuditLog.storedTime(value) == nil {
                    throw ValidationError("\(name) must be an RFC 3339 UTC time (2026-10-01T00:00:00Z) or a date (2026-10-01)")
                }
            }
            var writer = AuditTableWriter(format: format.rawValue)
            try await Audit.reading(dataDir, postgres, "audit query failed") { reader, _ in
                try await reader.query(filter) { writer.write($0) }
            }
            writer.finish()
        }

        /// `--records`: each record's log entry, one line each.
        private func printRecords() async throws {
            guard format == .jsonl else { throw ValidationError("--records prints log entries, one a line: give --format jsonl") }
            guard action == nil, user == nil, key == nil, since == nil, until == nil, outcome == nil, actorKey == nil, actorUser == nil else {
                throw ValidationError("--records takes --after-seq and --limit only (it prints the log's entries in order)")
            }
            var buffer: [UInt8] = []
            func line(_ entry: [UInt8]) {
                buffer += entry
                buffer.append(0x0A)
                if buffer.count >= 1 << 16 { flush() }
            }
            func flush() {
                FileHandle.standardOutput.write(Data(buffer))
                buffer.removeAll(keepingCapacity: true)
            }
            defer { flush() }
            try await Audit.reading(dataDir, postgres, "audit: cannot read the log") { reader, _ in
                try await reader.entries(after: afterSeq, limit: limit, line)
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the hash chain: exit 0 when intact, 1 naming the first bad record.",
            discussion: """
                Set MIXPEEK_PROXY_AUDIT_HMAC_KEY to the proxy's key when the chain is an HMAC chain.
                A record removed from the very end leaves a valid, shorter chain: keep the printed
                head somewhere else and pass it back with --expect-head to detect that.
                Examples:
                  mixpeek-proxy audit verify --data-dir ./mixpeek-proxy-data
                  mixpeek-proxy audit verify --expect-head 1042:9f86d081884c7d65...
                """)

        @OptionGroup var dataDir: DataDirOption
        @OptionGroup var postgres: PostgresOption
        @Option(help: "A head printed by an earlier verify (seq:hash) that must still be in the chain.")
        var expectHead: String?
        @Option(help: "With --postgres-url: a proxy's data directory whose witness file (its own appends) must all be in the chain; repeat for each proxy.")
        var witness: [String] = []
        @OptionGroup var savedCheckpoint: SavedCheckpointOption

        func run() async throws {
            let hmacKey = ProcessInfo.processInfo.environment[ProxyConfig.auditHMACKeyVariable]
            var head: (seq: Int64, hash: String)?
            if let expectHead {
                let parts = expectHead.split(separator: ":", maxSplits: 1)
                guard parts.count == 2, let seq = Int64(parts[0]), !parts[1].isEmpty else {
                    throw ValidationError("--expect-head must be SEQ:HASH, as `audit verify` prints the head")
                }
                head = (seq, String(parts[1]))
            }
            try await Audit.reading(dataDir, postgres, "audit verify failed") { reader, group in
                guard group || witness.isEmpty else { throw ValidationError(WitnessesNeedAGroup().description) }
                // The log first: a record changed with the chain recomputed still breaks the tree.
                // Against the saved checkpoint, and in a group against each witness's: the one
                // its proxy signed last (`group-log.checkpoint`).
                let given = try savedCheckpoint.verifier(dataDir, group: group)
                var saved: [(what: String, checkpoint: Checkpoint, verifier: SignedNote.Verifier?)] =
                    try savedCheckpoint.read(dataDir, group: group).map { [("the saved checkpoint", $0, given)] } ?? []
                for directory in witness {
                    let path = URL(fileURLWithPath: directory).appendingPathComponent(GroupCosigner.stateFile).path
                    guard let note = try? String(contentsOfFile: path, encoding: .utf8) else { continue }
                    let verifier = try? LogSigning.verifier(keyFile: SavedCheckpointOption.keyFile(directory, group: true))
                    saved.append(("the checkpoint \(directory) signed", try SavedCheckpointOption.open(note, what: path, verifier: verifier), verifier))
                }
                var logBroken = false
                for (what, checkpoint, verifier) in saved {
                    let check = try await reader.verifyLog(extending: checkpoint, verifier: verifier)
                    if let problem = check.problem {
                        print("audit log BROKEN against \(what) (size \(checkpoint.size)): \(problem)")
                        logBroken = true
                    } else {
                        print("audit log consistent: its \(check.entries) entries extend \(what) (size \(checkpoint.size)) and match their records")
                    }
                }
                let result = try await reader.verifyChain(hmacKey: hmacKey, witnesses: witness)
                if let problem = result.problem {
                    print("audit chain BROKEN after \(result.records) records: \(problem)")
                    throw ExitCode(1)
                }
                if logBroken { throw ExitCode(1) }
                if let head, try await !reader.contains(seq: head.seq, hash: head.hash) { try headMissing() }
                if !witness.isEmpty { print("witnesses: every record appended by \(witness.joined(separator: ", ")) is in the chain") }
                Self.report(result)
            }
        }

        private func headMissing() throws {
            print("audit chain BROKEN: the expected head \(expectHead ?? "") is not in the log (records were removed from the end, or rewritten)")
            throw ExitCode(1)
        }

        static func report(_ result: AuditVerification) {
            print("audit chain intact: \(result.records) records, head \(result.head)")
            if !result.unknownOutcomes.isEmpty {
                print("mutations with unknown outcome (the proxy stopped before the upstream answered): seq \(result.unknownOutcomes.map(String.init).joined(separator: ", "))")
            }
        }
    }
}

extension Audit {
    struct Reconcile: AsyncParsableCommand {
        static let tokenVariable = "MIXPEEK_PROXY_RECONCILE_TOKEN"

        static let configuration = CommandConfiguration(
            abstract: "Hold the audit log against the upstream's own: changes made around the proxy, unknowns settled.",
            discussion: """
                Reads GET /v1/organizations/audit/logs (resource_type=api_key) with the
                admin key in $MIXPEEK_PROXY_RECONCILE_TOKEN (ADMIN permission; never a
                flag) and prints one finding a line:
                  around_proxy      an upstream event with no proxy record
                  resolved_unknown  an `unknown` the upstream's log settles (applied or
                                    not_applied), appended as a resolution record
                  unconfirmed       a record the proxy calls applied that the upstream's
                                    log does not show
                Exit status: 0 nothing to report, 1 an around_proxy or unconfirmed finding,
                2 the audit log could not be read or written, 3 the token was refused (it
                lacks the ADMIN permission).
                Examples:
                  export MIXPEEK_PROXY_RECONCILE_TOKEN=sk_...
                  mixpeek-proxy audit reconcile --since 2026-10-01 --data-dir ./data
                  mixpeek-proxy audit reconcile --since 2026-10-01 --until 2026-10-02 \\
                    --format jsonl
                  mixpeek-proxy audit reconcile --since 2026-10-01 \\
                    --postgres-url postgres://auditor@db/mixpeek   (a group's chain)
                """)

        enum Format: String, ExpressibleByArgument, CaseIterable { case table, jsonl, csv }

        @OptionGroup var dataDir: DataDirOption
        @OptionGroup var postgres: PostgresOption
        @Option(help: "From this time on (RFC 3339 UTC, or a date: 2026-10-01).") var since: String
        @Option(help: "Before this time (RFC 3339 UTC, or a date; default now).") var until: String?
        @Option(help: "The Mixpeek API (default $MIXPEEK_PROXY_UPSTREAM or https://api.mixpeek.com).") var upstream: String?
        @Option(help: "Seconds between a proxy record and an upstream event that still match.") var slack: Double = 5
        @Option(help: "Events asked for a page (1 to 1000).") var pageSize = 200
        @Option(help: "table, jsonl or csv.") var format: Format = .table

        func validate() throws {
            guard (1...1000).contains(pageSize) else { throw ValidationError("--page-size must be between 1 and 1000") }
            guard slack >= 0 else { throw ValidationError("--slack must not be negative") }
        }

        func run() async throws {
            let environment = ProcessInfo.processInfo.environment
            guard let token = environment[Self.tokenVariable], !token.isEmpty else {
                Self.fail("set \(Self.tokenVariable) to a Mixpeek key with the ADMIN permission (it is read from the environment only)", code: 2)
            }
            let since = try Self.date(since, "--since")
            let until = try until.map { try Self.date($0, "--until") } ?? Date()
            let base = upstream ?? environment["MIXPEEK_PROXY_UPSTREAM"] ?? "https://api.mixpeek.com"
            let hmacKey = environment[ProxyConfig.auditHMACKeyVariable].flatMap { $0.isEmpty ? nil : $0 }
            let log: any ReconciledLog
            var connection: PostgresConnection?
            if let url = try postgres.url(dataDirGiven: dataDir.dataDir != nil) {
                let logger = Logs.quiet("mixpeek-proxy.audit")
                let connected: PostgresConnection
                do {
                    connected = try await GroupChain.connect(url, logger: logger)
                } catch {
                    Self.fail("cannot open the group's chain: \(GroupError.describe(error))", code: 2)
                }
                connection = connected
                log = GroupChainLog(connection: connected, hmacKey: hmacKey, logger: logger)
            } else {
                do {
                    log = try AuditLog(path: try dataDir.existingFile("audit.sqlite"), hmacKey: hmacKey, logger: Logs.quiet("mixpeek-proxy.audit"))
                } catch let error as ValidationError {
                    throw error
                } catch {
                    Self.fail("cannot open the audit log: \(error)", code: 2)
                }
            }
            defer { if let connection { Task { try? await connection.close() } } }
            let reconciliation = Reconciliation(since: since, until: until, slack: slack)
            let source = UpstreamAuditLog(baseURL: base, token: token, pageSize: pageSize)
            let onTerminal = isatty(STDERR_FILENO) == 1
            let run: ReconcileRun
            do {
                run = try await reconciliation.run(against: log, source: source) { read, total in
                    if onTerminal { FileHandle.standardError.write(Data("\rreading the upstream's audit log: \(read) of \(total) events".utf8)) }
                }
                if onTerminal { FileHandle.standardError.write(Data("\n".utf8)) }
            } catch let error as UpstreamAuditError {
                if case .notAdmin = error { Self.fail(error.description, code: 3) }
                Self.fail(error.description, code: 2)
            } catch let error as ReconcileHeadMismatch {
                Self.fail(error.description, code: 2)
            } catch {
                Self.fail("the audit log could not be read or written: \(GroupError.describe(error))", code: 2)
            }
            var writer = FindingWriter(format: format)
            run.findings.forEach { writer.write($0) }
            writer.finish()
            FileHandle.standardError.write(Data("""
                reconcile: \(run.events) upstream events, \(run.mutations) proxy mutations; \(run.count(.around_proxy)) around_proxy, \
                \(run.count(.resolved_unknown)) resolved_unknown (appended), \(run.count(.unconfirmed)) unconfirmed\n
                """.utf8))
            let findings = run.findings
            if findings.contains(where: \.fails) { throw ExitCode(1) }
        }

        static func date(_ text: String, _ name: String) throws -> Date {
            guard let stored = AuditLog.storedTime(text), let date = Reconciliation.date(stored) else {
                throw ValidationError("\(name) must be an RFC 3339 UTC time (2026-10-01T00:00:00Z) or a date (2026-10-01)")
            }
            return date
        }

        static func fail(_ message: String, code: Int32) -> Never {
            FileHandle.standardError.write(Data("audit reconcile: \(message)\n".utf8))
            Foundation.exit(code)
        }
    }
}

/// Writes reconcile findings, one a line.
struct FindingWriter {
    let format: Audit.Reconcile.Format
    private var rows = 0

    init(format: Audit.Reconcile.Format) {
        self.format = format
    }

    private static let tableColumns: [(String, Int)] = [
        ("FINDING", 16), ("ACTION", 6), ("USER", 24), ("KEY", 16), ("KEY_ID", 20), ("TIME", 24), ("AUDIT_ID", 20),
        ("SEQ", 6), ("RESOLUTION", 11),
    ]

    mutating func write(_ finding: ReconcileFinding) {
        defer { rows += 1 }
        switch format {
        case .jsonl:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            print(String(decoding: (try? encoder.encode(finding)) ?? Data(), as: UTF8.self))
        case .csv:
            if rows == 0 { print(ReconcileFinding.columns.joined(separator: ",")) }
            print(finding.values.map(AuditTableWriter.csvField).joined(separator: ","))
        case .table:
            if rows == 0 { print(Self.tableColumns.map { $0.0.padding(toLength: $0.1, withPad: " ", startingAt: 0) }.joined(separator: " ")) }
            let values = [finding.finding.rawValue, finding.action, finding.user_email ?? "-", finding.key_name ?? "-",
                          finding.key_id ?? "-", finding.time, finding.audit_id ?? "-", finding.record_seq.map(String.init) ?? "-",
                          finding.resolution ?? "-"]
            print(zip(values, Self.tableColumns).map { value, column in
                value.count > column.1 ? String(value.prefix(column.1 - 1)) + "…" : value.padding(toLength: column.1, withPad: " ", startingAt: 0)
            }.joined(separator: " "))
        }
    }

    func finish() {
        if format == .table, rows == 0 { print("(nothing changed around the proxy, nothing unconfirmed)") }
        fflush(nil)
    }
}

/// Writes query rows as they come: nothing is held but the current row.
struct AuditTableWriter {
    let format: String
    private var rows = 0

    init(format: String) {
        self.format = format
    }

    private static let tableColumns: [(String, Int)] = [
        ("SEQ", 6), ("TIME", 24), ("ACTION", 6), ("USER", 24), ("KEY", 16), ("OUTCOME", 8), ("STATUS", 6),
        ("CALLER", 24), ("CLIENT", 15), ("REQUEST_ID", 36),
    ]

    mutating func write(_ entry: AuditEntry) {
        defer { rows += 1 }
        switch format {
        case "json":
            print(rows == 0 ? "[" : ",", terminator: "")
            print(Self.json(entry), terminator: "\n")
        case "jsonl":
            print(Self.json(entry))
        case "csv":
            if rows == 0 { print(AuditEntry.columns.joined(separator: ",")) }
            print(entry.values.map(Self.csvField).joined(separator: ","))
        default:
            if rows == 0 { print(Self.tableColumns.map { $0.0.padding(toLength: $0.1, withPad: " ", startingAt: 0) }.joined(separator: " ")) }
            let values = [String(entry.seq), entry.time, entry.action, entry.user_email, entry.key_name ?? "-", entry.outcome,
                          entry.upstream_status.map(String.init) ?? "-", entry.caller, entry.client, entry.request_id]
            print(zip(values, Self.tableColumns).map { value, column in
                value.count > column.1 ? String(value.prefix(column.1 - 1)) + "…" : value.padding(toLength: column.1, withPad: " ", startingAt: 0)
            }.joined(separator: " "))
        }
    }

    func finish() {
        switch format {
        case "json": print(rows == 0 ? "[]" : "]")
        case "table": if rows == 0 { print("(no matching mutations)") }
        default: break
        }
        fflush(nil)
    }

    private static func json(_ entry: AuditEntry) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(entry)) ?? Data(), as: UTF8.self)
    }

    static func csvField(_ value: String?) -> String {
        guard let value else { return "" }
        // A leading =, +, - or @ would run as a formula in a spreadsheet.
        let safe = value.first.map { "=+-@".contains($0) } == true ? "'" + value : value
        if safe.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
            return "\"" + safe.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }
        return safe
    }
}

