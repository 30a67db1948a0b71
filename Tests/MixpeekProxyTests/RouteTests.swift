import NIOHTTP1
import Testing

@testable import MixpeekAPI

private let users = "/v1/organizations/users"

@Suite("Route: what an API-keys request is")
struct RouteTests {
    // MARK: The five calls

    @Test(
        "each of the five API-keys calls is recognised from its method and path",
        arguments: [
            (HTTPMethod.POST, "\(users)/alice/api-keys", Route.create(user: "alice")),
            (.GET, "\(users)/alice/api-keys", .list(user: "alice", includeRevoked: false)),
            (.GET, "\(users)/alice/api-keys?include_revoked=true", .list(user: "alice", includeRevoked: true)),
            (.PATCH, "\(users)/alice/api-keys/ci", .update(user: "alice", key: "ci")),
            (.POST, "\(users)/alice/api-keys/ci/rotate", .rotate(user: "alice", key: "ci")),
            (.DELETE, "\(users)/alice/api-keys/ci", .delete(user: "alice", key: "ci")),
        ])
    func fiveCalls(method: HTTPMethod, target: String, expected: Route) {
        #expect(Route(method: method, target: target) == expected)
    }

    @Test("a query on a mutation does not change which call it is")
    func queryOnMutation() {
        #expect(Route(method: .POST, target: "\(users)/alice/api-keys?x=1") == .create(user: "alice"))
        #expect(Route(method: .PATCH, target: "\(users)/alice/api-keys/ci?x=1") == .update(user: "alice", key: "ci"))
        #expect(Route(method: .POST, target: "\(users)/alice/api-keys/ci/rotate?x=1") == .rotate(user: "alice", key: "ci"))
        #expect(Route(method: .DELETE, target: "\(users)/alice/api-keys/ci?x=1") == .delete(user: "alice", key: "ci"))
    }

    @Test("user and key name the mutation's subject; a create or list has no key")
    func userAndKeyAccessors() {
        #expect(Route.rotate(user: "a@b.c", key: "ci").user == "a@b.c")
        #expect(Route.rotate(user: "a@b.c", key: "ci").key == "ci")
        #expect(Route.update(user: "u", key: "k").key == "k")
        #expect(Route.delete(user: "u", key: "k").key == "k")
        #expect(Route.create(user: "u").user == "u")
        #expect(Route.create(user: "u").key == nil)
        #expect(Route.list(user: "u", includeRevoked: nil).user == "u")
        #expect(Route.list(user: "u", includeRevoked: nil).key == nil)
        #expect(Route.passThrough.user == nil)
        #expect(Route.rejected(.unknownPath).user == nil)
        #expect(Route.rejected(.unknownPath).key == nil)
    }

    // MARK: Percent-encoding and unicode

    @Test("a percent-encoded email is decoded, in either hex case")
    func percentEncodedEmail() {
        #expect(Route(method: .GET, target: "\(users)/alice%40example.com/api-keys") == .list(user: "alice@example.com", includeRevoked: false))
        #expect(Route(method: .POST, target: "\(users)/alice%40example.com/api-keys") == .create(user: "alice@example.com"))
        #expect(Route(method: .DELETE, target: "\(users)/alice%40example.com/api-keys/ci%20key") == .delete(user: "alice@example.com", key: "ci key"))
        #expect(Route(method: .DELETE, target: "\(users)/alice%40example.com/api-keys/ci%3akey") == .delete(user: "alice@example.com", key: "ci:key"))
        #expect(Route(method: .POST, target: "\(users)/alice@example.com/api-keys") == .create(user: "alice@example.com"))
    }

    @Test("a + in a path stays a + (it is not a space outside a query)")
    func plusStaysPlus() {
        #expect(Route(method: .POST, target: "\(users)/alice+ci@example.com/api-keys") == .create(user: "alice+ci@example.com"))
        #expect(Route(method: .POST, target: "\(users)/alice%2Bci%40example.com/api-keys") == .create(user: "alice+ci@example.com"))
        #expect(Route(method: .PATCH, target: "\(users)/a/api-keys/ci+deploy") == .update(user: "a", key: "ci+deploy"))
    }

