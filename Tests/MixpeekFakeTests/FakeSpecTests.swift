import Foundation
import MixpeekFake
import NIOCore
import NIOHTTP1
import Testing

private let alice = "/v1/organizations/users/alice%40example.com/api-keys"

/// Where the fake used to drift from the real API (OpenAPI document 0.81, served by FastAPI):
/// every test and the demo trust the fake, so it must answer as the real one does.
@Suite("Fake answers like the spec")
struct FakeSpecTests {
    /// The `error.message` of a 422.
    static func message(_ response: TestResponse) throws -> String {
        let error = try #require(try response.jsonObject()["error"] as? [String: Any])
        return try #require(error["message"] as? String)
    }

    @Test("rate_limit_override: 1 is the spec's inclusive minimum; 0, a boolean and a string are refused")
    func rateLimitMinimum() async throws {
        try await withFake { _, client in
            let one = try await client.post(alice, #"{"name": "one", "rate_limit_override": 1}"#)
            #expect(one.status == .ok, "\(one.text)")
            #expect(try one.jsonObject()["rate_limit_override"] as? Int == 1)
            for bad in ["0", "true", "\"5\"", "1.5"] {
                let refused = try await client.post(alice, #"{"name": "bad", "rate_limit_override": \#(bad)}"#)
                #expect(refused.status == .unprocessableEntity, "\(bad)")
                #expect(try Self.message(refused).hasPrefix("body.rate_limit_override: "), "\(bad)")
            }
        }
    }

    @Test("expires_at must be a date-time: anything else is a 422 naming it; a valid one is returned")
    func expiresAtIsADateTime() async throws {
        try await withFake { _, client in
            for bad in ["\"not-a-date\"", "\"2030-13-01T00:00:00Z\"", "\"2030-01-01\"", "5"] {
                let refused = try await client.post(alice, #"{"name": "x", "expires_at": \#(bad)}"#)
                #expect(refused.status == .unprocessableEntity, "\(bad)")
                #expect(try Self.message(refused).hasPrefix("body.expires_at: "), "\(bad)")
            }
            let created = try await client.post(alice, #"{"name": "x", "expires_at": "2030-01-01T00:00:00+00:00"}"#)
            #expect(created.status == .ok)
            #expect(try created.jsonObject()["expires_at"] as? String == "2030-01-01T00:00:00.000Z")
        }
    }

    @Test("scopes are validated (resource_id must be a string of 1 to 100) and returned as given")
    func scopes() async throws {
        try await withFake { _, client in
            let null = try await client.post(alice, #"{"name": "s", "scopes": [{"resource_type": "namespace", "resource_id": null}]}"#)
            #expect(null.status == .unprocessableEntity)
            #expect(try Self.message(null).hasPrefix("body.scopes.0.resource_id: "))
            let badType = try await client.post(alice, #"{"name": "s", "scopes": [{"resource_type": "galaxy", "resource_id": "x"}]}"#)
            #expect(try Self.message(badType).hasPrefix("body.scopes.0.resource_type: "))
            let scoped = try await client.post(
                alice, #"{"name": "s", "scopes": [{"resource_type": "namespace", "resource_id": "ns_1", "operations": ["read_data"]}]}"#)
            #expect(scoped.status == .ok)
            let scopes = try #require(try scoped.jsonObject()["scopes"] as? [[String: Any]])
            #expect(scopes.count == 1)
            #expect(scopes.first?["resource_id"] as? String == "ns_1")
            #expect(scopes.first?["operations"] as? [String] == ["read_data"])
            let listed = try await client.get(alice).jsonObject()["keys"] as? [[String: Any]]
            #expect((listed?.last?["scopes"] as? [[String: Any]])?.first?["resource_type"] as? String == "namespace")
            #expect((listed?.first?["scopes"] as? [Any])?.isEmpty == true, "a key without scopes has an empty list")
        }
    }

    @Test("the 422 names the field that is wrong, not name")
    func messageNamesTheField() async throws {
        try await withFake { _, client in
            let response = try await client.post(alice, #"{"name": "fine", "permissions": ["root"]}"#)
            #expect(response.status == .unprocessableEntity)
            #expect(try Self.message(response).hasPrefix("body.permissions.0: "))
            let error = try #require(try response.jsonObject()["error"] as? [String: Any])
            #expect(error["type"] as? String == "validation_error")
            #expect((error["details"] as? [String: String])?["loc"] == "body.permissions.0")
            #expect(try Self.message(try await client.post(alice, #"{"description": "no name"}"#)) == "body.name: Field required")
        }
    }

    @Test("a query as FastAPI reads it: other parameters ignored, the last include_revoked taken, a bad boolean a 422 naming it")
    func fastAPIQuery() async throws {
        try await withFake { _, client in
            #expect(try await client.post(alice, #"{"name": "gone"}"#).status == .ok)
            #expect(try await client.delete("\(alice)/gone").status == .ok)
            func count(_ query: String) async throws -> Int? {
                let response = try await client.get("\(alice)?\(query)")
                return response.status == .ok ? try response.jsonObject()["total"] as? Int : nil
            }
            #expect(try await count("limit=10") == 1)
            #expect(try await count("include_revoked=false&include_revoked=true") == 2)
            #expect(try await count("include_revoked=true&include_revoked=0") == 1)
            #expect(try await count("include_revoked=TRUE&other=x") == 2)
            let bad = try await client.get("\(alice)?include_revoked=maybe")
            #expect(bad.status == .unprocessableEntity)
            #expect(try Self.message(bad).hasPrefix("query.include_revoked: "))
        }
    }

    @Test("405 carries Allow, as Starlette sends it")
    func allowOn405() async throws {
        try await withFake { _, client in
            let list = try await client.send(.PUT, alice, body: "{}")
            #expect(list.status == .methodNotAllowed)
            #expect(list.headers.first(name: "allow") == "GET, HEAD, POST")
            #expect(try await client.send(.GET, "\(alice)/k").headers.first(name: "allow") == "PATCH, DELETE")
            #expect(try await client.send(.GET, "\(alice)/k/rotate").headers.first(name: "allow") == "POST")
        }
    }

    @Test("a body must be JSON, as FastAPI reads it: text/plain is a 422, application/*+json is read")
    func jsonContentType() async throws {
        try await withFake { _, client in
            let body = #"{"name": "typed"}"#
            func post(_ contentType: String?) async throws -> TestResponse {
                var headers: HTTPHeaders = ["authorization": "Bearer sk_alpha"]
                if let contentType { headers.add(name: "content-type", value: contentType) }
                return try await client.send(.POST, alice, headers: headers, body: body)
            }
            let plain = try await post("text/plain")
            #expect(plain.status == .unprocessableEntity)
            #expect(try Self.message(plain).hasPrefix("body: "))
            #expect(try await post("application/merge-patch+json").status == .ok)
        }
    }

    @Test("a key whose expires_at has passed is listed as expired, and its secret authenticates nothing")
    func expiry() async throws {
        try await withFake { _, client in
            let created = try await client.post(alice, #"{"name": "brief", "expires_at": "2099-01-01T00:00:00Z"}"#)
            #expect(created.status == .ok)
            let secret = try #require(try created.jsonObject()["key"] as? String)
            #expect(try await client.with(token: secret).get(alice).status == .ok, "works before it expires")
            // Its expiry moved into the past: expired from then on.
            let updated = try await client.patch("\(alice)/brief", #"{"expires_at": "\#(Self.rfc3339(Date(timeIntervalSinceNow: -1)))"}"#)
            #expect(try updated.jsonObject()["status"] as? String == "expired")
            let keys = try #require(try await client.get(alice).jsonObject()["keys"] as? [[String: Any]])
            #expect(keys.first { $0["name"] as? String == "brief" }?["status"] as? String == "expired")
            let refused = try await client.with(token: secret).get(alice)
            #expect(refused.status == .unauthorized)
            #expect(try await client.get(alice).status == .ok, "other credentials are unaffected")
        }
    }

    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }
}
