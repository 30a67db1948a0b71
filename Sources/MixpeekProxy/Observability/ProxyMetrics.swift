import CoreMetrics
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// The proxy's metrics through swift-metrics, exported by swift-prometheus at
/// `GET /_proxy/metrics`. Names follow Prometheus conventions: `mixpeek_proxy_*`,
/// `_total` for counters, base units (`_seconds`, `_bytes`).
public final class ProxyMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let requests = NIOLockedValueBox([String: CoreMetrics.Counter]())
    private let upstreamErrors: [String: CoreMetrics.Counter]
    private let auditAppends: CoreMetrics.Counter
    private let auditFailures: CoreMetrics.Counter
    private let auditLatency: CoreMetrics.Timer
    private let requestLatency: CoreMetrics.Timer
    private let listHits: CoreMetrics.Counter

    public init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
        ]
        self.factory = factory
        upstreamErrors = Dictionary(uniqueKeysWithValues: ["timeout", "unreachable"].map {
            ($0, CoreMetrics.Counter(label: "mixpeek_proxy_upstream_errors_total", dimensions: [("kind", $0)], factory: factory))
        })
        auditAppends = CoreMetrics.Counter(label: "mixpeek_proxy_audit_appends_total", factory: factory)
        auditFailures = CoreMetrics.Counter(label: "mixpeek_proxy_audit_failures_total", factory: factory)
        auditLatency = CoreMetrics.Timer(label: "mixpeek_proxy_audit_append_duration_seconds", factory: factory)
        requestLatency = CoreMetrics.Timer(label: "mixpeek_proxy_request_duration_seconds", factory: factory)
        listHits = CoreMetrics.Counter(
            label: "mixpeek_proxy_requests_total", dimensions: [("route", "list"), ("status", "200"), ("cache", CacheResult.hit.rawValue)], factory: factory)
    }

    /// One finished request: `mixpeek_proxy_requests_total{route,status,cache}`.
    func request(route: String, status: Int, cache: CacheResult?, seconds: Double) {
        // Cache hits, the hot path, skip the label lookup and the latency histogram.
        if status == 200, cache == .hit, route == "list" {
            listHits.increment()
            return
        }
        let labelKey = "\(route)|\(status)|\(cache?.rawValue ?? "")"
        let counter = requests.withLockedValue { counters in
            if let counter = counters[labelKey] { return counter }
            let counter = CoreMetrics.Counter(
                label: "mixpeek_proxy_requests_total",
                dimensions: [("route", route), ("status", String(status)), ("cache", cache?.rawValue ?? "none")], factory: factory)
            counters[labelKey] = counter
            return counter
        }
        counter.increment()
        if route != "list" || cache != .hit {
            requestLatency.recordNanoseconds(Int64(seconds * 1_000_000_000))
        }
    }

    func upstreamError(_ error: UpstreamError) {
        switch error {
        case .timeout: upstreamErrors["timeout"]?.increment()
        case .unreachable: upstreamErrors["unreachable"]?.increment()
        }
    }

    /// Times an audit append and counts it as an append or a failure.
    func timeAuditAppend<T>(_ append: () async throws -> T) async throws -> T {
        let start = NIODeadline.now()
        do {
            let value = try await append()
            auditLatency.recordNanoseconds((NIODeadline.now() - start).nanoseconds)
            auditAppends.increment()
            return value
        } catch {
            auditFailures.increment()
            throw error
        }
    }

    /// What a proxy in a group adds to its metrics, read at scrape time.
    public struct GroupFigures: Sendable {
        /// Whether the role could rewrite the chain; nil until the proxy has joined once.
        public var auditRoleCanRewrite: Bool?
        public var witnessFailures: Int
        /// Whether the group's log extends the checkpoint this member signed last; nil when it
        /// cosigns none.
        public var logConsistent: Bool?

        public init(auditRoleCanRewrite: Bool?, witnessFailures: Int, logConsistent: Bool? = nil) {
            self.auditRoleCanRewrite = auditRoleCanRewrite
            self.witnessFailures = witnessFailures
            self.logConsistent = logConsistent
        }
    }

    /// The Prometheus text exposition, with the cache's and the request log's figures read at
    /// scrape time, and `group`'s in a group.
    public func exposition(cache: CacheCounters, entries: Int, bytes: Int, logLinesDropped: Int, outcomesPending: Int = 0,
                           revokedCredentials: Int = 0, listsHeldFromRevoked: Int = 0, reconcile: ReconcileSchedule.Result? = nil,
                           group: GroupFigures? = nil) -> String {
        var text = registry.emitToString()
        func counter(_ name: String, _ help: String, _ value: Int) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) counter\n\(name) \(value)\n"
        }
        func gauge(_ name: String, _ help: String, _ value: Int) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n\(name) \(value)\n"
        }
        counter("mixpeek_proxy_cache_hits_total", "List requests answered from the cache.", cache.hits)
        counter("mixpeek_proxy_cache_misses_total", "List requests that fetched from the upstream.", cache.misses)
        counter("mixpeek_proxy_cache_stale_total", "Stale lists served because the upstream failed.", cache.stale)
        counter("mixpeek_proxy_cache_bypass_total", "Lists forwarded uncached (queries the cache does not key).", cache.bypass)
        counter("mixpeek_proxy_cache_coalesced_total", "List requests that waited on another request's upstream fetch.", cache.coalesced)
        counter("mixpeek_proxy_upstream_list_calls_total", "List calls sent to the upstream.", cache.upstreamListCalls)
        counter("mixpeek_proxy_log_lines_dropped_total", "Request-log lines lost because the log writer was behind or could not write.", logLinesDropped)
        gauge("mixpeek_proxy_cache_entries", "Cached lists in memory.", entries)
        gauge("mixpeek_proxy_cache_bytes", "Bytes of cached list bodies in memory.", bytes)
        gauge("mixpeek_proxy_revoked_credentials", "Secrets of keys revoked through the proxy: none is answered from the cache.", revokedCredentials)
        counter("mixpeek_proxy_cache_revoked_held_total", "List requests bearing a revoked key's secret, forwarded instead of answered from the cache.", listsHeldFromRevoked)
        gauge("mixpeek_proxy_audit_outcomes_pending", "Outcomes of mutations answered audit_incomplete that are not written yet.", outcomesPending)
        if let reconcile, reconcile.problem == nil {
            // Only once a round has run (`reconcile_interval`): absent, not 0, before.
            gauge("mixpeek_proxy_changes_around_proxy",
                  "Key changes in the upstream's audit log of the last 24 h with no proxy record, at the last reconcile round.",
                  reconcile.aroundProxy)
            gauge("mixpeek_proxy_reconcile_unconfirmed",
                  "Mutations the proxy recorded applied that the upstream's audit log did not show, at the last reconcile round.",
                  reconcile.unconfirmed)
        }
        if let group {
            if let canRewrite = group.auditRoleCanRewrite {
                gauge("mixpeek_proxy_audit_role_can_rewrite",
                      "1 when this proxy's PostgreSQL role could rewrite the group's audit chain (owner or superuser), else 0.",
                      canRewrite ? 1 : 0)
            }
            counter("mixpeek_proxy_witness_failures_total",
                    "Batches of chain records whose witness-file write or fsync failed (their intents were refused).",
                    group.witnessFailures)
            if let consistent = group.logConsistent {
                gauge("mixpeek_proxy_log_consistent",
                      "1 while the group's log extends the checkpoint this member signed last; 0 once it does not (mutations refused).",
                      consistent ? 1 : 0)
            }
        }
        return text
    }
}
