import GRDB

/// Where mutations are recorded: an intent before forwarding, its outcome after. `AuditLog`
/// (a hash-chained SQLite file) is today's.
///
/// What a second backend (PostgreSQL) must guarantee, because the proxy forwards a mutation
/// only once `recordIntent` returned:
/// - `recordIntent` returns only when the intent is durable (committed, synchronously
///   replicated where that is the promise); if it throws, the mutation is refused with 503;
/// - records are append-only and chained in one order (`seq`, `prev_hash`), so `audit verify`
///   finds any change, removal or reordering;
/// - an intent left without an outcome (a crash) is closed as `unknown` later, never dropped.
public protocol AuditSink: Sendable {
    func recordIntent(_ intent: AuditIntent) async throws -> AuditRecord
    @discardableResult
    func recordOutcome(of intent: AuditRecord, _ result: AuditResult) async throws -> AuditRecord
    /// Records in the log (`/_proxy/stats`), read without holding up appends for long.
    func recordCount() async throws -> Int
    /// Whether each record is an entry of a verifiable log whose checkpoint covers it once
    /// appended, so that an answer may carry `Mixpeek-Proxy-Audit-Index`.
    var isVerifiableLog: Bool { get }
    /// Returns once a signed checkpoint covers `outcome` (true), or false when none does: the
    /// answer then carries no `Mixpeek-Proxy-Audit-Index`.
    func covers(_ outcome: AuditRecord) async -> Bool
}

extension AuditSink {
    public var isVerifiableLog: Bool { false }
    public func covers(_ outcome: AuditRecord) async -> Bool { isVerifiableLog }
}

extension AuditLog: AuditSink {
    public var isVerifiableLog: Bool { signing != nil }

    public func recordCount() async throws -> Int {
        try await queue.read { db in try AuditRecord.fetchCount(db) }
    }
}
