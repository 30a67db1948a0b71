import Foundation
import GRDB
import Logging
import MixpeekAPI
import NIOConcurrencyHelpers

/// Gathers the status page's figures when the page or its JSON is asked for, and keeps the
/// little state only it needs: the minute history and the last verification of the audit
/// chain. Nothing here runs on a request's way through the proxy.
public final class StatusBoard: Sendable {
    /// The bounds and settings the page shows beside the figures.
    public struct Limits: Sendable {
        public var upstreamURL: String
        public var cacheMaxEntries: Int
        public var cacheMaxBytes: Int

        public init(upstreamURL: String, cacheMaxEntries: Int, cacheMaxBytes: Int) {
            self.upstreamURL = upstreamURL
            self.cacheMaxEntries = cacheMaxEntries
            self.cacheMaxBytes = cacheMaxBytes
        }
    }

    /// Mutations the page lists.
    public static let recentMutations = 50
    /// Revocations the page lists.
    public static let recentRevocations = 20

    let cache: ProxyListCache
    public let health: UpstreamHealth
    /// The chain this proxy writes, as `AuditReader` reads it: audit.sqlite on its pool's
    /// reader connections, or a group's chain on a connection of the page's own; so that reading
    /// the newest records and walking the chain never wait for, or hold up, an append or a
    /// lease renewal.
    private let reader: (any AuditReader)?
    /// In a group: the same reader of the group's chain, which also reads `mixpeek_proxies`
    /// for the group panel.
    private let groupChain: GroupChainReader?
    private let limits: Limits
    private let group: GroupMember?
    /// What checks the log's checkpoints (public; the key itself never comes here).
    private let logVerifierKey: String?
    /// In a group: why this member refuses mutations (`GroupCosigner.problem`).
    private let logProblem: @Sendable () -> String?
    /// `reconcile_interval`'s rounds, when on.
    let reconcile: ReconcileSchedule?
    private let clock: @Sendable () -> Double
    private let startedAt: Double
    private let history = NIOLockedValueBox(MinuteHistory())
    private let verification = NIOLockedValueBox<(last: StatusSnapshot.Verification?, running: Task<StatusSnapshot.Verification, Never>?)>((nil, nil))

    public init(cache: ProxyListCache, audit: AuditLog?, group: GroupMember? = nil, groupAudit: (hmacKey: String?, dataDir: String)? = nil,
                reconcile: ReconcileSchedule? = nil, limits: Limits,
                health: UpstreamHealth = UpstreamHealth(), logVerifierKey: String? = nil,
                logProblem: @escaping @Sendable () -> String? = { nil },
                clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.cache = cache
        self.logVerifierKey = logVerifierKey
        self.logProblem = logProblem
        self.group = group
        self.reconcile = reconcile
        groupChain = audit != nil ? nil : group.flatMap { group in
            groupAudit.map { GroupChainReader(settings: group.settings, hmacKey: $0.hmacKey, dataDir: $0.dataDir, logger: Self.quiet) }
        }
        reader = audit ?? groupChain
        self.limits = limits
        self.health = health
        self.clock = clock
        startedAt = clock()
        history.withLockedValue { $0.record(cache.counters, at: startedAt) }
    }

    /// At shutdown: closes the page's connection to the group's chain (PostgresNIO requires a
    /// connection closed before it goes).
    public func close() async {
        await reader?.close()
    }

    /// Closes the running minute of the history: called by a timer once a minute.
    public func recordMinute() {
        let counters = cache.counters
        let now = clock()
        history.withLockedValue { $0.record(counters, at: now) }
    }

    /// Everything the page shows, as of now.
    public func snapshot() async -> StatusSnapshot {
        let counters = cache.counters
        let memory = cache.memoryFootprint
        let disk = await cache.diskFootprint()
        let revocations = cache.revocations
        return StatusSnapshot(
            generated_at: Self.time(clock()), started_at: Self.time(startedAt),
            savings: .init(
                hit_ratio: (counters.hitRatio * 1000).rounded() / 1000, upstream_list_calls_saved: counters.saved,
                upstream_list_calls: counters.upstreamListCalls, hits: counters.hits, misses: counters.misses,
                stale: counters.stale, coalesced: counters.coalesced, bypass: counters.bypass,
                minutes: history.withLockedValue { $0.minutes(current: counters) }),
            upstream: health.snapshot(url: Self.displayed(limits.upstreamURL)),
            cache: .init(
                entries: disk?.entries, entries_max: limits.cacheMaxEntries, bytes: disk?.bytes, bytes_max: limits.cacheMaxBytes,
                memory_entries: memory.entries, memory_bytes: memory.bytes, memory_bytes_max: cache.settings.memoryBytes,
                ttl_seconds: cache.settings.ttl, stale_if_error_seconds: cache.settings.staleIfError,
                revoked_credentials: revocations.count,
                recent_revocations: revocations.recent.reversed().prefix(Self.recentRevocations).map {
                    .init(time: Self.time($0.at), key_prefix: $0.keyPrefix, key_name: $0.name, user_email: $0.user,
                          via: $0.via, proxy_id: group?.settings.proxyID)
                }),
            audit: await auditPanel(),
            group: await groupPanel())
    }

