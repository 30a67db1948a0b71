import Foundation
import GRDB
import Logging
import MixpeekAPI
import MixpeekFake
@testable import MixpeekProxy
import NIOHTTP1
import Testing

/// The audit log's promise for every spelling of a call: a request the upstream may route as
/// an API-keys mutation is audited and invalidates, or it is refused before forwarding.
@Suite("Spellings: no spelling of a mutation escapes the audit or the invalidation")
struct SpellingTests {
    static let users = "/v1/organizations/users"

    // MARK: Classification

    @Test(
        "every non-canonical spelling of an API-keys call is refused, naming the canonical one",
        arguments: [
            (HTTPMethod.DELETE, "\(users)/a%40b.com/api-key%73/k", "\(users)/a%40b.com/api-keys/k"),
            (.DELETE, "\(users)/a%40b.com/./api-keys/k", "\(users)/a%40b.com/api-keys/k"),
            (.POST, "\(users)/a%40b.com/api-key%73", "\(users)/a%40b.com/api-keys"),
            (.POST, "\(users)/a/api-keys/k/%72otate", "\(users)/a/api-keys/k/rotate"),
            (.POST, "\(users)/a/api-keys/k/rotate/", "\(users)/a/api-keys/k/rotate"),
            (.GET, "\(users)/a/api-keys/", "\(users)/a/api-keys"),
            (.PATCH, "\(users)/a/api-keys//k", "\(users)/a/api-keys/k"),
            (.PATCH, "/v1//organizations/users/a/api-keys/k", "\(users)/a/api-keys/k"),
            (.PATCH, "/v1/x/../organizations/users/a/api-keys/k", "\(users)/a/api-keys/k"),
            (.PATCH, "\(users)/%61/api-keys/k", "\(users)/a/api-keys/k"),
            (.PATCH, "\(users)/a/api-keys/ci%2dkey", "\(users)/a/api-keys/ci-key"),
            (.PATCH, "\(users)/a/api-keys/ci%2Dkey", "\(users)/a/api-keys/ci-key"),
            (.DELETE, "/%2E/v1/organizations/users/a/api-keys/k", "\(users)/a/api-keys/k"),
        ])
    func refusedWithSuggestion(method: HTTPMethod, target: String, canonical: String) {
        #expect(Route(method: method, target: target) == .rejected(.nonCanonical(suggestion: canonical)), "\(method) \(target)")
    }

    @Test(
        "spellings the upstream may route into the API-keys namespace, with no canonical equivalent, are refused",
        arguments: [
            // An encoded `/` separates to an upstream that routes on the decoded path: a rotate.
            (HTTPMethod.POST, "\(users)/a%2Fapi-keys%2Fk/rotate"),
            (.PATCH, "\(users)/a/api-keys/k%2Frotate"),
            (.DELETE, "\(users)/x/api-keys/a%2F..%2F..%2Fy%2Fapi-keys%2Fk"),
            (.POST, "/v1/organizations/users%2Fa%2Fapi-keys"),
            (.DELETE, "/V1/Organizations/Users/a/API-KEYS/k"),
            (.DELETE, "\(users)/a/api-keys;x/k"),
            (.DELETE, "\(users)/a/api-keys%252Fk"),
            (.DELETE, "/v1/organizations\\users/a/api-keys/k"),
        ])
    func refusedWithoutSuggestion(method: HTTPMethod, target: String) {
        guard case .rejected(.nonCanonical) = Route(method: method, target: target) else {
            Issue.record("\(method) \(target) was \(Route(method: method, target: target))")
            return
        }
    }

    @Test(
        "paths outside the API-keys namespace in every reading pass through",
        arguments: [
            "/v1/collections", "/v1/organizations/users/a", "/v1/organizations/users/a/settings",
            "/v1/organizations/users/a%2Fb", "/v1/organizations/users/api-keys", "/v1/organizations/api-keys/a",
            "/v1/organizations/users/a/api-keysx", "/v1/./collections/", "/v1/organizations/users",
        ])
    func passThrough(target: String) {
        #expect(Route(method: .DELETE, target: target) == .passThrough, "\(target)")
    }

