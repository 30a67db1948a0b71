import AsyncHTTPClient
import Foundation
import Logging
import MixpeekAPI
import MixpeekFake
@testable import MixpeekProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Testing

/// "A revoked key is shut out at once": from the moment the proxy answers a delete, a rotate
/// or an update that revokes key K, no request bearing K's old secret is answered from cache,
/// for any user's list; the upstream's 401 drops what the credential had; an expired key and
/// a key not confirmed for `credential_recheck` seconds are forwarded.
@Suite("A revoked key reads nothing from the cache")
struct RevocationTests {
    static let admin = TestProxy.token

    /// Creates key `name` for alice through the proxy with the admin token; its secret.
    static func createKey(_ proxy: TestProxy, name: String, expiresAt: String? = nil) async throws -> String {
        var body = #"{"name": "\#(name)""#
        if let expiresAt { body += #", "expires_at": "\#(expiresAt)""# }
        let created = try await proxy.request(.POST, TestProxy.path(), token: admin, json: body + "}")
        #expect(created.status == 200, "\(created.body)")
        return try #require(created.json["key"] as? String)
    }

    /// K reads two users' lists until both are hits.
    static func warm(_ proxy: TestProxy, secret: String) async throws {
        for user in ["alice@example.com", "bob@example.com"] {
            _ = try await proxy.list(user: user, token: secret)
            let again = try await proxy.list(user: user, token: secret)
            #expect(again.header("X-Cache") == "HIT", "K's own reads are cached before it is revoked")
        }
    }

    /// The very next list of each user with K's secret: not a HIT, and the upstream's 401.
    static func expectShutOut(_ proxy: TestProxy, secret: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        // Bob first: his lists are not invalidated by a mutation of alice's key, and a 401 to K
        // would drop all K's lists, hiding whether the revocation alone shut K out.
        for user in ["bob@example.com", "alice@example.com"] {
            let after = try await proxy.list(user: user, token: secret)
            #expect(after.header("X-Cache") != "HIT", "\(user): a revoked key's secret got a HIT", sourceLocation: sourceLocation)
            #expect(after.status == 401, "\(user): the upstream decides: \(after.status)", sourceLocation: sourceLocation)
        }
    }

    @Test("K deleted through the proxy: the very next list with K's secret, of each user K read, is not a HIT, and the upstream answers 401")
    func deleted() async throws {
        try await withTestProxy { proxy in
            let secret = try await Self.createKey(proxy, name: "k-deleted")
            try await Self.warm(proxy, secret: secret)
            #expect(try await proxy.delete(key: "k-deleted", token: Self.admin).status == 200)
            try await Self.expectShutOut(proxy, secret: secret)
            // Another credential's lists are untouched by it.
            _ = try await proxy.list(user: "bob@example.com")
            #expect(try await proxy.list(user: "bob@example.com").header("X-Cache") == "HIT")
        }
    }

    @Test("K made elsewhere and never seen by the proxy (it read only another user's lists), deleted through the proxy: its very next list is not a HIT")
    func deletedUnseen() async throws {
        try await withTestProxy(configure: { $0.cacheTTL = 3600 }) { proxy in
            // Created straight at the fake: the proxy never relays K's create answer, nor (K
            // reading only bob's lists) a list holding K, so it cannot tell which secret is K's.
            let created = try await proxy.request(.POST, TestProxy.path(), token: Self.admin, json: #"{"name": "k-unseen"}"#, base: proxy.fake.url)
            let secret = try #require(created.json["key"] as? String)
            _ = try await proxy.list(user: "bob@example.com", token: secret)
            #expect(try await proxy.list(user: "bob@example.com", token: secret).header("X-Cache") == "HIT")
            #expect(try await proxy.delete(key: "k-unseen", token: Self.admin).status == 200)
            let after = try await proxy.list(user: "bob@example.com", token: secret)
            #expect(after.header("X-Cache") != "HIT", "a secret the proxy could not name got a HIT after a delete of an unseen key")
            #expect(after.status == 401)
        }
    }

    @Test("K rotated through the proxy (by K itself): the old secret gets no HIT; the new one is served and cached")
    func rotated() async throws {
        try await withTestProxy { proxy in
            let secret = try await Self.createKey(proxy, name: "k-rotated")
            try await Self.warm(proxy, secret: secret)
            let rotated = try await proxy.rotate(key: "k-rotated", token: secret)
            #expect(rotated.status == 200)
            let newSecret = try #require(rotated.json["key"] as? String)
            try await Self.expectShutOut(proxy, secret: secret)
            _ = try await proxy.list(user: "alice@example.com", token: newSecret)
            #expect(try await proxy.list(user: "alice@example.com", token: newSecret).header("X-Cache") == "HIT")
        }
    }

    @Test("PATCH status=revoked through the proxy: K's secret gets no HIT from then on")
    func updatedToRevoked() async throws {
        try await withTestProxy { proxy in
            let secret = try await Self.createKey(proxy, name: "k-patched")
            try await Self.warm(proxy, secret: secret)
            #expect(try await proxy.update(key: "k-patched", json: #"{"status": "revoked"}"#, token: Self.admin).status == 200)
            try await Self.expectShutOut(proxy, secret: secret)
        }
    }

    @Test("a revocation outlives a restart: the secret still gets no HIT from the lists kept on disk")
    func revocationPersists() async throws {
        let first = try await TestProxy.start()
        let secret = try await Self.createKey(first, name: "k-kept")
        try await Self.warm(first, secret: secret)
        #expect(try await first.delete(key: "k-kept", token: Self.admin).status == 200)
        await first.stop(keepFake: true)
        let second = try await TestProxy.start(dataDir: first.dataDir, fake: first.fake)
        defer { second.removeData() }
        try await Self.expectShutOut(second, secret: secret)
        #expect(second.app.proxy.cache.revocations.count == 1, "read back from the cache file")
        await second.stop()
    }

    @Test("the upstream answers 401 to a cached credential: its lists are dropped, and with the upstream down it gets no STALE while another credential does")
    func upstreamRefusal() async throws {
        let clock = TestClock()
        let mode = NIOLockedValueBox("ok")
        let upstream = StubUpstream { request in
            let token = request.headers.first(name: "authorization") ?? ""
            switch mode.withLockedValue({ $0 }) {
            case "down": throw UpstreamError.unreachable("down")
            case "refuse-a" where token.hasSuffix("aaaa"):
                return UpstreamResponse(status: .unauthorized, headers: ["content-type": "application/json"],
                                        body: ByteBuffer(string: #"{"success": false, "status": 401, "error": {"message": "revoked", "type": "unauthorized"}}"#))
            default:
                return UpstreamResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: #"{"keys": []}"#))
            }
        }
        try await withStubProxy(upstream, clock: clock.read) { (app: ProxyApp, _: String) async throws -> Void in
            func list(_ token: String) async throws -> (Int, String?) {
                let answer = try await listThrough(app, token: token)
                return (answer.status, answer.cache)
            }
            let a = "sk_test_aaaaaaaaaaaaaaaaaaaaaaaaaaaa", b = "sk_test_bbbbbbbbbbbbbbbbbbbbbbbbbbbb"
            #expect(try await list(a).1 == "MISS")
            #expect(try await list(b).1 == "MISS")
            clock.advance(31)
            mode.withLockedValue { $0 = "refuse-a" }
            #expect(try await list(a) == (401, "MISS"))
            mode.withLockedValue { $0 = "down" }
            let refusedThenDown = try await list(a)
            #expect(refusedThenDown.1 != "STALE", "a credential the upstream refused gets no STALE: \(refusedThenDown)")
            #expect(refusedThenDown.0 == 502)
            #expect(try await list(b).1 == "STALE", "another credential's list is still served STALE")
        }
    }

    @Test("a key whose expires_at has passed: its secret gets no HIT (the upstream answers 401)")
    func expired() async throws {
        try await withTestProxy { proxy in
            let expiry = Date().addingTimeInterval(3)
            let secret = try await Self.createKey(proxy, name: "k-expiring", expiresAt: Timestamp.string(expiry))
            _ = try await proxy.list(user: "alice@example.com", token: secret)
            let before = try await proxy.list(user: "alice@example.com", token: secret)
            #expect(before.header("X-Cache") == "HIT" || Date() >= expiry, "cached while the key is live")
            try await Task.sleep(for: .seconds(max(0, expiry.timeIntervalSinceNow) + 0.2))
            let after = try await proxy.list(user: "alice@example.com", token: secret)
            #expect(after.header("X-Cache") != "HIT")
            #expect(after.status == 401)
        }
    }

    @Test("credential_recheck = 2: a key removed at the upstream directly (not through the proxy) stops getting HITs within 2 s")
    func recheck() async throws {
        try await withTestProxy(configure: { $0.credentialRecheck = 2; $0.cacheTTL = 3600 }) { proxy in
            let secret = try await Self.createKey(proxy, name: "k-elsewhere")
            _ = try await proxy.list(user: "alice@example.com", token: secret)
            #expect(try await proxy.list(user: "alice@example.com", token: secret).header("X-Cache") == "HIT")
            // Deleted in "the dashboard": straight at the fake.
            #expect(try await proxy.request(.DELETE, TestProxy.path(key: "k-elsewhere"), token: Self.admin, base: proxy.fake.url).status == 200)
            let removedAt = Date()
            let shutOut = try await eventually(within: 3) {
                try await proxy.list(user: "alice@example.com", token: secret).header("X-Cache") != "HIT"
            }
            #expect(shutOut)
            #expect(Date().timeIntervalSince(removedAt) < 2.5, "within the recheck bound")
            // A credential still good is confirmed again by that forward, and hits.
            _ = try await proxy.list(user: "alice@example.com")
            #expect(try await proxy.list(user: "alice@example.com").header("X-Cache") == "HIT")
        }
    }

    @Test("the revocation metrics: mixpeek_proxy_revoked_credentials and the lists held back from revoked credentials")
    func metrics() async throws {
        try await withTestProxy { proxy in
            let secret = try await Self.createKey(proxy, name: "k-counted")
            try await Self.warm(proxy, secret: secret)
            _ = try await proxy.delete(key: "k-counted", token: Self.admin)
            try await Self.expectShutOut(proxy, secret: secret)
            let text = try await proxy.request(.GET, "/_proxy/metrics", token: nil).body
            #expect(text.contains("\nmixpeek_proxy_revoked_credentials 1\n"), "\(text)")
            #expect(text.contains("\nmixpeek_proxy_cache_revoked_held_total 2\n"))
        }
    }
}

@Suite("Every record names the key that acted")
struct ActorKeyTests {
    @Test("a create made with K's secret names K's key_id, prefix, name and owner; audit query --actor-key finds exactly K's mutations; the chain verifies")
    func recordsNameTheActingKey() async throws {
        try await withTestProxy { proxy in
            let created = try await proxy.request(.POST, TestProxy.path(), json: #"{"name": "k-actor"}"#)
            let secret = try #require(created.json["key"] as? String)
            let keyID = try #require(created.json["key_id"] as? String)
            // K acts: two mutations of bob's keys with K's secret.
            #expect(try await proxy.create(user: "bob@example.com", name: "made-by-k", token: secret).status == 200)
            #expect(try await proxy.delete(user: "bob@example.com", key: "made-by-k", token: secret).status == 200)
            // The admin token, which the proxy never saw in a list, acts as a fingerprint only.
            _ = try await proxy.create(user: "carol@example.com", name: "made-by-admin")
            let log = try AuditLog.openForReading(path: proxy.dataDir + "/audit.sqlite", logger: TrustTests.quiet)
            var byK: [AuditEntry] = []
            var filter = AuditFilter()
            filter.actorKey = keyID
            try log.query(filter) { byK.append($0) }
            #expect(byK.map(\.key_name) == ["made-by-k", "made-by-k"])
            #expect(byK.allSatisfy { $0.actor_key_name == "k-actor" && $0.actor_user == "alice@example.com" && $0.actor_key_prefix == String(secret.prefix(10)) })
            var byOwner: [AuditEntry] = []
            filter = AuditFilter()
            filter.actorUser = "Alice@Example.com"
            try log.query(filter) { byOwner.append($0) }
            #expect(byOwner.count == 2, "--actor-user folds like --user")
            var all: [AuditEntry] = []
            try log.query(AuditFilter()) { all.append($0) }
            #expect(all.first { $0.key_name == "made-by-admin" }?.actor_key_id == nil)
            #expect(try log.verify().problem == nil)
        }
    }

    @Test("the acting key is chained: changing it in the file breaks verify at that record")
    func actorIsChained() async throws {
        var record = AuditLog.intent(AuditIntent(action: .create, user: "a@b.c", key: "k", caller: "c", client: "127.0.0.1", requestID: "r",
                                                 actor: KeyIdentity(["key_hash": String(repeating: "a", count: 64), "name": "k1", "key_id": "key_1"], user: "o@b.c")),
                                     time: "2026-12-03T00:00:00.000Z")
        let chained = record.chained(after: (0, AuditRecord.genesis), key: nil)
        record = chained
        record.actor_key_id = "key_2"
        #expect(record.computeHash(key: nil) != chained.hash)
        var withoutActor = chained
        (withoutActor.actor_key_id, withoutActor.actor_key_prefix, withoutActor.actor_key_name, withoutActor.actor_user) = (nil, nil, nil, nil)
        #expect(withoutActor.computeHash(key: nil) != chained.hash)
        // A record with a trace id alone never encodes like one with an acting key.
        var traced = withoutActor
        traced.trace_id = "x"
        var actorOnly = withoutActor
        actorOnly.actor_key_id = "x"
        #expect(traced.canonicalBody != actorOnly.canonicalBody)
    }
}
