import ArgumentParser
import Foundation
import Logging
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
        subcommands: [Query.self, Verify.self])

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
        @Option(help: "ok, rejected, error, timeout or unknown.") var outcome: String?
        @Option(help: "Only mutations made with the secret of this key (its key_id), when the proxy knew the key.") var actorKey: String?
        @Option(help: "Only mutations made with a key owned by this user_email.") var actorUser: String?
        @Option(help: "At most this many rows.") var limit: Int?
        @Option(help: "table, json, jsonl or csv.") var format: Format = .table

        func run() async throws {
            var filter = AuditFilter(user: user, key: key, since: since, until: until, limit: limit)
            filter.actorKey = actorKey
            filter.actorUser = actorUser
            if let action {
                guard let parsed = AuditAction(rawValue: action) else { throw ValidationError("--action must be create, update, rotate or delete") }
                filter.action = parsed
            }
            if let outcome {
                guard let parsed = AuditOutcome(rawValue: outcome) else { throw ValidationError("--outcome must be ok, rejected, error, timeout or unknown") }
                filter.outcome = parsed
            }
            for (name, value) in [("--since", since), ("--until", until)] {
                if let value, AuditLog.storedTime(value) == nil {
                    throw ValidationError("\(name) must be an RFC 3339 UTC time (2026-10-01T00:00:00Z) or a date (2026-10-01)")
                }
            }
            var writer = AuditTableWriter(format: format.rawValue)
            if let url = try postgres.url(dataDirGiven: dataDir.dataDir != nil) {
                let logger = Logs.quiet("mixpeek-proxy.audit")
                let connection = try await Audit.connect(url, logger: logger)
                do {
                    try await GroupChain.query(filter, on: connection, logger: logger) { writer.write($0) }
                } catch {
                    try? await connection.close()
                    throw ValidationError("audit query failed: \(GroupError.describe(error))")
                }
                try? await connection.close()
            } else {
                let log = try Audit.open(dataDir)
                try log.query(filter) { writer.write($0) }
            }
            writer.finish()
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
            if let url = try postgres.url(dataDirGiven: dataDir.dataDir != nil) {
                return try await verifyGroup(url, hmacKey: hmacKey, expectHead: head)
            }
            guard witness.isEmpty else { throw ValidationError("--witness goes with --postgres-url") }
            let log = try Audit.open(dataDir)
            let result = try log.verify(hmacKey: hmacKey)
            if let problem = result.problem {
                print("audit chain BROKEN after \(result.records) records: \(problem)")
                throw ExitCode(1)
            }
            if let head, try !log.contains(seq: head.seq, hash: head.hash) {
                try headMissing()
            }
            Self.report(result)
        }

        private func verifyGroup(_ url: PostgresURL, hmacKey: String?, expectHead: (seq: Int64, hash: String)?) async throws {
            let logger = Logs.quiet("mixpeek-proxy.audit")
            let connection = try await Audit.connect(url, logger: logger)
            let result: AuditVerification
            var headFound = true
            do {
                result = try await GroupChain.verify(on: connection, hmacKey: hmacKey, witnesses: witness, logger: logger)
                if let expectHead {
                    headFound = try await GroupChain.contains(seq: expectHead.seq, hash: expectHead.hash, on: connection, logger: logger)
                }
            } catch {
                try? await connection.close()
                print("audit verify failed: \(GroupError.describe(error))")
                throw ExitCode(2)
            }
            try? await connection.close()
            if let problem = result.problem {
                print("audit chain BROKEN after \(result.records) records: \(problem)")
                throw ExitCode(1)
            }
            if !headFound { try headMissing() }
            if !witness.isEmpty { print("witnesses: every record appended by \(witness.joined(separator: ", ")) is in the chain") }
            Self.report(result)
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

    private static func csvField(_ value: String?) -> String {
        guard let value else { return "" }
        // A leading =, +, - or @ would run as a formula in a spreadsheet.
        let safe = value.first.map { "=+-@".contains($0) } == true ? "'" + value : value
        if safe.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
            return "\"" + safe.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }
        return safe
    }
}