    /// This member as its protocol state has it, and the group as `mixpeek_proxies` does.
    private func groupPanel() async -> StatusSnapshot.Group? {
        guard let group else { return nil }
        let protocolState = group.protocolState
        let rows = try? await groupChain?.members()
        return .init(
            proxy_id: group.settings.proxyID, state: group.health.state, audit_role_can_rewrite: group.auditRoleCanRewrite,
            audit_role_rights: group.auditRoleRights ?? [], listening: protocolState.connected, serving_hits: group.health.ok,
            read_seq: protocolState.processed, chain_head: rows?.head, open_intents: protocolState.open.count,
            members: rows?.members ?? [])
    }

    private static let quiet = { var logger = Logger(label: "mixpeek-proxy.status"); logger.logLevel = .critical; return logger }()

    /// The newest records of the log this proxy writes: audit.sqlite, or the group's chain.
    private func newest() async throws -> (records: Int, head: String?, mutations: [AuditEntry])? {
        try await reader?.newest(Self.recentMutations)
    }

    private func auditPanel() async -> StatusSnapshot.Audit {
        let last = verification.withLockedValue { $0.last }
        guard let newest = try? await newest() else {
            return .init(available: false, records: 0, head: nil, reconcile: reconcilePanel(), recent: [], last_verification: last,
                         log_verifier_key: logVerifierKey, log_problem: logProblem())
        }
        return .init(
            available: true, records: newest.records, head: newest.head,
            reconcile: reconcilePanel(),
            recent: newest.mutations.map {
                .init(seq: $0.seq, time: $0.time, action: $0.action, user_email: $0.user_email, key_name: $0.key_name,
                      outcome: $0.outcome, upstream_status: $0.upstream_status, caller: $0.caller, request_id: $0.request_id,
                      trace_id: $0.trace_id, actor: Self.actor($0))
            },
            last_verification: last, log_verifier_key: logVerifierKey, log_problem: logProblem())
    }

    /// The last `reconcile_interval` round; nil when reconcile is off.
    private func reconcilePanel() -> StatusSnapshot.Reconcile? {
        guard let reconcile else { return nil }
        var panel = StatusSnapshot.Reconcile(interval_seconds: reconcile.interval, window_hours: Int(ReconcileSchedule.window / 3600))
        guard let last = reconcile.lastResult else { return panel }
        panel.time = Self.time(last.at)
        panel.problem = last.problem
        // The counts of a round that ran; a failed round counted nothing.
        if last.problem == nil {
            (panel.around_proxy, panel.unconfirmed, panel.resolved_unknown) = (last.aroundProxy, last.unconfirmed, last.resolved)
        }
        return panel
    }

    /// Walks the whole audit chain off the event loops; requests that come while a walk is
    /// running share it rather than start another.
    public func verifyAudit() async -> StatusSnapshot.Verification {
        let task = verification.withLockedValue { state in
            if let running = state.running { return running }
            let task = Task { await self.walkChain() }
            state.running = task
            return task
        }
        return await task.value
    }

    private func walkChain() async -> StatusSnapshot.Verification {
        let started = clock()
        let outcome: Result<AuditVerification, any Error>
        do {
            guard let reader else { throw AuditUnavailable() }
            outcome = .success(try await reader.verifyChain())
        } catch {
            outcome = .failure(error)
        }
        let result: StatusSnapshot.Verification = switch outcome {
        case .success(let found):
            .init(time: Self.time(clock()), intact: found.isIntact, records: found.records,
                  head: found.isIntact ? found.head : nil, problem: found.problem,
                  unknown_outcomes: found.unknownOutcomes.count, duration_ms: milliseconds(since: started))
        case .failure(let error):
            .init(time: Self.time(clock()), intact: false, records: 0, head: nil,
                  problem: "the audit log could not be read: \(error)", unknown_outcomes: 0,
                  duration_ms: milliseconds(since: started))
        }
        verification.withLockedValue { $0 = (result, nil) }
        return result
    }

    private struct AuditUnavailable: Error, CustomStringConvertible {
        var description: String { "the audit file is not open" }
    }

    private func milliseconds(since start: Double) -> Double {
        ((clock() - start) * 10_000).rounded() / 10
    }

    /// `scheme://host[:port]` of the upstream: a path, a query or user information in the
    /// configured URL never reach the page.
    static func displayed(_ url: String) -> String {
        guard let parts = URLComponents(string: url), let scheme = parts.scheme, let host = parts.host else { return "" }
        return "\(scheme)://\(host)\(parts.port.map { ":\($0)" } ?? "")"
    }

    static func time(_ seconds: Double) -> String {
        Timestamp.string(Date(timeIntervalSince1970: seconds))
    }
    /// The key that acted, as the page shows it: its name and prefix, and its owner.
    static func actor(_ entry: AuditEntry) -> String? {
        guard entry.actor_key_name != nil || entry.actor_key_prefix != nil else { return nil }
        let key = [entry.actor_key_name, entry.actor_key_prefix.map { "(\($0)…)" }].compactMap { $0 }.joined(separator: " ")
        return entry.actor_user.map { "\(key) of \($0)" } ?? key
    }
}