    @Test("percent-encoded UTF-8 decodes to the same user as the raw characters")
    func unicodeUsers() {
        let encoded = Route(method: .POST, target: "\(users)/ren%C3%A9%40example.com/api-keys")
        #expect(encoded == .create(user: "rené@example.com"))
        #expect(Route(method: .POST, target: "\(users)/ren%c3%a9@example.com/api-keys") == encoded)
        #expect(Route(method: .POST, target: "\(users)/rené@example.com/api-keys") == encoded)
        #expect(Route(method: .PATCH, target: "\(users)/a/api-keys/%F0%9F%94%91") == .update(user: "a", key: "🔑"))
        #expect(Route(method: .PATCH, target: "\(users)/a/api-keys/clé") == .update(user: "a", key: "clé"))
    }

    @Test("raw control characters, even outside ASCII, are refused like encoded ones")
    func rawControlCharacters() {
        #expect(Route(method: .POST, target: "\(users)/a\u{85}b/api-keys") == .rejected(.invalidSegment("user_email")))
        #expect(Route(method: .POST, target: "\(users)/a\u{7F}b/api-keys") == .rejected(.invalidSegment("user_email")))
        #expect(Route(method: .PATCH, target: "\(users)/a/api-keys/k\u{9}") == .rejected(.invalidSegment("key_name")))
    }

    @Test("%2F inside a name is refused: an upstream that routes on the decoded path would see another call")
    func encodedSlash() {
        for (method, target) in [
            (HTTPMethod.PATCH, "\(users)/a/api-keys/ci%2Fdeploy"), (.DELETE, "\(users)/a/api-keys/ci%2fdeploy"),
            (.POST, "\(users)/a/api-keys/ci%2Fdeploy/rotate"), (.POST, "\(users)/a/api-keys/k%2Frotate"),
            (.PATCH, "\(users)/a/api-keys/k%2Frotate"), (.GET, "\(users)/a%2Fb/api-keys"),
        ] {
            #expect(Route(method: method, target: target) == .rejected(.nonCanonical(suggestion: nil)), "\(method) \(target)")
        }
        #expect(Route(method: .GET, target: "\(users)/a%3Fb/api-keys?include_revoked=1") == .list(user: "a?b", includeRevoked: true))
    }

    @Test("a slash followed by a combining mark still separates segments, as it does for the upstream")
    func combiningMarkAfterSlash() {
        // As Characters "/\u{301}" is one grapheme; the upstream splits on the byte.
        #expect(Route(method: .DELETE, target: "\(users)/alice/api-keys/\u{301}x") == .delete(user: "alice", key: "\u{301}x"))
        #expect(Route(method: .POST, target: "\(users)/alice/api-keys/\u{301}x/rotate") == .rotate(user: "alice", key: "\u{301}x"))
        #expect(Route(method: .POST, target: "\(users)/\u{301}a/api-keys") == .create(user: "\u{301}a"))
        #expect(Route(method: .POST, target: "\(users)/alice/api-keys?\u{301}") == .create(user: "alice"))
        #expect(Route(method: .GET, target: "\(users)/alice/api-keys?\u{301}=1") == .list(user: "alice", includeRevoked: nil))
    }

    // MARK: Path shape

    @Test("a trailing slash is not the canonical spelling: refused, naming the path without it")
    func trailingSlash() {
        #expect(Route(method: .GET, target: "\(users)/a/api-keys/") == .rejected(.nonCanonical(suggestion: "\(users)/a/api-keys")))
        #expect(Route(method: .GET, target: "\(users)/a/api-keys/?include_revoked=yes") == .rejected(.nonCanonical(suggestion: "\(users)/a/api-keys")))
        #expect(Route(method: .POST, target: "\(users)/a/api-keys/") == .rejected(.nonCanonical(suggestion: "\(users)/a/api-keys")))
        #expect(Route(method: .PATCH, target: "\(users)/a/api-keys/k/") == .rejected(.nonCanonical(suggestion: "\(users)/a/api-keys/k")))
        #expect(Route(method: .DELETE, target: "\(users)/a/api-keys/k/") == .rejected(.nonCanonical(suggestion: "\(users)/a/api-keys/k")))
        #expect(Route(method: .POST, target: "\(users)/a/api-keys/k/rotate/") == .rejected(.nonCanonical(suggestion: "\(users)/a/api-keys/k/rotate")))
    }

