import Crypto
import Foundation
import GRDB
import MixpeekAPI
import NIOConcurrencyHelpers

/// The mutations the audit log records.
public enum AuditAction: String, Sendable, Codable, CaseIterable {
    case create, update, rotate, delete
}

/// How a mutation ended.
public enum AuditOutcome: String, Sendable, Codable, CaseIterable {
    /// The upstream answered 2xx.
    case ok
    /// The upstream refused it (4xx): bad credential, protected key, unknown key, invalid body.
    case rejected
    /// The upstream failed (5xx) or could not be reached.
    case error
    /// No answer within the upstream timeout: it may or may not have happened upstream.
    case timeout
    /// The proxy stopped between recording the intent and the outcome.
    case unknown
    /// An `unknown` settled by the upstream's own audit log (`audit reconcile`): it was made.
    case applied
    /// An `unknown` settled by the upstream's own audit log: the window closed with no event.
    case notApplied = "not_applied"
}

/// One row of the append-only log: an *intent* (written and made durable before the
/// mutation is forwarded), an *outcome* (written after the upstream answered) or a
/// *resolution* (appended by `audit reconcile`: what the upstream's own audit log says of an
/// intent whose outcome was `unknown`).
public struct AuditRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "audit_records"

    public enum Kind: String, Codable, Sendable { case intent, outcome, resolution }

    public var seq: Int64
    public var kind: Kind
    /// For an outcome or a resolution: the `seq` of its intent.
    public var intent_seq: Int64?
    /// RFC 3339, UTC, milliseconds.
    public var time: String
    public var action: AuditAction
    public var user_email: String
    public var key_name: String?
    /// A fingerprint of the credential: Mixpeek's visible key prefix plus a short hash.
    public var caller: String
    public var client: String
    public var request_id: String
    public var upstream_status: Int?
    public var outcome: AuditOutcome?
    public var duration_ms: Double?
    public var key_id: String?
    public var key_prefix: String?
    public var key_hash: String?
    public var prev_hash: String
    public var hash: String
    /// The W3C trace id of the request that made the mutation (32 lowercase hex digits); nil
    /// in records written before the proxy kept it (in a group's chain: before its migration
    /// v4-trace-actor-resolution).
    public var trace_id: String? = nil
    /// The key that acted, when the proxy had seen the key its bearer secret belongs to
    /// (`KeyIdentity`): its `key_id`, `key_prefix`, `name` and owning user. Nil in records of an
    /// unknown credential (the `caller` fingerprint then says all there is), and in records
    /// written before the proxy kept them.
    public var actor_key_id: String? = nil
    public var actor_key_prefix: String? = nil
    public var actor_key_name: String? = nil
    public var actor_user: String? = nil

    var hasActor: Bool { actor_key_id != nil || actor_key_prefix != nil || actor_key_name != nil || actor_user != nil }

    /// For a resolution: the upstream's `audit_id` of the event that settled it (nil for
    /// `not_applied`, and in every other record).
    public var upstream_audit_id: String? = nil

    /// The bytes the hash covers: every field but `hash`, each length-prefixed so that no
    /// two different records encode alike, followed by the previous record's hash. That is
    /// `mixpeek-proxy-audit-v1`, `seq`, `canonicalBody`, `prev_hash` (`mixpeek_audit_chain`
    /// in the group's schema puts them together the same way).
    var canonicalEncoding: Data {
        var bytes = Array("mixpeek-proxy-audit-v1".utf8)
        let body = canonicalBody
        bytes.reserveCapacity(bytes.count + body.count + 100)
        Self.appendField(String(seq), to: &bytes)
        bytes.append(contentsOf: body)
        Self.appendField(prev_hash, to: &bytes)
        return Data(bytes)
    }

    /// The canonical encoding of the fields between `seq` and `prev_hash`: what a record says,
    /// whatever its place in a chain.
    var canonicalBody: [UInt8] {
        let fields: [String?] = [
            kind.rawValue, intent_seq.map(String.init), time, action.rawValue, user_email, key_name,
            caller, client, request_id, upstream_status.map(String.init), outcome?.rawValue,
            duration_ms.map(Self.threeDecimals), key_id, key_prefix, key_hash,
        ]
        var bytes: [UInt8] = []
        bytes.reserveCapacity(fields.reduce(0) { $0 + 8 + ($1?.utf8.count ?? 0) } + 40)
        for field in fields { Self.appendField(field, to: &bytes) }
        // Each extra field only when present, so that a record without them encodes, and so
        // hashes, as records did before they existed. With an acting key or an upstream audit id:
        // the trace id's place first (`|-` without one), then the four actor fields, then the
        // audit id; the field counts (1, 2, 5, 6) tell every combination apart, as `prev_hash` (64 hex digits,
        // no `|`) follows.
        if hasActor {
            for field in [trace_id, actor_key_id, actor_key_prefix, actor_key_name, actor_user] { Self.appendField(field, to: &bytes) }
            if let upstream_audit_id { Self.appendField(upstream_audit_id, to: &bytes) }
        } else if let upstream_audit_id {
            Self.appendField(trace_id, to: &bytes)
            Self.appendField(upstream_audit_id, to: &bytes)
        } else if let trace_id {
            Self.appendField(trace_id, to: &bytes)
        }
        return bytes
    }

    /// `|length:value`, the length in UTF-8 bytes, or `|-` for a field without a value.
    private static func appendField(_ field: String?, to bytes: inout [UInt8]) {
        guard let field else { return bytes.append(contentsOf: "|-".utf8) }
        bytes.append(UInt8(ascii: "|"))
        bytes.append(contentsOf: String(field.utf8.count).utf8)
        bytes.append(UInt8(ascii: ":"))
        bytes.append(contentsOf: field.utf8)
    }

    /// `String(format: "%.3f", value)`, which the hashes of existing logs were computed with,
    /// without its cost for the values the log writes: durations already rounded to the
    /// millisecond, where the nearest three-decimal number is the one they were rounded to.
    static func threeDecimals(_ value: Double) -> String {
        let thousandths = (value * 1000).rounded()
        guard value.sign == .plus, thousandths < 1e15, thousandths / 1000 == value else {
            return String(format: "%.3f", value)
        }
        let whole = Int(thousandths)
        let fraction = whole % 1000
        let digits = fraction < 10 ? "00" : fraction < 100 ? "0" : ""
        return "\(whole / 1000).\(digits)\(fraction)"
    }

    /// The record's hash: SHA-256 of its canonical encoding, or HMAC-SHA-256 under `key`.
    func computeHash(key: Data?) -> String {
        let data = canonicalEncoding
        if let key {
            return HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)).hex
        }
        return SHA256.hash(data: data).hex
    }

    /// This draft as the record after `(seq, hash)` in a chain: its `seq`, `prev_hash` and hash.
    func chained(after head: (seq: Int64, hash: String), key: Data?) -> AuditRecord {
        var record = self
        record.seq = head.seq + 1
        record.prev_hash = head.hash
        record.hash = record.computeHash(key: key)
        return record
    }

    /// `drafts` as the records after `(seq, hash)`, each chained on the one before: the one
    /// chaining loop of both audit backends (audit.sqlite's writer, a group's appender).
    static func chain(_ drafts: some Sequence<AuditRecord>, after head: (seq: Int64, hash: String), key: Data?) -> [AuditRecord] {
        var head = head
        return drafts.map { draft in
            let record = draft.chained(after: head, key: key)
            head = (record.seq, record.hash)
            return record
        }
    }

    /// The `prev_hash` of the first record.
    static let genesis = String(repeating: "0", count: 64)
}

