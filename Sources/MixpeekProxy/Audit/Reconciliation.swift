import Foundation
import MixpeekAPI

/// One event of the upstream's organisation audit log (`AuditEventResponse`, OpenAPI 0.81).
public struct UpstreamAuditEvent: Decodable, Sendable, Equatable {
    public var audit_id: String
    public var timestamp: String
    public var resource_type: String
    public var resource_id: String
    public var action: String
    public var actor_id: String
    public var status: String?
    /// `changes` where it is an object of strings (free-form in the spec): the key's
    /// `user_email` and `name` when the upstream says them.
    public var changes: [String: String]?

    public init(audit_id: String, timestamp: String, resource_type: String = "api_key", resource_id: String,
                action: String, actor_id: String, status: String? = "success", changes: [String: String]? = nil) {
        (self.audit_id, self.timestamp, self.resource_type, self.resource_id) = (audit_id, timestamp, resource_type, resource_id)
        (self.action, self.actor_id, self.status, self.changes) = (action, actor_id, status, changes)
    }

    private enum CodingKeys: String, CodingKey {
        case audit_id, timestamp, resource_type, resource_id, action, actor_id, status, changes
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        audit_id = try container.decode(String.self, forKey: .audit_id)
        timestamp = try container.decode(String.self, forKey: .timestamp)
        resource_type = try container.decode(String.self, forKey: .resource_type)
        resource_id = try container.decode(String.self, forKey: .resource_id)
        action = try container.decode(String.self, forKey: .action)
        actor_id = try container.decode(String.self, forKey: .actor_id)
        status = try container.decodeIfPresent(String.self, forKey: .status)
        changes = try? container.decodeIfPresent([String: String].self, forKey: .changes)
    }

    /// The proxy's name for the event's action (`api_key_created` is `create`), nil for
    /// actions the proxy never records.
    public var proxyAction: AuditAction? {
        switch action {
        case "api_key_created": .create
        case "api_key_rotated": .rotate
        case "api_key_revoked": .delete
        case "api_key_scope_updated": .update
        default: nil
        }
    }

    var succeeded: Bool { status == nil || status == "success" }
}

/// One line of `audit reconcile`.
public struct ReconcileFinding: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// An upstream event with no proxy record: a change made elsewhere.
        case around_proxy
        /// An intent recorded `unknown` that the upstream's log settles.
        case resolved_unknown
        /// A record the proxy calls applied that the upstream's log does not show.
        case unconfirmed
    }

    public var finding: Kind
    /// The proxy's action name (`create`, …), or the upstream's for an action the proxy does not know.
    public var action: String
    public var key_id: String?
    public var key_name: String?
    public var user_email: String?
    /// The upstream event's time, or the intent's when there is no event.
    public var time: String
    public var audit_id: String?
    /// The proxy record's seq (its intent).
    public var record_seq: Int64?
    /// For `resolved_unknown`: `applied` or `not_applied`.
    public var resolution: String?

    /// Its columns, in the order of the CSV: the JSON line, the CSV header and its rows.
    static let storedColumns: [StoredColumn<ReconcileFinding>] = [
        .code("finding", \.finding), .text("action", \.action), .maybeText("key_id", \.key_id),
        .maybeText("key_name", \.key_name), .maybeText("user_email", \.user_email), .text("time", \.time),
        .maybeText("audit_id", \.audit_id), .maybeInteger("record_seq", \.record_seq), .maybeText("resolution", \.resolution),
    ]

    /// Every field, `null` when it has no value: a line always has the same keys.
    public func encode(to encoder: any Encoder) throws {
        try Self.storedColumns.encode(self, to: encoder)
    }

    public static var columns: [String] { storedColumns.map(\.label) }

    public var values: [String?] { Self.storedColumns.map { $0.read(self).printed } }

    /// Whether a compliance job should fail on it: a change around the proxy, or a record the
    /// upstream does not confirm. A settled `unknown` is news, not a failure.
    public var fails: Bool { finding != .resolved_unknown }
}

/// Holds the proxy's mutations against the upstream's audit log: the pure part of
/// `audit reconcile`, with no file and no network.
public struct Reconciliation: Sendable {
    /// The window: intents from `since` (inclusive) to `until` (exclusive); upstream events
    /// may be read `slack` further on either side, and only those inside it are reported.
    public var since: Date
    public var until: Date
    public var slack: TimeInterval

    public init(since: Date, until: Date, slack: TimeInterval) {
        (self.since, self.until, self.slack) = (since, until, slack)
    }

