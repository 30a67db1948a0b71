import Foundation
import MixpeekAPI
@testable import MixpeekProxy
import NIOCore
import NIOHTTP1
import Testing

@Suite("Policy: one decision per request")
struct PolicyTests {
    static let alice = "/v1/organizations/users/alice%40example.com/api-keys"

    static func decide(_ method: HTTPMethod, _ target: String, headers: HTTPHeaders = [:], passThrough: Bool = true) -> Decision {
        var settings = Policy.Settings()
        settings.passThrough = passThrough
        return Policy.decide(Route(method: method, target: target), target: target, headers: headers, settings: settings)
    }

    @Test("the decision table: every kind of call gets its decision")
    func table() {
        let rows: [(HTTPMethod, String, HTTPHeaders, Bool, Decision)] = [
            (.GET, Self.alice, [:], true, .serveList(user: "alice@example.com", includeRevoked: false, refresh: false)),
            (.GET, Self.alice + "?include_revoked=true", [:], true, .serveList(user: "alice@example.com", includeRevoked: true, refresh: false)),
            (.GET, Self.alice, ["Cache-Control": "no-cache"], true, .serveList(user: "alice@example.com", includeRevoked: false, refresh: true)),
            (.GET, Self.alice, ["Cache-Control": "max-age=0"], true, .serveList(user: "alice@example.com", includeRevoked: false, refresh: true)),
            (.GET, Self.alice, ["Pragma": "no-cache"], true, .serveList(user: "alice@example.com", includeRevoked: false, refresh: true)),
            (.GET, Self.alice + "?limit=10", [:], true, .bypassCache),
            (.POST, Self.alice, [:], true, .mutate(.create, user: "alice@example.com", key: nil)),
            (.PATCH, Self.alice + "/ci-key", [:], true, .mutate(.update, user: "alice@example.com", key: "ci-key")),
            (.POST, Self.alice + "/ci-key/rotate", [:], true, .mutate(.rotate, user: "alice@example.com", key: "ci-key")),
            (.DELETE, Self.alice + "/ci-key", [:], true, .mutate(.delete, user: "alice@example.com", key: "ci-key")),
            (.GET, "/v1/collections", [:], true, .passThrough),
            (.GET, "/v1/collections", [:], false, .refuse(.notFound("pass-through is off: mixpeek-proxy forwards only the API-keys calls"))),
            (.GET, "/health", [:], true, .refuse(.notFound("mixpeek-proxy forwards only /v1/... paths"))),
            (.HEAD, Self.alice, [:], true, .serveList(user: "alice@example.com", includeRevoked: false, refresh: false)),
            (.HEAD, Self.alice + "?limit=10", [:], true, .bypassCache),
            (.PUT, Self.alice, [:], true, .refuse(.methodNotAllowed(allowed: "GET, HEAD, POST"))),
            (.POST, Self.alice + "/ci-key", [:], true, .refuse(.methodNotAllowed(allowed: "PATCH, DELETE"))),
            (.GET, Self.alice + "/ci-key/rotate", [:], true, .refuse(.methodNotAllowed(allowed: "POST"))),
        ]
        for (method, target, headers, passThrough, expected) in rows {
            #expect(Self.decide(method, target, headers: headers, passThrough: passThrough) == expected, "\(method) \(target)")
        }
        for target in [Self.alice + "/", "/v1/organizations/users/alice%40example.com/api-key%73/k", Self.alice + "/a%2Fb"] {
            #expect(Self.decide(.DELETE, target).summary == "refuse(400)", "\(target)")
            guard case .refuse(.nonCanonicalPath) = Self.decide(.DELETE, target) else {
                Issue.record("\(target) is not refused as non-canonical")
                continue
            }
        }
        #expect(Self.decide(.PATCH, Self.alice + "/%ZZ").summary == "refuse(400)")
        #expect(Self.decide(.POST, Self.alice + "/k/revoke") == .refuse(.malformed(RouteRejection.unknownPath.message)))
    }

