import NIOHTTP1
import Testing

@testable import MixpeekProxy

@Suite("Header sanitiser")
struct HeaderSanitiserTests {
    static let hopByHop = ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection",
                           "proxy-authorization", "proxy-authenticate", "proxy-x-anything", "host", "content-length"]
    static let endToEnd = ["authorization", "content-type", "accept", "x-request-id", "x-custom", "etag", "cache-control", "user-agent"]

    @Test("for any mix of headers, no hop-by-hop field or field named by Connection survives, and every other is kept in order")
    func property() {
        var generator = SeededGenerator(seed: 42)
        for _ in 0..<2000 {
            var headers = HTTPHeaders()
            var named: Set<String> = []
            for _ in 0..<Int.random(in: 0...12, using: &generator) {
                let pool = Bool.random(using: &generator) ? Self.hopByHop : Self.endToEnd
                let name = pool.randomElement(using: &generator)!
                let cased = Bool.random(using: &generator) ? name.uppercased() : name
                headers.add(name: cased, value: "v\(Int.random(in: 0...9, using: &generator))")
            }
            if Bool.random(using: &generator) {
                let tokens = (0..<Int.random(in: 1...3, using: &generator)).map { _ in Self.endToEnd.randomElement(using: &generator)! }
                named = Set(tokens)
                headers.add(name: "Connection", value: tokens.map { Bool.random(using: &generator) ? " \($0.uppercased())" : $0 }.joined(separator: ","))
            }
            let kept = Headers.endToEnd(headers)
            for (name, _) in kept {
                #expect(!Self.hopByHop.contains(name.lowercased()) && !name.lowercased().hasPrefix("proxy-"))
                #expect(!named.contains(name.lowercased()))
            }
            let expected = headers.filter { name, _ in
                let lower = name.lowercased()
                return !Self.hopByHop.contains(lower) && !lower.hasPrefix("proxy-") && !named.contains(lower)
            }
            #expect(kept.map { "\($0.name):\($0.value)" } == expected.map { "\($0.name):\($0.value)" })
        }
    }

    @Test("Via is added once in each direction")
    func via() {
        let headers: HTTPHeaders = ["Via": "1.0 other", "Connection": "close"]
        #expect(Headers.forwarded(headers)["via"] == ["1.0 other", "1.1 mixpeek-proxy"])
        #expect(Headers.forwarded(headers)["via"] == ["1.0 other", "1.1 mixpeek-proxy"])
    }

    @Test("Cache-Control no-cache, max-age=0 and Pragma no-cache demand a refresh; max-age=60 does not")
    func refreshDirectives() {
        #expect(HTTPHeaders([("Cache-Control", "no-cache")]).demandsRefresh)
        #expect(HTTPHeaders([("Cache-Control", "private, max-age=0")]).demandsRefresh)
        #expect(HTTPHeaders([("Pragma", "no-cache")]).demandsRefresh)
        #expect(!HTTPHeaders([("Cache-Control", "max-age=60")]).demandsRefresh)
        #expect(!HTTPHeaders().demandsRefresh)
        #expect(HTTPHeaders([("Cache-Control", "No-Store")]).cacheControl(contains: "no-store"))
    }
}