    @Test(
        "a wrong method on an API-keys path is refused with the methods that are allowed",
        arguments: [
            (HTTPMethod.PUT, "\(users)/a/api-keys", "GET, HEAD, POST"),
            (.DELETE, "\(users)/a/api-keys", "GET, HEAD, POST"),
            (.GET, "\(users)/a/api-keys/k", "PATCH, DELETE"),
            (.POST, "\(users)/a/api-keys/k", "PATCH, DELETE"),
            (.PUT, "\(users)/a/api-keys/k", "PATCH, DELETE"),
            (.GET, "\(users)/a/api-keys/k/rotate", "POST"),
            (.DELETE, "\(users)/a/api-keys/k/rotate", "POST"),
        ])
    func wrongMethod(method: HTTPMethod, target: String, allowed: String) {
        #expect(Route(method: method, target: target) == .rejected(.methodNotAllowed(allowed: allowed)))
    }

    @Test(
        "an empty segment in an API-keys path is refused as not canonical, not guessed at",
        arguments: [
            "\(users)//api-keys",
            "\(users)//api-keys/k",
            "\(users)/a/api-keys//rotate",
            "\(users)/a/api-keys//",
            "\(users)/a/api-keys/k//",
        ])
    func emptySegment(target: String) {
        guard case .rejected(.nonCanonical) = Route(method: .POST, target: target) else {
            Issue.record("\(target): \(Route(method: .POST, target: target))")
            return
        }
    }

    @Test(
        "a user_email with a bad escape, non-UTF-8 bytes or a control character is refused",
        arguments: ["%ZZ", "%C3", "a%C3", "%C3%28", "%FF", "%00", "%0A", "a%0D%0Ab", "%7F", "%", "a%4", "%G1"])
    func invalidUser(segment: String) {
        #expect(Route(method: .POST, target: "\(users)/\(segment)/api-keys") == .rejected(.invalidSegment("user_email")))
        #expect(Route(method: .GET, target: "\(users)/\(segment)/api-keys") == .rejected(.invalidSegment("user_email")))
    }

    @Test(
        "a key_name with a bad escape, non-UTF-8 bytes or a control character is refused",
        arguments: ["%ZZ", "%C3", "%E2%82", "%00", "%0A", "%1B", "%"])
    func invalidKey(segment: String) {
        #expect(Route(method: .PATCH, target: "\(users)/a/api-keys/\(segment)") == .rejected(.invalidSegment("key_name")))
        #expect(Route(method: .POST, target: "\(users)/a/api-keys/\(segment)/rotate") == .rejected(.invalidSegment("key_name")))
    }

    @Test(
        "without a percent sign: a spelling that folds, resolves or reads into the API-keys namespace is refused; a path holding no 'users' or no 'api-keys' passes through",
        arguments: [
            ("/V1/ORGANIZATIONS/USERS/a/API-KEYS", false),
            ("/v1/Organizations/Users/a/Api-Keys/k/rotate", false),
            ("/v1/organizations\\users\\a\\api-keys", false),
            ("/v1/organizations/users;x=1/a/api-keys;y", false),
            ("/v1/./organizations/users/a/b/../api-keys", false),
            ("/v1//organizations/users/a/api-keys", false),
            ("/v1/organizations/api-keys/k1/usage", true),
            ("/v1/organizations/users/a/usage", true),
            ("/v1/organizations/USERS/a/keys", true),
            ("/v1/organizations/api-keys", true),
        ])
    func namespaceWithoutEscapes(target: String, passesThrough: Bool) {
        let route = Route(method: .POST, target: target)
        if passesThrough {
            #expect(route == .passThrough, "\(target)")
        } else if case .rejected = route {
        } else {
            Issue.record("\(target) is in the API-keys namespace, yet: \(route)")
        }
    }

