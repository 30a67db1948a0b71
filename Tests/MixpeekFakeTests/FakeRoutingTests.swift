import MixpeekAPI
import MixpeekFake
import NIOHTTP1
import Testing

/// The fake routes as the real upstream behind an RFC 3986 front end does, so that the
/// proxy's tests face the risk of a spelling the proxy does not recognise.
@Suite("Fake upstream routes like the real thing")
struct FakeRoutingTests {
    @Test("non-canonical spellings of a path reach the same operation: encoded unreserved characters, dot and empty segments, encoded slashes")
    func normalizesThenDecodes() async throws {
        try await withFake { (server: FakeUpstreamServer, client: TestHTTPClient) async throws in
            #expect(try await client.post("/v1/organizations/users/a%40b.com/api-key%73", #"{"name": "k"}"#).status == .ok)
            #expect(try await client.get("/v1/organizations/users/a@b.com/./x/../api-keys").status == .ok)
            #expect(try await client.post("/v1//organizations/users/a%40b.com/api-keys/k/%72otate").status == .ok)
            #expect(try await client.post("/v1/organizations/users/a%40b.com%2Fapi-keys%2Fk/rotate").status == .ok)
            #expect(try await client.delete("/v1/organizations/users/a%40b.com/api-key%73/k").status == .ok)
            #expect(server.controls.appliedMutations == [
                FakeMutation(operation: .create, user: "a@b.com", key: "k"),
                FakeMutation(operation: .rotate, user: "a@b.com", key: "k"),
                FakeMutation(operation: .rotate, user: "a@b.com", key: "k"),
                FakeMutation(operation: .delete, user: "a@b.com", key: "k"),
            ])
            #expect(server.controls.calls(.rotate) == 2 && server.controls.calls(.list) == 1)
        }
    }

    @Test("a trailing slash is redirected (307) to the path without it at the Host the request named, as Starlette does")
    func trailingSlashRedirects() async throws {
        try await withFake { (server: FakeUpstreamServer, client: TestHTTPClient) async throws in
            let response = try await client.get("/v1/organizations/users/a%40b.com/api-keys/?include_revoked=true")
            #expect(response.status == .temporaryRedirect)
            #expect(response.headers.first(name: "location") == "\(server.url)/v1/organizations/users/a%40b.com/api-keys?include_revoked=true")
            #expect(server.controls.appliedMutations.isEmpty)
        }
    }

    @Test("users match case-insensitively when switched on, exactly otherwise")
    func caseInsensitiveUsers() async throws {
        try await withFake { (server: FakeUpstreamServer, client: TestHTTPClient) async throws in
            #expect(try await client.post("/v1/organizations/users/Carol%40EXAMPLE.com/api-keys", #"{"name": "k"}"#).status == .ok)
            let exact = try await client.get("/v1/organizations/users/carol%40example.com/api-keys").text
            #expect(!exact.contains(#""name":"k""#))
            server.controls.matchUsersCaseInsensitively(true)
            #expect(try await client.post("/v1/organizations/users/DAVE%40example.com/api-keys", #"{"name": "k"}"#).status == .ok)
            let folded = try await client.get("/v1/organizations/users/dave%40Example.COM/api-keys").text
            #expect(folded.contains(#""name":"k""#))
        }
    }
}
