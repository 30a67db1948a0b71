import Foundation
import MixpeekAPI
import Testing

@testable import MixpeekFake

/// The fake's bodies are written by hand (`JSONWriter`); they must read as what `JSONEncoder`
/// wrote before, which the SDK's models were checked against.
@Suite("Fake bodies")
struct FakeBodyTests {
    static func object(_ data: Data) throws -> NSObject {
        try #require(try JSONSerialization.jsonObject(with: data) as? NSObject)
    }

    static func written(_ body: some JSONBody) -> Data {
        var json = JSONWriter()
        body.write(to: &json)
        return Data(json.bytes)
    }

    @Test("key records, lists and success bodies read as JSONEncoder's, with and without their optional fields")
    func bodiesMatchJSONEncoder() throws {
        let bare = APIKeyRecord(key_id: "key_1", key_hash: String(repeating: "a", count: 64), key_prefix: "sk_abc",
                                internal_id: "int_1", organization_id: "org_1", user_id: "u@example.com", name: "ci",
                                created_at: "2026-12-02T10:00:00.000Z", created_by: "u@example.com")
        var full = bare
        full.name = "quote \" backslash \\ slash / tab\t control \u{1} 🔑 ünï"
        full.description = "line\nbreak"
        full.permissions = []
        full.rate_limit_override = 1200
        full.expires_at = "2027-01-01T00:00:00Z"
        full.revoked_at = "2026-12-02T11:00:00.000Z"
        full.revoked_by = "admin"
        full.allowed_origins = ["https://a.example", "https://b.example"]
        full.key = "sk_secret_0123456789"
        full.is_internal = true
        for record in [bare, full] {
            #expect(try Self.object(Self.written(record)) == Self.object(JSONEncoder().encode(record)))
        }
        let list = ListBody(keys: [bare, full], total: 2)
        #expect(try Self.object(Self.written(list)) == Self.object(JSONEncoder().encode(list)))
        let empty = ListBody(keys: [], total: 0)
        #expect(try Self.object(Self.written(empty)) == Self.object(JSONEncoder().encode(empty)))
        let success = SuccessBody(message: "API key 'ci' revoked")
        #expect(try Self.object(Self.written(success)) == Self.object(JSONEncoder().encode(success)))
    }
}
