import Foundation
import MixpeekFake
import MixpeekProxy
import NIOHTTP1
import Testing

/// What the proxy answers when Mixpeek misbehaves: the contract's status and error shape,
/// stale lists where the cache policy allows, no audit record lost, the proxy healthy.
/// (TLS verification is checked against the real binary in scripts/crash_check.py.)
@Suite("Upstream faults", .timeLimit(.minutes(1)))
struct FaultTests {
    @Test("a connection dropped before the response gives 502, and the mutation is audited as error")
    func droppedConnection() async throws {
        try await withTestProxy { proxy in
            proxy.controls.setFault(.dropConnection, for: .rotate)
            let response = try await proxy.rotate(key: "k")
            #expect(response.status == 502)
            #expect(response.error?["type"] as? String == "upstream_unreachable")
            try expectAudited(proxy, outcomes: ["error"])
        }
    }

    @Test("a response cut mid-body gives 502, never the partial body")
    func truncatedBody() async throws {
        try await withTestProxy { proxy in
            proxy.controls.setFault(.truncatedBody, for: .list)
            let response = try await proxy.list()
            #expect(response.status == 502)
            #expect(response.json["success"] as? Bool == false)
            proxy.controls.setFault(nil, for: .list)
            let healthy = try await proxy.list()
            #expect(healthy.status == 200)
            #expect(healthy.header("x-cache") == "MISS", "the cut response must not have been cached")
        }
    }

    @Test("a 200 list whose body is not JSON is passed on once but never cached")
    func invalidJSONNotCached() async throws {
        try await withTestProxy { proxy in
            proxy.controls.setFault(.invalidJSON, for: .list)
            let first = try await proxy.list()
            #expect(first.status == 200)
            #expect(first.body.contains("not json"))
            proxy.controls.setFault(nil, for: .list)
            let second = try await proxy.list()
            #expect(second.header("x-cache") == "MISS")
            #expect(second.keyNames == ["admin-key"])
        }
    }

    @Test("a storm of 5xx: cached lists are served STALE, mutations fail with the upstream's status and are audited, the proxy stays healthy")
    func fiveHundredStorm() async throws {
        let clock = TestClock()
        try await withTestProxy(clock: clock.read, configure: { $0.cacheTTL = 10; $0.staleIfError = 60 }) { proxy in
            #expect(try await proxy.list().status == 200)
            clock.advance(20)
            proxy.controls.setFault(.status(.serviceUnavailable))
            var stale = 0
            var failedMutations = 0
            for round in 0..<40 {
                let list = try await proxy.list()
                if list.status == 200 && list.header("x-cache") == "STALE" { stale += 1 }
                // Another user's mutations: alice's would (rightly) invalidate her cached list.
                let update = try await proxy.update(user: "bob@example.com", key: "k\(round)")
                if update.status == 503 && update.error?["type"] as? String == "injected_fault" { failedMutations += 1 }
            }
            #expect(stale == 40)
            #expect(failedMutations == 40)
            #expect(try await proxy.request(.GET, "/_proxy/health", token: nil).status == 200)
            try expectAudited(proxy, outcomes: Array(repeating: "error", count: 40))
        }
    }

    @Test("a host that does not resolve gives 502 or 504 in the error shape")
    func dnsFailure() async throws {
        try await withTestProxy(configure: { $0.upstream = "http://mixpeek-upstream.invalid"; $0.upstreamTimeout = 3 }) { proxy in
            let response = try await proxy.list()
            #expect([502, 504].contains(response.status))
            #expect(response.json["success"] as? Bool == false)
        }
    }

    func expectAudited(_ proxy: TestProxy, outcomes: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let audit = try AuditLog(path: proxy.dataDir + "/audit.sqlite", logger: .init(label: "t"))
        var seen: [String] = []
        try audit.query(AuditFilter()) { seen.append($0.outcome) }
        #expect(seen == outcomes, sourceLocation: sourceLocation)
        #expect(try audit.verify().isIntact, sourceLocation: sourceLocation)
    }
}