    @Test("names up to maxSegmentBytes decoded bytes are accepted, longer ones refused")
    func segmentLength() {
        let limit = Route.maxSegmentBytes
        let longest = String(repeating: "u", count: limit)
        #expect(Route(method: .POST, target: "\(users)/\(longest)/api-keys") == .create(user: longest))
        #expect(Route(method: .POST, target: "\(users)/\(longest)u/api-keys") == .rejected(.invalidSegment("user_email")))
        #expect(Route(method: .DELETE, target: "\(users)/a/api-keys/\(longest)") == .delete(user: "a", key: longest))
        #expect(Route(method: .DELETE, target: "\(users)/a/api-keys/\(longest)k") == .rejected(.invalidSegment("key_name")))
        // The limit counts decoded bytes: escapes are shorter decoded, é is two bytes.
        let encoded = String(repeating: "%40", count: limit)
        #expect(Route(method: .POST, target: "\(users)/\(encoded)/api-keys") == .create(user: String(repeating: "@", count: limit)))
        let accents = String(repeating: "é", count: limit / 2)
        #expect(Route(method: .POST, target: "\(users)/\(accents)/api-keys") == .create(user: accents))
        #expect(Route(method: .POST, target: "\(users)/\(accents)é/api-keys") == .rejected(.invalidSegment("user_email")))
    }

    @Test("an API-keys path with extra or unknown trailing segments is refused as unknown")
    func unknownPath() {
        #expect(Route(method: .POST, target: "\(users)/a/api-keys/k/other") == .rejected(.unknownPath))
        #expect(Route(method: .POST, target: "\(users)/a/api-keys/k/ROTATE") == .rejected(.unknownPath))
        #expect(Route(method: .POST, target: "\(users)/a/api-keys/k/rotate/x") == .rejected(.unknownPath))
        #expect(Route(method: .GET, target: "\(users)/a/api-keys/k/rotate/x/y") == .rejected(.unknownPath))
    }

    @Test(
        "paths outside the API-keys API pass through untouched",
        arguments: [
            "/v1/collections", "/v1/collections?x=1", "/v1/organizations/users/x/other", "/health", "/", "", "*",
            "/v1/organizations/users/x", "/v2/organizations/users/x/api-keys",
            "/v1/organizations/members/x/api-keys", "/v1/organizations/users/x/api-keys.json",
            "http://evil.example/v1/organizations/users/x/api-keys",
        ])
    func passThrough(target: String) {
        for method in [HTTPMethod.GET, .POST, .PATCH, .DELETE] {
            #expect(Route(method: method, target: target) == .passThrough)
        }
    }

    // MARK: include_revoked

    @Test(
        "include_revoked is read the way the upstream reads a boolean",
        arguments: [
            ("include_revoked=TRUE", true), ("include_revoked=true", true), ("include_revoked=True", true),
            ("include_revoked=1", true), ("include_revoked=yes", true), ("include_revoked=on", true),
            ("include_revoked=t", true), ("include_revoked=y", true), ("include_revoked=%74rue", true),
            ("include%5Frevoked=true", true), ("include_revoked=true&", true),
            ("include_revoked=false", false), ("include_revoked=FALSE", false), ("include_revoked=0", false),
            ("include_revoked=no", false), ("include_revoked=off", false), ("include_revoked=f", false),
            ("include_revoked=n", false), ("", false),
        ] as [(String, Bool?)])
    func includeRevoked(query: String, expected: Bool?) {
        #expect(Route(method: .GET, target: "\(users)/a/api-keys?\(query)") == .list(user: "a", includeRevoked: expected))
    }

    @Test("a list without any query does not include revoked keys")
    func includeRevokedAbsent() {
        #expect(Route(method: .GET, target: "\(users)/a/api-keys") == .list(user: "a", includeRevoked: false))
    }

    @Test(
        "a list query that is not one plain include_revoked flag is left uncacheable (nil)",
        arguments: [
            "include_revoked=maybe", "include_revoked=", "include_revoked", "include_revoked=2", "include_revoked=truee",
            "include_revoked=true&include_revoked=true", "include_revoked=true&include_revoked=false",
            "include_session_keys=true", "include_revoked=true&include_session_keys=true", "limit=10",
            "include_revoked=%ZZ", "include_revoked=tr%C3", "include_revoked=+true", "Include_Revoked=true",
        ])
    func includeRevokedUncacheable(query: String) {
        #expect(Route(method: .GET, target: "\(users)/a/api-keys?\(query)") == .list(user: "a", includeRevoked: nil))
    }

    // MARK: Robustness

