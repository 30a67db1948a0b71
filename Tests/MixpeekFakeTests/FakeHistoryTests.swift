import Foundation
import MixpeekFake
import NIOHTTP1
import Testing

/// `GET /_fake/history`: what end-to-end scripts check the answers they saw against.
@Suite("Fake upstream history")
struct FakeHistoryTests {
    private let bob = "/v1/organizations/users/bob%40example.com/api-keys"
    private let eve = "/v1/organizations/users/eve%40example.com/api-keys"

    @Test("mutations in the order applied, numbered from 1, with method, user, key and status; list counts per user")
    func history() async throws {
        try await withFake { (server: FakeUpstreamServer, client: TestHTTPClient) async throws in
            let empty = try await client.get("/_fake/history").decode(FakeHistory.self)
            #expect(empty == FakeHistory(mutations: [], lists: [:], last: 0))

            #expect(try await client.get(bob).status == .ok)
            #expect(try await client.post(bob, #"{"name": "k1"}"#).status == .ok)
            #expect(try await client.post(bob, #"{"name": "k1"}"#).status == .badRequest)  // name taken: still applied
            #expect(try await client.patch(bob + "/k1", #"{"description": "d"}"#).status == .ok)
            #expect(try await client.post(bob + "/k1/rotate").status == .ok)
            #expect(try await client.delete(bob + "/k1").status == .ok)
            #expect(try await client.delete(bob + "/admin-key").status == .forbidden)
            #expect(try await client.get(bob).status == .ok)
            #expect(try await client.get(eve + "?include_revoked=true").status == .ok)

            let response = try await client.get("/_fake/history")
            #expect(response.status == .ok)
            #expect(response.headers.first(name: "content-type") == "application/json")
            let history = try response.decode(FakeHistory.self)
            let entry = { (index: Int, op: String, method: String, key: String, status: Int) in
                FakeHistoryEntry(index: index, op: op, method: method, user: "bob@example.com", key: key, status: status)
            }
            #expect(history.mutations == [
                entry(1, "create", "POST", "k1", 200),
                entry(2, "create", "POST", "k1", 400),
                entry(3, "update", "PATCH", "k1", 200),
                entry(4, "rotate", "POST", "k1", 200),
                entry(5, "delete", "DELETE", "k1", 200),
                entry(6, "delete", "DELETE", "admin-key", 403),
            ])
            #expect(history.lists == ["bob@example.com": 2, "eve@example.com": 1])
            #expect(history.last == 6)

            // Only what came after an index; reading the history is not itself counted.
            let later = try await client.get("/_fake/history?after=4").decode(FakeHistory.self)
            #expect(later.mutations.map(\.index) == [5, 6])
            #expect(later.last == 6 && later.lists == history.lists)
            #expect(server.controls.calls(.other) == 0)
        }
    }

    @Test("an injected fault answers without applying: nothing in the history")
    func faultsAreNotApplied() async throws {
        try await withFake { (server: FakeUpstreamServer, client: TestHTTPClient) async throws in
            server.controls.setFault(.status(.serviceUnavailable), for: .create)
            #expect(try await client.post(bob, #"{"name": "k1"}"#).status == .serviceUnavailable)
            #expect(try await client.get("/_fake/history").decode(FakeHistory.self).mutations.isEmpty)
        }
    }

    @Test("a bad request for the history is refused")
    func refusals() async throws {
        try await withFake { (_, client: TestHTTPClient) async throws in
            #expect(try await client.get("/_fake/history?after=x").status == .badRequest)
            #expect(try await client.post("/_fake/history").status == .methodNotAllowed)
        }
    }
}