    /// How far before the window `run` reads the proxy's records: a mutation recorded just
    /// before it may reach the upstream inside it (after a slow upstream, or a proxy paused
    /// between its intent and its forward), and its event must find its record, not be taken
    /// for a change made around the proxy. Those records match events; they are never reported.
    public static let lookback: TimeInterval = 120

    /// The findings for `events` (any order) against `entries` (intents joined with their
    /// outcome and resolution, as `audit query` reads them), oldest first.
    public func findings(events: [UpstreamAuditEvent], entries: [AuditEntry]) -> [ReconcileFinding] {
        struct Candidate {
            var entry: AuditEntry
            var start: Date
            var end: Date
            var matched: UpstreamAuditEvent?
        }
        let relevant = Set(["ok", "unknown", "applied", "timeout", "error"])
        var candidates: [Candidate] = entries.compactMap { entry in
            guard relevant.contains(entry.outcome), let start = Self.date(entry.time) else { return nil }
            let end = entry.finished_at.flatMap(Self.date) ?? start
            return Candidate(entry: entry, start: start - slack, end: end + slack)
        }
        var dated: [(event: UpstreamAuditEvent, time: Date)] = events.compactMap { event in
            guard event.succeeded, let time = Self.date(event.timestamp) else { return nil }
            return (event, time)
        }
        dated.sort { $0.time < $1.time }
        var unmatched: [Int] = []
        func fits(_ candidate: Candidate, _ event: UpstreamAuditEvent, _ time: Date) -> Bool {
            candidate.matched == nil && candidate.entry.action == event.proxyAction?.rawValue
                && candidate.start <= time && time <= candidate.end
        }
        // By key id first, where the proxy knows it (create and rotate answers carry it).
        for (index, (event, time)) in dated.enumerated() {
            if let found = candidates.indices.first(where: {
                fits(candidates[$0], event, time) && candidates[$0].entry.key_id == event.resource_id
            }) {
                candidates[found].matched = event
            } else {
                unmatched.append(index)
            }
        }
        // Then by action, user (and name, when the event says it) and the nearest time.
        var aroundProxy: [(UpstreamAuditEvent, Date)] = []
        for index in unmatched {
            let (event, time) = dated[index]
            let user = event.changes?["user_email"].map(UserIdentity.folded)
            let name = event.changes?["name"]
            let found = candidates.indices.filter { index in
                let entry = candidates[index].entry
                return fits(candidates[index], event, time)
                    && (entry.key_id == nil || entry.key_id == event.resource_id)
                    && (user == nil || UserIdentity.folded(entry.user_email) == user)
                    && (name == nil || entry.key_name == nil || entry.key_name == name)
            }.min { abs(candidates[$0].start.timeIntervalSince(time)) < abs(candidates[$1].start.timeIntervalSince(time)) }
            if let found {
                candidates[found].matched = event
            } else if time >= since && time < until {
                aroundProxy.append((event, time))
            }
        }
        var findings: [(Date, ReconcileFinding)] = aroundProxy.map { event, time in
            (time, ReconcileFinding(
                finding: .around_proxy, action: event.proxyAction?.rawValue ?? event.action, key_id: event.resource_id,
                key_name: event.changes?["name"], user_email: event.changes?["user_email"], time: event.timestamp,
                audit_id: event.audit_id, record_seq: nil))
        }
        // Records from before the window (read to match the events at its start) are not reported.
        for candidate in candidates where candidate.start + slack >= since && candidate.start + slack < until {
            let entry = candidate.entry
            let time = candidate.start + slack
            switch (entry.outcome, candidate.matched) {
            case ("unknown", let event?):
                findings.append((time, ReconcileFinding(
                    finding: .resolved_unknown, action: entry.action, key_id: event.resource_id, key_name: entry.key_name,
                    user_email: entry.user_email, time: event.timestamp, audit_id: event.audit_id, record_seq: entry.seq,
                    resolution: AuditOutcome.applied.rawValue)))
            case ("unknown", nil):
                findings.append((time, ReconcileFinding(
                    finding: .resolved_unknown, action: entry.action, key_id: nil, key_name: entry.key_name,
                    user_email: entry.user_email, time: entry.time, audit_id: nil, record_seq: entry.seq,
                    resolution: AuditOutcome.notApplied.rawValue)))
            case ("ok", nil), ("applied", nil):
                findings.append((time, ReconcileFinding(
                    finding: .unconfirmed, action: entry.action, key_id: entry.key_id, key_name: entry.key_name,
                    user_email: entry.user_email, time: entry.time, audit_id: entry.upstream_audit_id, record_seq: entry.seq)))
            default:
                break
            }
        }
        return findings.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// The resolution a `resolved_unknown` finding appends.
    public static func resolution(of finding: ReconcileFinding) -> AuditResolution? {
        guard finding.finding == .resolved_unknown, let outcome = finding.resolution.flatMap(AuditOutcome.init(rawValue:)) else {
            return nil
        }
        return AuditResolution(outcome: outcome, auditID: finding.audit_id, keyID: finding.key_id)
    }

    /// An ISO 8601 instant as the proxy writes them or as an upstream may (fraction of any
    /// length, `Z`, an offset, or none: UTC).
    public static func date(_ text: String) -> Date? {
        guard let match = text.wholeMatch(of: #/(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?)?([Zz]|[+-]\d{2}:?\d{2})?/#) else {
            return nil
        }
        var time = String(match.2 ?? "00:00:00")
        if time.count == 5 { time += ":00" }
        let zone = match.4.map { $0 == "z" || $0 == "Z" ? "Z" : String($0) } ?? "Z"
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        guard let whole = formatter.date(from: "\(match.1)T\(time)\(zone)") else { return nil }
        let fraction = match.3.flatMap { Double("0." + $0) } ?? 0
        return whole + fraction
    }
}

/// The audit log `audit reconcile` reads and settles: audit.sqlite (`AuditLog`) or a group's
/// chain in PostgreSQL (`GroupChainLog`). Resolutions are appended as new chained records.
public protocol ReconciledLog: Sendable {
    /// The mutations (intents with their outcome as it stands) matching `filter`, oldest first.
    func mutations(_ filter: AuditFilter) async throws -> [AuditEntry]
    /// Whether the last record's hash is the one the reconciling key makes of it: a resolution
    /// chained under another key (or none, on an HMAC chain) would break the chain.
    func headVerifies() async throws -> Bool
    func intent(seq: Int64) async throws -> AuditRecord?
    @discardableResult
    func recordResolution(of intent: AuditRecord, _ resolution: AuditResolution) async throws -> AuditRecord
}

extension AuditLog: ReconciledLog {
    public func mutations(_ filter: AuditFilter) async throws -> [AuditEntry] {
        var entries: [AuditEntry] = []
        try query(filter) { entries.append($0) }
        return entries
    }
}

/// What one reconcile found: how much it read, and its findings (resolutions appended).
public struct ReconcileRun: Sendable {
    public var events: Int
    public var mutations: Int
    public var findings: [ReconcileFinding]

