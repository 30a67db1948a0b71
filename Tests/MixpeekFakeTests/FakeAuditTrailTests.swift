import Foundation
import MixpeekFake
import NIOFoundationCompat
import NIOHTTP1
import Testing

/// `GET /v1/organizations/audit/logs`: the fake's organisation audit log, as `audit reconcile` reads it.
@Suite("Fake upstream audit trail")
struct FakeAuditTrailTests {
    private let bob = "/v1/organizations/users/bob%40example.com/api-keys"

    private struct Page: Decodable {
        var results: [FakeAuditEvent]
        var total: Int
        var skip: Int
        var limit: Int
    }

    /// The page as `audit reconcile` reads it: the spec's snake_case names as they are.
    private func page(_ client: TestHTTPClient, _ target: String) async throws -> Page {
        try JSONDecoder().decode(Page.self, from: Data(buffer: try await client.get(target).body))
    }

    @Test("every applied create, update, rotate and delete is an event with the spec's fields, newest first; refusals are not")
    func events() async throws {
        try await withFake { (server: FakeUpstreamServer, client: TestHTTPClient) async throws in
            #expect(try await client.post(bob, #"{"name": "k1"}"#).status == .ok)
            #expect(try await client.post(bob, #"{"name": "k1"}"#).status == .badRequest)
            #expect(try await client.patch(bob + "/k1", #"{"description": "d"}"#).status == .ok)
            #expect(try await client.post(bob + "/k1/rotate").status == .ok)
            #expect(try await client.delete(bob + "/k1").status == .ok)
            #expect(try await client.delete(bob + "/admin-key").status == .forbidden)
            let events = try await page(client, "/v1/organizations/audit/logs?resource_type=api_key")
            #expect(events.results.map(\.action) == ["api_key_revoked", "api_key_rotated", "api_key_scope_updated", "api_key_created"])
            #expect(events.total == 4 && events.skip == 0 && events.limit == 50)
            #expect(Set(events.results.map(\.resource_id)).count == 1 && events.results[0].resource_id.hasPrefix("key_"))
            #expect(events.results.allSatisfy { $0.resource_type == "api_key" && $0.status == "success" && $0.actor_id.hasPrefix("usr_") })
            #expect(events.results.allSatisfy { $0.changes == ["user_email": "bob@example.com", "name": "k1"] })
            #expect(Set(events.results.map(\.audit_id)).count == 4)
            #expect(server.fake.auditTrail.events.count == 4)
        }
    }

    @Test("filters, a time window, skip and limit; invalid paging is a 422; a 429 once with Retry-After")
    func filtersAndPaging() async throws {
        try await withFake { (server: FakeUpstreamServer, client: TestHTTPClient) async throws in
            for name in ["a", "b", "c"] { #expect(try await client.post(bob, #"{"name": "\#(name)"}"#).status == .ok) }
            #expect(try await client.delete(bob + "/b").status == .ok)
            let all = try await page(client, "/v1/organizations/audit/logs")
            let second = try await page(client, "/v1/organizations/audit/logs?skip=1&limit=2")
            #expect(second.results == Array(all.results[1...2]) && second.total == 4)
            let revoked = try await page(client, "/v1/organizations/audit/logs?action=api_key_revoked")
            #expect(revoked.results.map { $0.changes["name"] } == ["b"])
            let byKey = try await page(client, "/v1/organizations/audit/logs?resource_id=\(revoked.results[0].resource_id)")
            #expect(byKey.total == 2)
            let start = all.results[1].timestamp.replacingOccurrences(of: ":", with: "%3A")
            let later = try await page(client, "/v1/organizations/audit/logs?start=\(start)")
            #expect(later.results.count >= 2 && later.results.count <= 4)
            #expect(try await page(client, "/v1/organizations/audit/logs?end=2000-01-01T00%3A00%3A00Z").total == 0)
            #expect(try await page(client, "/v1/organizations/audit/logs?resource_type=collection").total == 0)
            #expect(try await client.get("/v1/organizations/audit/logs?limit=0").status == .unprocessableEntity)
            #expect(try await client.get("/v1/organizations/audit/logs?limit=1001").status == .unprocessableEntity)
            #expect(try await client.get("/v1/organizations/audit/logs?skip=-1").status == .unprocessableEntity)
            #expect(try await client.get("/v1/organizations/audit/logs?start=noon").status == .unprocessableEntity)

            #expect(try await client.post("/_fake/fault?op=audit&kind=ratelimit&value=7").status == .ok)
            let limited = try await client.get("/v1/organizations/audit/logs")
            #expect(limited.status == .tooManyRequests && limited.headers.first(name: "retry-after") == "7")
            #expect(try await client.get("/v1/organizations/audit/logs").status == .ok)
            server.controls.setFault(.status(.unauthorized), for: .audit)
            #expect(try await client.get("/v1/organizations/audit/logs").status == .unauthorized)
            #expect(try await client.post(bob, #"{"name": "d"}"#).status == .ok, "a fault for the audit log is for it alone")
        }
    }
}
