import Dispatch
import Logging

/// What reads an audit chain for the status page, whichever backend keeps it: its panel (the
/// newest records) and "verify now" (the whole walk). `AuditLog` reads audit.sqlite on its
/// pool's reader connections (WAL snapshots, beside the appends); `GroupChainReader` reads a
/// group's chain on a PostgreSQL connection of its own, apart from the member's, whose lease
/// renewals a long walk would hold up.
protocol AuditReading: Sendable {
    /// The record count, the head (`seq:hash`) and the newest `count` mutations, newest first,
    /// read together so that they agree.
    func newest(_ count: Int) async throws -> (records: Int, head: String?, mutations: [AuditEntry])
    /// The whole chain checked: `audit verify` (in a group, `--postgres-url --witness` with this
    /// proxy's own witness file).
    func verifyChain() async throws -> AuditVerification
    /// At shutdown.
    func close() async
}

extension AuditLog: AuditReading {
    /// On a utility queue: the walk reads the whole file.
    func verifyChain() async throws -> AuditVerification {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(with: Result { try self.verifyWithOwnKey() })
            }
        }
    }

    func close() async {}
}

/// A group's chain as the status page reads it.
final class GroupChainReader: AuditReading {
    private let link: GroupLink
    private let hmacKey: String?
    /// This proxy's data dir, whose witness file the walk checks.
    private let witness: String
    private let logger: Logger

    init(settings: GroupSettings, hmacKey: String?, dataDir: String, logger: Logger) {
        link = GroupLink(url: settings.database, applicationName: "mixpeek-proxy \(settings.proxyID) status", logger: logger)
        self.hmacKey = hmacKey
        witness = dataDir
        self.logger = logger
    }

    func newest(_ count: Int) async throws -> (records: Int, head: String?, mutations: [AuditEntry]) {
        try await link.run { connection in try await GroupChain.newest(count, on: connection, logger: self.logger) }
    }

    func verifyChain() async throws -> AuditVerification {
        try await link.run(timeout: 3600) { connection in
            try await GroupChain.verify(on: connection, hmacKey: self.hmacKey, witnesses: [self.witness], logger: self.logger)
        }
    }

    /// The group's members and the chain's head, for the group panel, within 3 s.
    func members() async throws -> (head: Int64, members: [StatusSnapshot.Member]) {
        try await link.run(timeout: 3) { connection in try await GroupChain.members(on: connection, logger: self.logger) }
    }

    /// PostgresNIO requires a connection closed before it goes.
    func close() async {
        await link.close()
    }
}