    @Test("the canonical spellings, as the SDK and curl send them, keep their routes")
    func canonicalKept() {
        #expect(Route(method: .DELETE, target: "\(Self.users)/a%40b.com/api-keys/k") == .delete(user: "a@b.com", key: "k"))
        #expect(Route(method: .DELETE, target: "\(Self.users)/a@b.com/api-keys/k") == .delete(user: "a@b.com", key: "k"))
        #expect(Route(method: .POST, target: "\(Self.users)/a%40b.com/api-keys/k/rotate") == .rotate(user: "a@b.com", key: "k"))
        #expect(Route(method: .PATCH, target: "\(Self.users)/ren%c3%a9%40b.com/api-keys/k%20k") == .update(user: "rené@b.com", key: "k k"))
        #expect(Route(method: .GET, target: "\(Self.users)/a%40b.com/api-keys?include_revoked=true") == .list(user: "a@b.com", includeRevoked: true))
        // Names that look like dot segments only once decoded are ordinary names.
        #expect(Route(method: .DELETE, target: "\(Self.users)/a/api-keys/...") == .delete(user: "a", key: "..."))
        #expect(Route(method: .DELETE, target: "\(Self.users)/a/api-keys/.k") == .delete(user: "a", key: ".k"))
    }

    @Test("the upstream's reading: unreserved escapes decoded, dot segments removed, slashes merged, then decoded")
    func upstreamReading() throws {
        let reading = try #require(PathSpelling.upstreamSegments("/v1/organizations/users/a%40b.com/./x/../api-key%73//k/".utf8))
        #expect(reading.segments == ["v1", "organizations", "users", "a@b.com", "api-keys", "k"])
        #expect(reading.trailingSlash)
        #expect(PathSpelling.upstreamSegments("/a%2Fb/c".utf8)?.segments == ["a", "b", "c"])
        #expect(PathSpelling.upstreamSegments("/../../a".utf8)?.segments == ["a"])
        #expect(PathSpelling.upstreamSegments("/a/%FF".utf8) == nil)
        #expect(PathSpelling.normalized("/v1/./a%2fb/%7e/x/../y/".utf8) == "/v1/a%2Fb/~/y")
    }

    // MARK: One user, every spelling

    @Test("users fold by Unicode case folding and NFC")
    func folding() {
        #expect(UserIdentity.folded("Carol@EXAMPLE.com") == "carol@example.com")
        #expect(UserIdentity.folded("carol@example.com") == "carol@example.com")
        #expect(UserIdentity.folded("STRASSE@x.de") == UserIdentity.folded("straße@x.de"))
        #expect(UserIdentity.folded("E\u{301}@x.com") == UserIdentity.folded("é@x.com"))
        #expect(UserIdentity.folded("É@x.com") == "é@x.com")
        #expect(UserIdentity.folded("bob@example.com") != UserIdentity.folded("rob@example.com"))
    }

    // MARK: Through the real proxy

    @Test("the issue's spellings are refused with 400 non_canonical_path, never forwarded, never audited")
    func issueExamples() async throws {
        try await withTestProxy { proxy in
            _ = try await proxy.create(user: "a@b.com", name: "k")
            let forwarded = proxy.controls.totalCalls
            for (method, target) in [
                (HTTPMethod.DELETE, "\(Self.users)/a%40b.com/api-key%73/k"),
                (.DELETE, "\(Self.users)/a%40b.com/./api-keys/k"),
                (.POST, "\(Self.users)/a%40b.com/api-key%73"),
                (.POST, "\(Self.users)/a%40b.com/api-keys/k/%72otate"),
            ] {
                let raw = try await rawExchange(port: proxy.app.port, Array(
                    "\(method.rawValue) \(target) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(TestProxy.token)\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"name\":\"z\"}".utf8))
                #expect(raw.text.hasPrefix("HTTP/1.1 400 "), "\(method) \(target): \(raw.text.prefix(40))")
                #expect(raw.text.contains(#""code":"mixpeek_proxy.non_canonical_path""#))
                #expect(raw.text.contains("instead"))
            }
            #expect(proxy.controls.totalCalls == forwarded, "nothing reached the upstream")
            var entries: [AuditEntry] = []
            try proxy.app.audit!.query(AuditFilter()) { entries.append($0) }
            #expect(entries.map(\.action) == ["create"])
            let list = try await proxy.list(user: "a@b.com")
            #expect(list.keyNames.contains("k"), "the key was not deleted behind the proxy's back")
        }
    }