    public func count(_ kind: ReconcileFinding.Kind) -> Int { findings.filter { $0.finding == kind }.count }
}

/// Why a reconcile appended nothing: the log's last record does not verify with the key it
/// was given, so a resolution chained on it would break the chain.
public struct ReconcileHeadMismatch: Error, CustomStringConvertible {
    public var description: String {
        "the log's last record does not verify with this key, so no resolution is appended: set \(ProxyConfig.auditHMACKeyVariable) as the proxy has it"
    }
}

extension Reconciliation {
    /// `audit reconcile`, and each round of `reconcile_interval`: reads the upstream's events of
    /// the window (with `slack` on either side), holds `log`'s mutations of the window against
    /// them, and appends a resolution record for each `resolved_unknown`. Throws
    /// `UpstreamAuditError` when the upstream's log cannot be read, `ReconcileHeadMismatch`, or
    /// the log's own error.
    public func run(against log: any ReconciledLog, source: UpstreamAuditLog,
                    progress: (Int, Int) -> Void = { _, _ in }) async throws -> ReconcileRun {
        let events = try await source.events(start: since - slack, end: until + slack, progress: progress)
        let entries = try await log.mutations(AuditFilter(since: Timestamp.string(since - Self.lookback), until: Timestamp.string(until)))
        let findings = findings(events: events, entries: entries)
        let resolutions = findings.filter { $0.finding == .resolved_unknown }
        if !resolutions.isEmpty, try await !log.headVerifies() { throw ReconcileHeadMismatch() }
        for finding in resolutions {
            guard let seq = finding.record_seq, let intent = try await log.intent(seq: seq),
                  let resolution = Self.resolution(of: finding) else { continue }
            try await log.recordResolution(of: intent, resolution)
        }
        return ReconcileRun(events: events.count, mutations: entries.count, findings: findings)
    }
}
