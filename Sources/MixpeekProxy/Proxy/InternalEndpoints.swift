import Foundation
import MixpeekHTTP
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// `/_proxy/health`, `/_proxy/stats` and `/_proxy/metrics`: the proxy's own surface (the status
/// page's paths are in `StatusEndpoints.swift`). None of them shows a token, a secret or a
/// cached body.
extension Proxy {
    struct Stats: Codable {
        struct Cache: Codable {
            var entries_in_memory: Int
            var bytes_in_memory: Int
            /// The part of `cache_memory_bytes` taken by the credentials and keys the cache knows.
            var credential_bytes_in_memory: Int
            var hits: Int
            var misses: Int
            var stale: Int
            var bypass: Int
            var coalesced: Int
            var upstream_list_calls: Int
            var upstream_list_calls_saved: Int
            var hit_ratio: Double
        }
        var cache: Cache
        var audit_records: Int?
    }

    func internalEndpoint(_ request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        if request.path.hasPrefix(Self.logPrefix) {
            return logEndpoint(request, on: eventLoop)
        }
        if Self.statusPaths.contains(request.path) {
            return statusEndpoint(request, on: eventLoop)
        }
        guard request.method == .GET || request.method == .HEAD else {
            return .now(ProxyError.methodNotAllowed(allowed: "GET, HEAD").response())
        }
        switch request.path {
        case "/_proxy/health":
            var fields = ["status": "ok", "audit": audit != nil ? "ok" : "unavailable"]
            if let group {
                // In a group the audit chain and the invalidations both live in PostgreSQL. The
                // state only: PostgreSQL's own words (which name roles, hosts and databases) are
                // for the log, and anyone who reaches the proxy may ask for its health.
                let health = group.health
                fields["group"] = health.state
                if !health.ok { fields["audit"] = "unavailable" }
            }
            let ready = fields["audit"] == "ok"
            if !ready { fields["status"] = "degraded" }
            // A readiness probe keeps working with the status page off; what is wrong is not shown.
            if settings.statusPage == .off || Self.statusRefusal(request, access: settings.statusPage) != nil {
                fields = ["status": fields["status"] ?? "degraded"]
            }
            return .now(Self.json(fields, status: ready ? .ok : .serviceUnavailable))
        case "/_proxy/metrics", "/_proxy/stats":
            // The proxy's figures are the status page's: the same switch and the same access rule.
            guard settings.statusPage != .off else {
                return .now(ProxyError.notFound("the status page and its figures are off (status_page = off)").response())
            }
            if let refusal = Self.statusRefusal(request, access: settings.statusPage) {
                return .now(refusal.response())
            }
            return figures(request, on: eventLoop)
        default:
            return .now(ProxyError.notFound("no such proxy endpoint; try /_proxy/, /_proxy/health, /_proxy/stats, /_proxy/metrics").response())
        }
    }

    private func figures(_ request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        switch request.path {
        case "/_proxy/metrics":
            let memory = cache.memoryFootprint
            let text = metrics.exposition(
                cache: cache.counters, entries: memory.entries, bytes: memory.bytes, logLinesDropped: accessLog?.droppedLines ?? 0,
                outcomesPending: outcomes.incompleteCount,
                revokedCredentials: cache.revocations.count, listsHeldFromRevoked: cache.listsHeldFromRevoked,
                reconcile: status?.reconcile?.lastResult,
                group: group.map { group in
                    .init(auditRoleCanRewrite: group.auditRoleCanRewrite,
                          witnessFailures: (audit as? GroupAuditLog)?.witnessFailures ?? 0,
                          logConsistent: (audit as? GroupAuditLog)?.cosigner.map { $0.problem == nil })
                })
            return .now(HTTPResponse(
                status: .ok, headers: ["Content-Type": "text/plain; version=0.0.4; charset=utf-8"],
                body: ByteBuffer(string: text)))
        case "/_proxy/stats":
            let promise = eventLoop.makePromise(of: HTTPResponse.self)
            promise.completeWithTask { Self.json(await self.stats()) }
            return .later(promise.futureResult)
        default:
            return .now(ProxyError.notFound("no such proxy endpoint; try /_proxy/, /_proxy/health, /_proxy/stats, /_proxy/metrics").response())
        }
    }

    func stats() async -> Stats {
        let counters = cache.counters
        let memory = cache.memoryFootprint
        let records = try? await audit?.recordCount()
        return Stats(
            cache: .init(
                entries_in_memory: memory.entries, bytes_in_memory: memory.bytes, credential_bytes_in_memory: memory.reserved,
                hits: counters.hits,
                misses: counters.misses, stale: counters.stale, bypass: counters.bypass, coalesced: counters.coalesced,
                upstream_list_calls: counters.upstreamListCalls, upstream_list_calls_saved: counters.saved,
                hit_ratio: (counters.hitRatio * 1000).rounded() / 1000),
            audit_records: records)
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let body = (try? encoder.encodeAsByteBuffer(value, allocator: ByteBufferAllocator())) ?? ByteBuffer()
        return HTTPResponse(status: status, headers: ["Content-Type": "application/json"], body: body)
    }
}