    @Test("for thousands of random targets Route never crashes and names only valid subjects")
    func randomTargets() {
        var random = SplitMix64(seed: 0x6d69_7870_6565_6b21)
        let methods: [HTTPMethod] = [.GET, .POST, .PATCH, .DELETE, .PUT, .HEAD]
        let goodPieces = ["a", "alice", "@", ".", "+", "-", "é", "%40", "%C3%A9", "\u{301}", "ß", "🔑", "rotate"]
        let badPieces = ["%", "%ZZ", "%4", "%C3", "%A9", "%00", "%0A", "\u{0}", "\n", "\u{85}", "?", "&", "=", "#", "/", "//", " ", "%2F", "%2f", "%61"]
        let queryPieces = ["include_revoked", "=", "true", "0", "&", "+", "%74", "x", "\u{301}", "?"]
        func pick(_ pieces: [String], _ random: inout SplitMix64) -> String {
            pieces[Int(random.next() % UInt64(pieces.count))]
        }
        func name(_ random: inout SplitMix64) -> String {
            (0..<(1 + Int(random.next() % 5))).map { _ in
                random.next() % 6 == 0 ? pick(badPieces, &random) : pick(goodPieces, &random)
            }.joined()
        }
        var recognised = 0
        for round in 0..<4000 {
            var method = methods[Int(random.next() % UInt64(methods.count))]
            let target: String
            switch round % 3 {
            case 0:
                let bytes = (0..<Int(random.next() % 96)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                let prefix = random.next() % 2 == 0 ? "\(users)/" : ""
                target = prefix + String(decoding: bytes, as: UTF8.self)
            case 1:
                // Mostly a method the shape allows, so the names get decoded and checked.
                let shape = random.next() % 3
                let key = shape == 0 ? "" : "/" + name(&random) + (shape == 2 ? "/rotate" : "")
                if random.next() % 8 != 0 {
                    method = [[.GET, .POST], [.PATCH, .DELETE], [.POST]][Int(shape)][Int(random.next() % (2 - shape / 2))]
                }
                let query = (0..<Int(random.next() % 5)).map { _ in pick(queryPieces, &random) }.joined()
                target = "\(users)/" + name(&random) + "/api-keys" + key + (query.isEmpty ? "" : "?" + query)
            default:
                target = (0..<Int(random.next() % 16)).map { _ in pick(goodPieces + badPieces + ["v1", "organizations", "users", "api-keys"], &random) }.joined()
            }
            let route = Route(method: method, target: target)
            if let user = route.user {
                recognised += 1
                #expect(Self.isValidName(user), "user \(user.debugDescription) from \(target.debugDescription)")
            }
            if let key = route.key {
                #expect(Self.isValidName(key), "key \(key.debugDescription) from \(target.debugDescription)")
            }
            // Whatever the upstream would read as an API-keys path must never pass through unaudited.
            if Self.upstreamSeesAPIKeysPath(target) {
                #expect(route != .passThrough, "\(method) \(target.debugDescription) passed through")
            }
            // Nor what it would read as one once a front end normalized and it decoded the path.
            let path = target.utf8.split(separator: UInt8(ascii: "?"), maxSplits: 1, omittingEmptySubsequences: false).first ?? target.utf8[...]
            if let decoded = PathSpelling.upstreamSegments(path)?.segments, decoded.count >= 5,
               decoded[..<3] == ["v1", "organizations", "users"], decoded[4] == "api-keys" {
                #expect(route != .passThrough, "\(method) \(target.debugDescription) passed through")
            }
        }
        // The generator must actually reach the parser's interesting branches.
        #expect(recognised > 500)
    }

    private static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= Route.maxSegmentBytes
            && !name.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    /// The upstream reads the target as bytes: path before the first `?` byte, split on `/` bytes.
    private static func upstreamSeesAPIKeysPath(_ target: String) -> Bool {
        let path = target.utf8.split(separator: UInt8(ascii: "?"), maxSplits: 1, omittingEmptySubsequences: false).first ?? target.utf8[...]
        let segments = path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        return segments.count >= 6 && segments[0].isEmpty && segments[1] == "v1" && segments[2] == "organizations"
            && segments[3] == "users" && segments[5] == "api-keys"
    }
}

/// A small deterministic generator, so a failure reproduces.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E49B
        z = (z ^ (z >> 27)) &* 0x94D1_049B_133D_11EB
        return z ^ (z >> 31)
    }
}
