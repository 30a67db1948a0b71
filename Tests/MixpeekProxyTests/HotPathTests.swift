import NIOHTTP1
import Testing

@testable import MixpeekProxy

/// The shortcuts taken on every request must say what the slow, obvious code said.
@Suite("Hot-path helpers")
struct HotPathTests {
    @Test("generated request IDs are distinct, UUID-shaped (version 4, RFC 4122 variant) and lowercase hex")
    func requestIDs() {
        var seen = Set<String>()
        for _ in 0..<10_000 {
            let id = RequestID.next()
            #expect(seen.insert(id).inserted)
            let groups = id.split(separator: "-", omittingEmptySubsequences: false)
            #expect(groups.map(\.count) == [8, 4, 4, 4, 12])
            #expect(id.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) || $0 == UInt8(ascii: "-") })
            #expect(groups[2].first == "4")
            #expect(["8", "9", "a", "b"].contains(groups[3].first!))
        }
        #expect(RequestID.format(high: 0x0123_4567_89AB_CDEF, low: 0xFEDC_BA98_7654_3210) == "01234567-89ab-cdef-fedc-ba9876543210")
    }

    @Test("a client's sane X-Request-Id is kept; a missing, empty, long or spaced one is replaced")
    func clientRequestIDs() {
        #expect(Proxy.requestID(["x-request-id": "ci-run-42"]) == "ci-run-42")
        for bad in ["", String(repeating: "a", count: 129), "has space", "tab\there"] {
            #expect(Proxy.requestID(["x-request-id": bad]) != bad)
        }
        #expect(Proxy.requestID([:]).count == 36)
    }

    @Test("the target byte masks accept exactly RFC 3986's path and query bytes: letters, digits and -._~!$&'()*+,;=:@/?%")
    func targetBytes() {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/?%".utf8)
        for byte in UInt8.min...UInt8.max {
            #expect(Proxy.isTargetByte(byte) == allowed.contains(byte), "byte \(byte)")
        }
    }

    @Test("header list members are split on commas, trimmed of spaces and tabs, lowercased, empties dropped")
    func listTokens() {
        #expect(Headers.listTokens(" No-Cache ,\tMAX-AGE=0,, private") == ["no-cache", "max-age=0", "private"])
        #expect(Headers.listTokens("") == [])
        #expect(Headers.listTokens(" , ") == [])
        let headers: HTTPHeaders = ["Cache-Control": "public, No-Store", "Pragma": "no-cache"]
        #expect(headers.cacheControl(contains: "no-store"))
        #expect(!headers.cacheControl(contains: "no-cache"))
        #expect(headers.demandsRefresh)
        #expect((["cache-control": "Max-Age=0"] as HTTPHeaders).demandsRefresh)
        #expect(!(["cache-control": "max-age=10"] as HTTPHeaders).demandsRefresh)
    }

    @Test("the disk index answers maybe until loaded, then only for loaded or stored keys and users; a purge forgets")
    func cacheIndex() {
        let a = CacheKey(credential: "c", user: "a@example.com", includeRevoked: false)
        let b = CacheKey(credential: "c", user: "b@example.com", includeRevoked: false)
        let c = CacheKey(credential: "c", user: "c@example.com", includeRevoked: true)
        var index = CacheIndex()
        #expect(index.mayContain(a) && index.mayContain(b))
        #expect(index.mayHaveLists(ofFolded: "anyone@example.com"), "nothing is known before the file is read")
        index.noteStored(c)
        index.deleted(folded: "c@example.com")
        index.loaded(hashes: [CacheIndex.hash(a)], users: [a.user])
        #expect(index.mayContain(a) && index.mayHaveLists(ofFolded: a.user))
        #expect(!index.mayContain(b) && !index.mayHaveLists(ofFolded: b.user))
        #expect(index.mayContain(c) && index.mayHaveLists(ofFolded: c.user), "stored while the file was being read")
        index.noteStored(b)
        #expect(index.mayContain(b) && index.mayHaveLists(ofFolded: b.user))
        index.deleted(folded: b.user)
        #expect(!index.mayHaveLists(ofFolded: b.user), "its delete is queued")
        index.noteStored(b)
        #expect(index.mayHaveLists(ofFolded: b.user), "stored again after the delete")
        index.purged()
        #expect(!index.mayContain(a) && !index.mayContain(b) && !index.mayContain(c))
        #expect(!index.mayHaveLists(ofFolded: a.user) && !index.mayHaveLists(ofFolded: c.user))
    }
}