/// What a mutation's intent says, before the upstream is asked.
public struct AuditIntent: Sendable {
    public var action: AuditAction
    public var user: String
    public var key: String?
    public var caller: String
    public var client: String
    public var requestID: String
    /// The W3C trace id of the request (`TraceContext`).
    public var traceID: String?
    /// The key whose secret made the request, when the proxy knows it.
    public var actor: KeyIdentity?

    public init(action: AuditAction, user: String, key: String?, caller: String, client: String, requestID: String,
                traceID: String? = nil, actor: KeyIdentity? = nil) {
        self.action = action
        self.user = user
        self.key = key
        self.caller = caller
        self.client = client
        self.requestID = requestID
        self.traceID = traceID
        self.actor = actor
    }
}

/// What happened to a mutation.
public struct AuditResult: Sendable {
    public var outcome: AuditOutcome
    public var upstreamStatus: Int?
    public var durationMS: Double
    public var keyID: String?
    public var keyPrefix: String?
    public var keyHash: String?

    public init(outcome: AuditOutcome, upstreamStatus: Int?, durationMS: Double,
                keyID: String? = nil, keyPrefix: String? = nil, keyHash: String? = nil) {
        self.outcome = outcome
        self.upstreamStatus = upstreamStatus
        self.durationMS = durationMS
        self.keyID = keyID
        self.keyPrefix = keyPrefix
        self.keyHash = keyHash
    }
}

/// What the upstream's own audit log says of a mutation recorded `unknown`.
public struct AuditResolution: Sendable, Equatable {
    /// `applied` or `notApplied`.
    public var outcome: AuditOutcome
    /// The upstream event's `audit_id` (applied only).
    public var auditID: String?
    /// The key the event names (its `resource_id`).
    public var keyID: String?

    public init(outcome: AuditOutcome, auditID: String?, keyID: String?) {
        self.outcome = outcome
        self.auditID = auditID
        self.keyID = keyID
    }
}

/// The caller fingerprint an auditor can match to a key in the Mixpeek dashboard: the first
/// 10 characters Mixpeek itself shows as `key_prefix`, plus 8 hex of SHA-256 of the token.
/// A token that does not look like a Mixpeek key gets the hash alone, so that a short or
/// foreign token is never written even in part.
///
/// One per proxy, remembering fingerprints already computed: a client sends the same
/// `Authorization` on every call, and hashing it again per mutation is measurable.
public final class CallerFingerprints: Sendable {
    private let known = NIOLockedValueBox(BoundedMemo<String>(capacity: 1_000))

    public init() {}

    public func of(authorization: String?) -> String {
        guard let authorization, !authorization.isEmpty else { return "anonymous" }
        return known.withLockedValue { $0.value(for: authorization, else: Self.compute) }
    }

    static func compute(authorization: String) -> String {
        let parts = authorization.split(separator: " ", maxSplits: 1)
        let token = parts.count == 2 && parts[0].lowercased() == "bearer" ? String(parts[1]) : authorization
        let hash = String(SHA256.hash(data: Data(token.utf8)).hex.prefix(8))
        // Counted in code points, as Mixpeek's `key_prefix` is, not in Swift's Characters.
        let scalars = token.unicodeScalars
        if token.utf8.starts(with: "sk_".utf8), scalars.count >= 24 {
            return "\(String(String.UnicodeScalarView(scalars.prefix(10))))…\(hash)"
        }
        return "sha256:\(hash)"
    }
}