    @Test("a create for Carol@EXAMPLE.com drops the cached lists of carol@example.com (upstream matching case-insensitively)")
    func caseInsensitiveReadYourWrites() async throws {
        try await withTestProxy { proxy in
            proxy.controls.matchUsersCaseInsensitively(true)
            _ = try await proxy.list(user: "carol@example.com")
            #expect(try await proxy.list(user: "carol@example.com").header("x-cache") == "HIT")
            #expect(try await proxy.create(user: "Carol@EXAMPLE.com", name: "new-key").status == 200)
            let after = try await proxy.list(user: "carol@example.com")
            #expect(after.header("x-cache") == "MISS")
            #expect(after.keyNames.contains("new-key"))
            // And the other way round, with a non-ASCII address.
            _ = try await proxy.list(user: "ren%C3%89@example.com")
            #expect(try await proxy.list(user: "ren%C3%89@example.com").header("x-cache") == "HIT")
            #expect(try await proxy.delete(user: "ren%C3%A9@example.com", key: "admin-key").status == 403)
            #expect(try await proxy.list(user: "ren%C3%89@example.com").header("x-cache") == "MISS")
        }
    }

    @Test("a mutation after a restart drops the last run's lists of every spelling of the user")
    func foldedOnDisk() async throws {
        let dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        let fake = try await FakeUpstreamServer.start()
        fake.controls.matchUsersCaseInsensitively(true)
        let first = try await TestProxy.start(dataDir: dataDir, fake: fake)
        _ = try await first.list(user: "dave@example.com")
        await first.stop(keepFake: true)
        let second = try await TestProxy.start(dataDir: dataDir, fake: fake)
        #expect(try await second.list(user: "dave@example.com").header("x-cache") == "HIT", "read back from the file")
        #expect(try await second.create(user: "DAVE@example.com", name: "k2").status == 200)
        let after = try await second.list(user: "dave@example.com")
        #expect(after.header("x-cache") == "MISS")
        #expect(after.keyNames.contains("k2"))
        await second.stop()
    }

    @Test("audit query --user finds every spelling of one address; each record keeps the spelling sent")
    func auditQueryFolds() async throws {
        try await withTestProxy { proxy in
            _ = try await proxy.create(user: "erin@example.com", name: "a")
            _ = try await proxy.create(user: "Erin@Example.COM", name: "b")
            _ = try await proxy.create(user: "frank@example.com", name: "c")
            var entries: [AuditEntry] = []
            try proxy.app.audit!.query(AuditFilter(user: "ERIN@example.com")) { entries.append($0) }
            #expect(entries.map(\.user_email) == ["erin@example.com", "Erin@Example.COM"])
            #expect(entries.map(\.key_name) == ["a", "b"])
        }
    }

