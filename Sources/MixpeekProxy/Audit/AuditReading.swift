import Dispatch
import Foundation
import Logging
import MixpeekLog
import PostgresNIO

/// What reads an audit chain, whichever backend keeps it: `audit query` (mutations and the
/// `--records` export), `audit verify` and the status page go through it alike. `AuditLog`
/// reads audit.sqlite on its pool's reader connections (WAL snapshots, beside the appends);
/// `GroupChainReader` reads a group's chain on a PostgreSQL connection of its own, apart from
/// the member's, whose lease renewals a long walk would hold up.
public protocol AuditReader: Sendable {
    /// The mutations matching `filter`, oldest first, one at a time (never all in memory).
    func query(_ filter: AuditFilter, _ body: (AuditEntry) throws -> Void) async throws
    /// Every record after `seq`, in order, each as its verifiable-log entry.
    func entries(after seq: Int64, limit: Int?, _ body: ([UInt8]) throws -> Void) async throws
    /// The whole chain walked under `hmacKey` (nil: a SHA-256 chain); in a group, every record
    /// in each of `witnesses` (proxies' data directories) must be in it as that proxy wrote it.
    func verifyChain(hmacKey: String?, witnesses: [String]) async throws -> AuditVerification
    /// Whether the tree extends `checkpoint` and every record's entry is its leaf.
    func verifyLog(extending checkpoint: Checkpoint, verifier: SignedNote.Verifier?) async throws -> LogVerification
    /// Whether record `seq` is in the chain with this hash (`audit verify --expect-head`).
    func contains(seq: Int64, hash: String) async throws -> Bool
    /// The record count, the head (`seq:hash`) and the newest `count` mutations, newest first,
    /// read together so that they agree (the status page's audit panel).
    func newest(_ count: Int) async throws -> (records: Int, head: String?, mutations: [AuditEntry])
    /// The chain checked as this proxy writes it: its own key, and in a group its own witness
    /// file (the status page's "verify now").
    func verifyChain() async throws -> AuditVerification
    /// At the end (PostgresNIO requires a connection closed before it goes).
    func close() async
}

/// A witness file is a group member's: audit.sqlite has none.
public struct WitnessesNeedAGroup: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "--witness goes with --postgres-url (audit.sqlite is one proxy's own chain)" }
}

extension AuditLog: AuditReader {
    public func verifyChain(hmacKey: String?, witnesses: [String]) throws -> AuditVerification {
        guard witnesses.isEmpty else { throw WitnessesNeedAGroup() }
        return try verify(hmacKey: hmacKey)
    }

    /// On a utility queue: the walk reads the whole file.
    public func verifyChain() async throws -> AuditVerification {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(with: Result { try self.verifyWithOwnKey() })
            }
        }
    }

    public func close() async {}
}

/// A group's chain as `audit` and the status page read it.
public final class GroupChainReader: AuditReader {
    /// The status page's link reconnects after a failure; the command line's one connection
    /// lives as long as the command.
    private enum Access: Sendable {
        case link(GroupLink)
        case connection(PostgresConnection)
    }

    private let access: Access
    private let hmacKey: String?
    /// This proxy's data dir, whose witness file the status page's walk checks.
    private let witness: String?
    private let logger: Logger

    init(settings: GroupSettings, hmacKey: String?, dataDir: String, logger: Logger) {
        access = .link(GroupLink(url: settings.database, applicationName: "mixpeek-proxy \(settings.proxyID) status", logger: logger))
        self.hmacKey = hmacKey
        witness = dataDir
        self.logger = logger
    }

    /// For the command line: the chain on `connection` (`GroupChain.connect`), closed by `close`.
    public init(connection: PostgresConnection, logger: Logger) {
        access = .connection(connection)
        hmacKey = nil
        witness = nil
        self.logger = logger
    }

    /// `body` on the connection, within `timeout` seconds on the status page's link.
    private func run<T: Sendable>(timeout: Double = 10, _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        switch access {
        case .link(let link): try await link.run(timeout: timeout, body)
        case .connection(let connection): try await body(connection)
        }
    }

    /// The connection, for a body that streams to its caller.
    private func connection() async throws -> PostgresConnection {
        switch access {
        case .link(let link): try await link.connected()
        case .connection(let connection): connection
        }
    }

    public func query(_ filter: AuditFilter, _ body: (AuditEntry) throws -> Void) async throws {
        try await GroupChain.query(filter, on: try await connection(), logger: logger, body)
    }

    public func entries(after seq: Int64, limit: Int?, _ body: ([UInt8]) throws -> Void) async throws {
        try await GroupLogTree.entries(after: seq, limit: limit, on: try await connection(), logger: logger, body)
    }

    public func verifyChain(hmacKey: String?, witnesses: [String]) async throws -> AuditVerification {
        try await run(timeout: 3600) { [logger] connection in
            try await GroupChain.verify(on: connection, hmacKey: hmacKey, witnesses: witnesses, logger: logger)
        }
    }

    public func verifyLog(extending checkpoint: Checkpoint, verifier: SignedNote.Verifier?) async throws -> LogVerification {
        try await run(timeout: 3600) { [logger] connection in
            try await GroupLogTree.verify(extending: checkpoint, verifier: verifier, on: connection, logger: logger)
        }
    }

    public func contains(seq: Int64, hash: String) async throws -> Bool {
        try await run { [logger] connection in try await GroupChain.contains(seq: seq, hash: hash, on: connection, logger: logger) }
    }

    public func newest(_ count: Int) async throws -> (records: Int, head: String?, mutations: [AuditEntry]) {
        try await run { [logger] connection in try await GroupChain.newest(count, on: connection, logger: logger) }
    }

    public func verifyChain() async throws -> AuditVerification {
        try await verifyChain(hmacKey: hmacKey, witnesses: witness.map { [$0] } ?? [])
    }

    /// The group's members and the chain's head, for the group panel, within 3 s.
    func members() async throws -> (head: Int64, members: [StatusSnapshot.Member]) {
        try await run(timeout: 3) { [logger] connection in try await GroupChain.members(on: connection, logger: logger) }
    }

    public func close() async {
        switch access {
        case .link(let link): await link.close()
        case .connection(let connection): try? await connection.close()
        }
    }
}
