import Foundation

/// Everything the status page shows, as `GET /_proxy/status.json` serves it (docs/STATUS-PAGE.md
/// documents each field). It holds no token, no secret and no key value: mutations carry the
/// caller's fingerprint and the key's name only.
public struct StatusSnapshot: Codable, Sendable {
    /// Bumped when a field changes meaning or goes away (new fields may come at any time).
    public var version = 1
    public var generated_at: String
    public var started_at: String
    public var savings: Savings
    public var upstream: Upstream
    public var cache: Cache
    public var audit: Audit
    /// This proxy's group (`postgres_url`); null for a lone proxy, and the page then shows
    /// nothing for it.
    public var group: Group?

    public struct Savings: Codable, Sendable {
        public var hit_ratio: Double
        public var upstream_list_calls_saved: Int
        public var upstream_list_calls: Int
        public var hits: Int
        public var misses: Int
        public var stale: Int
        public var coalesced: Int
        public var bypass: Int
        /// The last hour, a minute a slot, oldest first; the last slot is the running minute.
        public var minutes: [MinuteHistory.Minute]
    }

    public struct Upstream: Codable, Sendable {
        public enum State: String, Codable, Sendable {
            /// The last call got an answer below 500.
            case reachable
            /// The last call got a 5xx.
            case erroring
            /// The last call got no answer (refused, timed out).
            case unreachable
            /// No call yet since the proxy started.
            case unknown
        }

        public struct Failure: Codable, Sendable {
            public var time: String
            public var message: String
        }

        /// Scheme, host and port only.
        public var url: String
        public var state: State
        public var last_call: String?
        public var last_error: Failure?
        public var window_seconds: Int
        public var list_misses: Latency
        public var mutations: Latency
    }

    /// Upstream calls within the window and their latencies (null when there were none).
    public struct Latency: Codable, Sendable {
        public var count: Int
        public var p50_ms: Double?
        public var p99_ms: Double?
    }

    public struct Cache: Codable, Sendable {
        /// Lists and body bytes in the cache file (null when it is unusable), and their bounds.
        public var entries: Int?
        public var entries_max: Int
        public var bytes: Int?
        public var bytes_max: Int
        /// The memory tier hits are answered from.
        public var memory_entries: Int
        public var memory_bytes: Int
        public var memory_bytes_max: Int
        public var ttl_seconds: Double
        public var stale_if_error_seconds: Double
        /// Secrets of keys revoked through this proxy: none is answered from the cache.
        public var revoked_credentials: Int = 0
        /// The newest revocations made through this proxy, newest first.
        public var recent_revocations: [RevokedKey] = []
    }

    /// A key revoked through this proxy: from then on its secret reads nothing from the cache.
    /// Names it by prefix and name, never by its secret or hash.
    public struct RevokedKey: Codable, Sendable, Equatable {
        public var time: String
        public var key_prefix: String?
        public var key_name: String
        public var user_email: String
        /// `delete`, `rotate` or `update` (to a status other than active).
        public var via: String
        /// The proxy it went through: this one's id in a group, null for a lone proxy.
        public var proxy_id: String?
    }

    public struct Audit: Codable, Sendable {
        /// False when the audit file cannot be read: the rest of this object is then empty.
        public var available: Bool
        public var records: Int
        /// `seq:hash` of the newest record: keep it elsewhere for `audit verify --expect-head`.
        public var head: String?
        /// The last round of `reconcile_interval`; null when it is off.
        public var reconcile: Reconcile? = nil
        /// The newest mutations, newest first.
        public var recent: [Mutation]
        public var last_verification: Verification?
        /// The verifier key of the log's signed checkpoints (`audit log-key`; in a group, this
        /// member's key, which cosigns the group's log).
        public var log_verifier_key: String? = nil
        /// In a group, why this member refuses mutations: the group's log does not extend the
        /// checkpoint it signed last. Null while it does.
        public var log_problem: String? = nil
    }

    /// The proxy's own `audit reconcile` (`reconcile_interval`): its last round over the last
    /// `window_hours`; the counts are null before the first round and when it could not run.
    public struct Reconcile: Codable, Sendable, Equatable {
        public var interval_seconds: Double
        public var window_hours: Int
        public var time: String? = nil
        /// Key changes the upstream's log shows and the proxy's does not: made around it.
        public var around_proxy: Int? = nil
        public var unconfirmed: Int? = nil
        public var resolved_unknown: Int? = nil
        /// Why the last round could not run.
        public var problem: String? = nil
    }

    /// One mutation as the page lists it.
    public struct Mutation: Codable, Sendable, Equatable {
        public var seq: Int64
        public var time: String
        public var action: String
        public var user_email: String
        public var key_name: String?
        public var outcome: String
        public var upstream_status: Int?
        public var caller: String
        public var request_id: String
        /// The W3C trace id of the request, when the record keeps one.
        public var trace_id: String? = nil
        /// The key that acted (name, prefix, owner), when the proxy knew it.
        public var actor: String? = nil
    }

    public struct Verification: Codable, Sendable {
        public var time: String
        public var intact: Bool
        public var records: Int
        /// The head verified up to, when intact.
        public var head: String?
        /// The first broken record and how, when not.
        public var problem: String?
        public var unknown_outcomes: Int
        public var duration_ms: Double
    }

    /// This proxy in its group.
    public struct Group: Codable, Sendable {
        public var proxy_id: String
        /// `ok` or `unreachable`, as `/_proxy/health` says.
        public var state: String
        /// Whether this proxy's PostgreSQL role could rewrite the audit chain (it owns the
        /// chain's tables or functions, or is a superuser); null until it has joined once.
        public var audit_role_can_rewrite: Bool?
        /// Why it could, in words (empty when it cannot).
        public var audit_role_rights: [String]
        /// Whether this proxy's LISTEN connection is up, and whether its lease lets it serve hits now.
        public var listening: Bool
        public var serving_hits: Bool
        /// The last chain record this proxy has acted on, and the chain's head (null when
        /// PostgreSQL did not answer the page).
        public var read_seq: Int64
        public var chain_head: Int64?
        /// Mutations open anywhere in the group, as this proxy knows them.
        public var open_intents: Int
        /// `mixpeek_proxies` as PostgreSQL has it (empty when it did not answer the page).
        public var members: [Member]
    }

    /// A member of the group, as its row in `mixpeek_proxies` says.
    public struct Member: Codable, Sendable {
        public var proxy_id: String
        /// Whether its lease is live, and for how many more seconds (negative: ended that long ago).
        public var live: Bool
        public var lease_left_seconds: Double
        /// How far it has read the chain (`read_seq`, written with each renewal), and how many
        /// records it is behind the head.
        public var read_seq: Int64
        public var lag: Int64
        /// Its channel protocol (`mixpeek_proxies.protocol`).
        public var `protocol`: Int
    }

    /// `group` is written even when null, so that scripts find the key where it will be.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(version, forKey: .version)
        try container.encode(generated_at, forKey: .generated_at)
        try container.encode(started_at, forKey: .started_at)
        try container.encode(savings, forKey: .savings)
        try container.encode(upstream, forKey: .upstream)
        try container.encode(cache, forKey: .cache)
        try container.encode(audit, forKey: .audit)
        try container.encode(group, forKey: .group)
    }
}