    @Test("a Location or Content-Location at the upstream's origin is rewritten to the proxy; others are left alone")
    func redirectsStayOnTheProxy() async throws {
        let cases: [(given: String, expected: (Int) -> String)] = [
            ("https://api.mixpeek.com/v1/organizations/users/a/api-keys", { "http://127.0.0.1:\($0)/v1/organizations/users/a/api-keys" }),
            ("HTTPS://API.mixpeek.com:443/v1/x?y=1", { "http://127.0.0.1:\($0)/v1/x?y=1" }),
            ("https://api.mixpeek.com", { "http://127.0.0.1:\($0)/" }),
            ("/v1/relative", { _ in "/v1/relative" }),
            ("https://elsewhere.example/v1/x", { _ in "https://elsewhere.example/v1/x" }),
            ("http://api.mixpeek.com/v1/x", { _ in "http://api.mixpeek.com/v1/x" }),
            ("https://api.mixpeek.com:8443/v1/x", { _ in "https://api.mixpeek.com:8443/v1/x" }),
        ]
        for (given, expected) in cases {
            let upstream = StubUpstream { _ in
                UpstreamResponse(status: .temporaryRedirect, headers: ["Location": given, "Content-Location": given], body: .init())
            }
            let (raw, port) = try await withStubProxy(upstream) { app, _ in
                (try await rawExchange(port: app.port, Array("GET /v1/other/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)), app.port)
            }
            let lines = raw.text.components(separatedBy: "\r\n").map { $0.lowercased() }
            #expect(lines.contains("location: \(expected(port))".lowercased()), "\(given): \(raw.text)")
            #expect(lines.contains("content-location: \(expected(port))".lowercased()), "\(given)")
        }
    }

    // MARK: Property

    @Test("seeded random spellings of mutations: each one the upstream applies is audited and invalidates; the rest are refused before forwarding")
    func randomSpellings() async throws {
        var random = SplitMix64(seed: 0x5EED_0015)
        try await withTestProxy { proxy in
            proxy.controls.matchUsersCaseInsensitively(true)
            let auditFile = try DatabaseQueue(path: proxy.dataDir + "/audit.sqlite", configuration: {
                var configuration = Configuration()
                configuration.readonly = true
                return configuration
            }())
            let people = ["carol@example.com", "d.o-e_x~y@example.org", "rené@exämple.com"]
            let keys = ["k1", "k2", "k.3"]
            var applied = 0
            var refused = 0
            var lastSeq: Int64 = 0
            for round in 0..<2000 {
                let person = people[Int(random.next() % UInt64(people.count))]
                // A list of the person's lower-case spelling is cached before each mutation.
                let listPath = TestProxy.path(user: Spelling.encoded(person, random: &random, unreserved: false).text)
                _ = try await proxy.request(.GET, listPath)

                let action = ["create", "update", "rotate", "delete"][Int(random.next() % 4)]
                let key = keys[Int(random.next() % UInt64(keys.count))]
                var segments = ["v1", "organizations", "users", Spelling.randomCase(person, random: &random), "api-keys"]
                if action != "create" { segments.append(key) }
                if action == "rotate" { segments.append("rotate") }
                let canonical = random.next() % 3 == 0
                let target = Spelling.path(segments, canonical: canonical, random: &random)
                let method = ["create": "POST", "update": "PATCH", "rotate": "POST", "delete": "DELETE"][action]!
                let body = action == "create" ? #"{"name":"\#(key)"}"# : action == "update" ? #"{"description":"r\#(round)"}"# : ""

                let callsBefore = proxy.controls.totalCalls
                let appliedBefore = proxy.controls.appliedMutations.count
                let raw = try await rawExchange(port: proxy.app.port, Array(
                    "\(method) \(target) HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(TestProxy.token)\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8))
                let mutations = proxy.controls.appliedMutations.dropFirst(appliedBefore)
                let intents = try auditFile.read { db in
                    try Row.fetchAll(db, sql: "SELECT seq, action, user_email, key_name FROM audit_records WHERE kind = 'intent' AND seq > ? ORDER BY seq", arguments: [lastSeq])
                }
                lastSeq = try await auditFile.read { db in try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(seq), 0) FROM audit_records") } ?? lastSeq

                if let mutation = mutations.first {
                    applied += 1
                    #expect(mutations.count == 1)
                    let intent = try #require(intents.first, "applied but not audited: \(method) \(target)")
                    #expect(intents.count == 1)
                    #expect(intent["action"] == mutation.operation.rawValue, "\(target)")
                    #expect(UserIdentity.folded(intent["user_email"]) == UserIdentity.folded(mutation.user), "\(target)")
                    #expect(intent["key_name"] == mutation.key, "\(target)")
                    // Read-your-writes: the list the proxy serves now is the upstream's list now.
                    let throughProxy = try await proxy.request(.GET, listPath)
                    let direct = try await proxy.request(.GET, listPath, base: proxy.fake.url)
                    #expect(Self.summary(throughProxy) == Self.summary(direct), "stale list after \(method) \(target)")
                } else {
                    refused += 1
                    #expect(proxy.controls.totalCalls == callsBefore, "forwarded but not applied: \(method) \(target)")
                    #expect(intents.isEmpty, "audited but never forwarded: \(method) \(target)")
                    #expect(raw.text.hasPrefix("HTTP/1.1 400 "), "\(method) \(target): \(raw.text.prefix(60))")
                    #expect(!canonical, "a canonical spelling was refused: \(method) \(target)")
                }
            }
            #expect(applied > 400 && refused > 400, "the generator exercises both sides: \(applied) applied, \(refused) refused")
        }
    }

    /// What a list says of each key, in order: enough to tell any mutation's effect.
    static func summary(_ response: TestResponse) -> [String] {
        ((response.json["keys"] as? [[String: Any]]) ?? []).map { key in
            ["name", "status", "key_hash", "description", "revoked_at"].map { "\(key[$0] ?? "-")" }.joined(separator: "|")
        }
    }
}

/// Spellings of one path, for the property test.
enum Spelling {
    /// A name percent-encoded as the SDK does (everything but unreserved characters, hex digits
    /// in random case), and, when `unreserved`, some unreserved characters too; says whether
    /// it encoded any of those.
    static func encoded(_ text: String, random: inout SplitMix64, unreserved: Bool) -> (text: String, changed: Bool) {
        var out = ""
        var changed = false
        for byte in text.utf8 {
            let isUnreserved = byte.isASCIILetterOrDigit || "-._~".utf8.contains(byte)
            if isUnreserved && !(unreserved && random.next() % 4 == 0) {
                out.append(Character(Unicode.Scalar(byte)))
                continue
            }
            changed = changed || isUnreserved
            let hex = String(byte, radix: 16, uppercase: random.next() % 2 == 0)
            out += "%" + (hex.count == 1 ? "0" + hex : hex)
        }
        return (out, changed)
    }

    static func randomCase(_ text: String, random: inout SplitMix64) -> String {
        String(text.map { random.next() % 3 == 0 ? Character($0.uppercased()) : $0 })
    }

    /// The canonical spelling of `segments`, or one with at least one of: percent-encoded
    /// unreserved characters, `.` or `zz/..` segments, a doubled slash, a trailing slash.
    static func path(_ segments: [String], canonical: Bool, random: inout SplitMix64) -> String {
        while true {
            var parts: [String] = []
            var changed = false
            for segment in segments {
                let (spelled, encodedUnreserved) = encoded(segment, random: &random, unreserved: !canonical && random.next() % 3 == 0)
                changed = changed || encodedUnreserved
                if !canonical {
                    switch random.next() % 8 {
                    case 0: parts.append("."); changed = true
                    case 1: parts += ["zz", ".."]; changed = true
                    case 2: parts.append(""); changed = true
                    default: break
                    }
                }
                parts.append(spelled)
            }
            if !canonical, random.next() % 5 == 0 { parts.append(""); changed = true }
            if canonical || changed { return "/" + parts.joined(separator: "/") }
        }
    }
}

extension UInt8 {
    var isASCIILetterOrDigit: Bool {
        (0x30...0x39).contains(self) || (0x41...0x5A).contains(self) || (0x61...0x7A).contains(self)
    }
}