    @Test("README's table 'What the proxy does to each call' agrees with Policy.decide, row by row, and names every kind of decision")
    func readmeTable() throws {
        let readme = try String(contentsOf: URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("README.md"), encoding: .utf8)
        let section = try #require(readme.components(separatedBy: "## What the proxy does to each call").dropFirst().first)
        let rows = section.components(separatedBy: "\n## ")[0].split(separator: "\n")
            .filter { $0.hasPrefix("| ") && !$0.hasPrefix("| call ") }
            .map { $0.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) } }
        #expect(rows.count >= 10)
        var named = Set<String>()
        for columns in rows {
            let example = columns[1].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
            let decision = columns[2].trimmingCharacters(in: CharacterSet(charactersIn: "`"))
            let parts = example.split(separator: " ", maxSplits: 1)
            let target = String(parts[1])
                .replacingOccurrences(of: "…", with: "/v1/organizations/users/{user_email}")
                .replacingOccurrences(of: "{user_email}", with: "alice@example.com")
                .replacingOccurrences(of: "{key_name}", with: "ci-key")
            let method = HTTPMethod(rawValue: String(parts[0]))
            #expect(Self.decide(method, target).summary == decision, "README row '\(columns[0])': \(example)")
            named.insert(decision.split(separator: "(")[0].description)
        }
        #expect(named == ["serveList", "bypassCache", "mutate", "passThrough", "refuse"], "every kind of decision has a row")
    }

    // MARK: The other hooks: hit, upstream failure

    static let settings = ProxyListCache.Settings(ttl: 30, staleIfError: 300, memoryBytes: 1 << 20)

    static func entry(storedAt: Double, lifetime: Double? = nil, mayServeStale: Bool = true) -> CachedList {
        var entry = CachedList(status: 200, contentType: "application/json", etag: nil, lastModified: nil,
                               body: ByteBuffer(string: "{}"), storedAt: storedAt)
        entry.lifetime = lifetime
        entry.mayServeStale = mayServeStale
        return entry
    }

    @Test("vcl_hit: a stored list is served while fresh (TTL, or the upstream's shorter bound) and its credential stands and was confirmed lately")
    func hitHook() {
        let confirmed = Credential(authorization: "Bearer sk_a")
        confirmed.confirmed(at: 1000)
        let revoked = Credential(authorization: "Bearer sk_b")
        revoked.confirmed(at: 1000)
        revoked.revoke()
        let expired = Credential(authorization: "Bearer sk_c")
        expired.confirmed(at: 1000)
        expired.expires(at: 1005)
        let cases: [(String, CachedList, Credential, Double, Policy.Hit)] = [
            ("fresh", Self.entry(storedAt: 1000), confirmed, 1010, .serve),
            ("at the TTL", Self.entry(storedAt: 1000), confirmed, 1030, .expired),
            ("past the upstream's max-age", Self.entry(storedAt: 1000, lifetime: 5), confirmed, 1006, .expired),
            ("within the upstream's max-age", Self.entry(storedAt: 1000, lifetime: 5), confirmed, 1004, .serve),
            ("a revoked key", Self.entry(storedAt: 1000), revoked, 1001, .unconfirmed),
            ("past the key's expires_at", Self.entry(storedAt: 1000), expired, 1006, .unconfirmed),
        ]
        for (name, entry, credential, now, expected) in cases {
            #expect(Policy.onHit(entry, credential: credential, now: now, settings: Self.settings) == expected, "\(name)")
        }
        // credential_recheck 10: a fresh list whose credential the upstream last confirmed 15 s ago
        // (with the fetch that stored it) is fetched; one confirmed since is served.
        let recheck = ProxyListCache.Settings(ttl: 30, staleIfError: 300, memoryBytes: 1 << 20, credentialRecheck: 10)
        let quiet = Credential(authorization: "Bearer sk_d")
        #expect(Policy.onHit(Self.entry(storedAt: 1000), credential: quiet, now: 1015, settings: recheck) == .unconfirmed)
        quiet.confirmed(at: 1012)
        #expect(Policy.onHit(Self.entry(storedAt: 1000), credential: quiet, now: 1015, settings: recheck) == .serve)
        // A mutation of its owner heard in a group demands a confirmation after it.
        quiet.demandConfirmation(at: 1014)
        #expect(Policy.onHit(Self.entry(storedAt: 1000), credential: quiet, now: 1015, settings: recheck) == .unconfirmed)
    }

    @Test("vcl_backend_error: only an upstream failure or 5xx may be answered by a stored list, never a 4xx, never for a revoked key; and only within stale_if_error")
    func failureHook() {
        let standing = Credential(authorization: "Bearer sk_a")
        let revoked = Credential(authorization: "Bearer sk_b")
        revoked.revoke()
        func answer(_ code: Int) -> ProxyListCache.FetchOutcome {
            .response(UpstreamResponse(status: HTTPResponseStatus(statusCode: code), headers: [:], body: ByteBuffer()))
        }
        #expect(Policy.onUpstreamFailure(ProxyListCache.FetchOutcome.failure(.unreachable("refused")), credential: standing))
        #expect(Policy.onUpstreamFailure(answer(503), credential: standing))
        #expect(!Policy.onUpstreamFailure(answer(404), credential: standing))
        #expect(!Policy.onUpstreamFailure(answer(200), credential: standing))
        #expect(!Policy.onUpstreamFailure(ProxyListCache.FetchOutcome.failure(.unreachable("refused")), credential: revoked))
        #expect(Policy.servesStale(Self.entry(storedAt: 1000), now: 1329, settings: Self.settings))
        #expect(!Policy.servesStale(Self.entry(storedAt: 1000), now: 1331, settings: Self.settings))
        #expect(!Policy.servesStale(Self.entry(storedAt: 1000, mayServeStale: false), now: 1031, settings: Self.settings))
    }
}
