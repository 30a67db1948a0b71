import Crypto
import Foundation
import MixpeekAPI
import MixpeekFake
import NIOCore
import NIOHTTP1
import Testing

private let alice = "/v1/organizations/users/alice%40example.com/api-keys"

/// A key as the fake's JSON carries it (`APIKeyModel`, plus `key` on create and rotate).
private struct KeyBody: Decodable {
    var keyId: String
    var keyHash: String
    var keyPrefix: String
    var name: String
    var userId: String
    var internalId: String
    var organizationId: String
    var description: String
    var status: String
    var permissions: [String]
    var key: String?
}

private struct ListBody: Decodable {
    var keys: [KeyBody]
    var total: Int
}

private struct DeleteBody: Decodable {
    var message: String
    var success: Bool
}

/// Runs `body` against a fresh fake on a real socket, reached with token `sk_alpha`.
func withFake(_ body: (FakeUpstreamServer, TestHTTPClient) async throws -> Void) async throws {
    let server = try await FakeUpstreamServer.start()
    do {
        try await body(server, try TestHTTPClient(url: server.url, token: "sk_alpha"))
    } catch {
        await server.shutdown()
        throw error
    }
    await server.shutdown()
}

private func sha256Hex(_ text: String) -> String {
    SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
}

/// Polls `condition` every 10 ms for up to `timeout`.
private func eventually(within timeout: Duration = .seconds(30), _ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// Checks the contract's error shape: `{"success": false, "status": N, "error": {"message", "type", ...}}`.
private func expectErrorShape(_ response: TestResponse, _ status: HTTPResponseStatus, sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(response.status == status, "body: \(response.text)", sourceLocation: sourceLocation)
    let object = try response.jsonObject()
    #expect(object["success"] as? Bool == false, sourceLocation: sourceLocation)
    #expect(object["status"] as? Int == Int(status.code), sourceLocation: sourceLocation)
    let error = try #require(object["error"] as? [String: Any], sourceLocation: sourceLocation)
    #expect((error["message"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    #expect((error["type"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    let decoded = try response.decode(ErrorBody.self)
    #expect(decoded.status == Int(status.code) && !decoded.success, sourceLocation: sourceLocation)
}

private func names(_ response: TestResponse) throws -> [String] {
    try response.decode(ListBody.self).keys.map(\.name)
}

@Suite("Fake upstream over a real socket")
struct FakeUpstreamTests {
    // MARK: Authentication

    @Test(
        "a request without a well-formed Bearer sk_ token is refused with 401",
        arguments: [nil, "", "Bearer", "Bearer ", "Bearer sk_", "Bearer abc", "Basic c2tfYWxwaGE=", "sk_alpha", "Bearer sk_a sk_b", "Token sk_alpha"])
    func unauthorized(authorization: String?) async throws {
        try await withFake { server, client in
            let headers: HTTPHeaders = authorization.map { ["authorization": $0] } ?? [:]
            try expectErrorShape(try await client.send(.GET, alice, headers: headers), .unauthorized)
            try expectErrorShape(try await client.send(.POST, alice, headers: headers, body: #"{"name": "ci"}"#), .unauthorized)
            // The refused create changed nothing.
            #expect(try names(try await client.get(alice)) == ["admin-key"])
        }
    }

    @Test("a Bearer sk_ token is accepted, the scheme in any case")
    func authorized() async throws {
        try await withFake { (_, client) async throws in
            #expect(try await client.get(alice).status == .ok)
            #expect(try await client.send(.GET, alice, headers: ["authorization": "bearer sk_alpha"]).status == .ok)
        }
    }

    // MARK: The five calls

    @Test("every user starts with a protected admin-key that update, rotate and delete answer 403 for")
    func protectedAdminKey() async throws {
        try await withFake { _, client in
            let list = try await client.get(alice).decode(ListBody.self)
            #expect(list.keys.map(\.name) == ["admin-key"])
            #expect(list.total == 1)
            #expect(list.keys.first?.status == "active")
            #expect(list.keys.first?.key == nil)
            try expectErrorShape(try await client.patch("\(alice)/admin-key", #"{"description": "mine"}"#), .forbidden)
            try expectErrorShape(try await client.post("\(alice)/admin-key/rotate"), .forbidden)
            try expectErrorShape(try await client.delete("\(alice)/admin-key"), .forbidden)
            let after = try await client.get("\(alice)?include_revoked=true").decode(ListBody.self)
            #expect(after.keys.map(\.name) == ["admin-key"])
            #expect(after.keys.first?.status == "active")
            #expect(after.keys.first?.keyHash == list.keys.first?.keyHash)
            #expect(after.keys.first?.description == list.keys.first?.description)
        }
    }

    @Test("create returns a one-time sk_ secret with its SHA-256 hash, its 10-character prefix and the key's identifiers")
    func create() async throws {
        try await withFake { _, client in
            let response = try await client.post(alice, #"{"name": "ci", "description": "deploys"}"#)
            #expect(response.status == .ok, "\(response.text)")
            let created = try response.decode(KeyBody.self)
            let secret = try #require(created.key)
            #expect(secret.hasPrefix("sk_") && secret.count > 10)
            #expect(created.keyHash == sha256Hex(secret))
            #expect(created.keyPrefix == String(secret.prefix(10)))
            #expect(created.keyId.hasPrefix("key_"))
            #expect(created.name == "ci")
            #expect(created.description == "deploys")
            #expect(created.status == "active")
            #expect(!created.userId.isEmpty)
            #expect(!created.internalId.isEmpty)
            #expect(!created.organizationId.isEmpty)

            let listed = try await client.get(alice).decode(ListBody.self)
            #expect(listed.keys.map(\.name) == ["admin-key", "ci"])
            let stored = try #require(listed.keys.last)
            #expect(stored.key == nil, "the secret is shown once, never listed")
            #expect(stored.keyId == created.keyId)
            #expect(stored.keyHash == created.keyHash)

            let second = try await client.post(alice, #"{"name": "other"}"#).decode(KeyBody.self)
            #expect(second.key != secret)
            #expect(second.keyId != created.keyId)
        }
    }

    @Test("create refuses a second active key of the same name with 400")
    func createDuplicateName() async throws {
        try await withFake { _, client in
            #expect(try await client.post(alice, #"{"name": "ci"}"#).status == .ok)
            try expectErrorShape(try await client.post(alice, #"{"name": "ci"}"#), .badRequest)
            try expectErrorShape(try await client.post(alice, #"{"name": "admin-key"}"#), .badRequest)
        }
    }

    @Test("list hides revoked keys unless include_revoked is true")
    func listHidesRevoked() async throws {
        try await withFake { _, client in
            #expect(try await client.post(alice, #"{"name": "old"}"#).status == .ok)
            #expect(try await client.post(alice, #"{"name": "kept"}"#).status == .ok)
            #expect(try await client.delete("\(alice)/old").status == .ok)

            #expect(try names(try await client.get(alice)) == ["admin-key", "kept"])
            #expect(try names(try await client.get("\(alice)?include_revoked=false")) == ["admin-key", "kept"])
            let all = try await client.get("\(alice)?include_revoked=true").decode(ListBody.self)
            #expect(all.keys.map(\.name) == ["admin-key", "old", "kept"])
            #expect(all.total == 3)
            #expect(all.keys.first { $0.name == "old" }?.status == "revoked")
            try expectErrorShape(try await client.get("\(alice)?include_revoked=maybe"), .unprocessableEntity)
        }
    }

    @Test("lists are per user")
    func listsArePerUser() async throws {
        try await withFake { (_, client) async throws in
            #expect(try await client.post(alice, #"{"name": "ci"}"#).status == .ok)
            #expect(try names(try await client.get("/v1/organizations/users/bob%40example.com/api-keys")) == ["admin-key"])
        }
    }

    @Test("update changes the description and returns the updated key")
    func update() async throws {
        try await withFake { _, client in
            let created = try await client.post(alice, #"{"name": "ci", "description": "before"}"#).decode(KeyBody.self)
            let response = try await client.patch("\(alice)/ci", #"{"description": "after"}"#)
            #expect(response.status == .ok, "\(response.text)")
            let updated = try response.decode(KeyBody.self)
            #expect(updated.description == "after")
            #expect(updated.name == "ci")
            #expect(updated.keyHash == created.keyHash)
            #expect(updated.key == nil)
            let listed = try await client.get(alice).decode(ListBody.self)
            #expect(listed.keys.first { $0.name == "ci" }?.description == "after")
        }
    }

    @Test("rotate returns a new secret and a new key_hash for the same key")
    func rotate() async throws {
        try await withFake { _, client in
            let created = try await client.post(alice, #"{"name": "ci"}"#).decode(KeyBody.self)
            let response = try await client.post("\(alice)/ci/rotate")
            #expect(response.status == .ok, "\(response.text)")
            let rotated = try response.decode(KeyBody.self)
            let secret = try #require(rotated.key)
            #expect(secret.hasPrefix("sk_"))
            #expect(secret != created.key)
            #expect(rotated.keyHash == sha256Hex(secret))
            #expect(rotated.keyHash != created.keyHash)
            #expect(rotated.keyPrefix == String(secret.prefix(10)))
            #expect(rotated.name == "ci")
            let listed = try await client.get(alice).decode(ListBody.self)
            #expect(listed.keys.map(\.name) == ["admin-key", "ci"])
            #expect(listed.keys.last?.keyHash == rotated.keyHash)
        }
    }

    @Test("delete revokes the key; a second delete, a rotate or an update of it is 404")
    func deleteRevokes() async throws {
        try await withFake { _, client in
            #expect(try await client.post(alice, #"{"name": "ci"}"#).status == .ok)
            let response = try await client.delete("\(alice)/ci")
            #expect(response.status == .ok, "\(response.text)")
            let body = try response.decode(DeleteBody.self)
            #expect(body.success)
            #expect(!body.message.isEmpty)
            try expectErrorShape(try await client.delete("\(alice)/ci"), .notFound)
            try expectErrorShape(try await client.post("\(alice)/ci/rotate"), .notFound)
            try expectErrorShape(try await client.patch("\(alice)/ci", #"{"description": "x"}"#), .notFound)
            // A revoked name is free again.
            #expect(try await client.post(alice, #"{"name": "ci"}"#).status == .ok)
        }
    }

    @Test("an unknown key name is 404 for update, rotate and delete")
    func unknownKey() async throws {
        try await withFake { _, client in
            try expectErrorShape(try await client.patch("\(alice)/nope", #"{"description": "x"}"#), .notFound)
            try expectErrorShape(try await client.post("\(alice)/nope/rotate"), .notFound)
            try expectErrorShape(try await client.delete("\(alice)/nope"), .notFound)
        }
    }

    @Test(
        "a create body that is not a valid APIKeyCreateRequest is refused with 422",
        arguments: [
            nil, "", "not json", "[]", "{}", #"{"name": ""}"#, #"{"name": 5}"#, #"{"name": null}"#,
            "{\"name\": \"\(String(repeating: "n", count: 101))\"}",
            #"{"name": "ci", "permissions": "read"}"#, #"{"name": "ci", "permissions": ["root"]}"#,
            #"{"name": "ci", "rate_limit_override": 0}"#, #"{"name": "ci", "rate_limit_override": true}"#, #"{"name": "ci", "description": 7}"#,
        ])
    func invalidCreateBody(body: String?) async throws {
        try await withFake { server, client in
            try expectErrorShape(try await client.post(alice, body), .unprocessableEntity)
            #expect(server.controls.calls(.create) == 1)
            #expect(try names(try await client.get(alice)) == ["admin-key"])
        }
    }

    @Test("an update body that is not a valid APIKeyUpdateRequest is refused with 422 and changes nothing")
    func invalidUpdateBody() async throws {
        try await withFake { _, client in
            #expect(try await client.post(alice, #"{"name": "ci", "description": "kept"}"#).status == .ok)
            for body in ["not json", "[]", #"{"description": 5}"#, #"{"status": "gone"}"#, #"{"permissions": ["root"]}"#] {
                try expectErrorShape(try await client.patch("\(alice)/ci", body), .unprocessableEntity)
            }
            let listed = try await client.get(alice).decode(ListBody.self)
            #expect(listed.keys.last?.description == "kept")
        }
    }

    @Test("two bearer tokens are two organisations that never see each other's keys")
    func tokensAreOrganisations() async throws {
        try await withFake { _, alpha in
            let beta = alpha.with(token: "sk_beta")
            let alphaKey = try await alpha.post(alice, #"{"name": "only-alpha"}"#).decode(KeyBody.self)
            #expect(try names(try await beta.get(alice)) == ["admin-key"])
            try expectErrorShape(try await beta.delete("\(alice)/only-alpha"), .notFound)
            let betaKey = try await beta.post(alice, #"{"name": "only-alpha"}"#).decode(KeyBody.self)
            #expect(betaKey.organizationId != alphaKey.organizationId)
            #expect(try names(try await alpha.get(alice)) == ["admin-key", "only-alpha"])
            let alphaAdmin = try await alpha.get(alice).decode(ListBody.self).keys.first
            let betaAdmin = try await beta.get(alice).decode(ListBody.self).keys.first
            #expect(alphaAdmin?.keyId != betaAdmin?.keyId)
        }
    }

    @Test("paths outside the API-keys API and wrong methods answer in the error shape")
    func otherPaths() async throws {
        try await withFake { _, client in
            try expectErrorShape(try await client.get("/v1/collections"), .notFound)
            try expectErrorShape(try await client.send(.PUT, alice), .methodNotAllowed)
            try expectErrorShape(try await client.get("\(alice)/ci/rotate"), .methodNotAllowed)
        }
    }

    // MARK: Controls

    @Test("the fake counts the calls that reach it per operation and keeps the last request")
    func callCounts() async throws {
        try await withFake { server, client in
            _ = try await client.get(alice)
            _ = try await client.get("\(alice)?include_revoked=true")
            _ = try await client.post(alice, #"{"name": "ci"}"#)
            _ = try await client.patch("\(alice)/ci", #"{"description": "x"}"#)
            _ = try await client.post("\(alice)/ci/rotate")
            _ = try await client.delete("\(alice)/ci")
            _ = try await client.get("/v1/collections")
            let controls = server.controls
            #expect(controls.calls(.list) == 2)
            #expect(controls.calls(.create) == 1)
            #expect(controls.calls(.update) == 1)
            #expect(controls.calls(.rotate) == 1)
            #expect(controls.calls(.delete) == 1)
            #expect(controls.calls(.other) == 1)
            #expect(controls.totalCalls == 7)
            let last = try #require(controls.lastRequest(.list))
            #expect(last.target == "\(alice)?include_revoked=true")
            #expect(last.headers.first(name: "authorization") == "Bearer sk_alpha")
            let create = try #require(controls.lastRequest(.create))
            #expect(create.body.map { String(buffer: $0) } == #"{"name": "ci"}"#)
        }
    }

    @Test("a status fault answers that status for its operation only, until it is switched off")
    func statusFault() async throws {
        try await withFake { server, client in
            server.controls.setFault(.status(.serviceUnavailable), for: .list)
            try expectErrorShape(try await client.get(alice), .serviceUnavailable)
            #expect(try await client.post(alice, #"{"name": "ci"}"#).status == .ok)
            server.controls.setFault(nil, for: .list)
            #expect(try names(try await client.get(alice)) == ["admin-key", "ci"])
            #expect(server.controls.calls(.list) == 2)
        }
    }

    @Test("a fault without an operation applies to every operation")
    func faultForAll() async throws {
        try await withFake { server, client in
            server.controls.setFault(.status(.tooManyRequests))
            try expectErrorShape(try await client.get(alice), .tooManyRequests)
            try expectErrorShape(try await client.post(alice, #"{"name": "ci"}"#), .tooManyRequests)
            server.controls.setFault(nil)
            #expect(try names(try await client.get(alice)) == ["admin-key"])
        }
    }

    @Test("a delay fault answers normally, only after the delay")
    func delayFault() async throws {
        try await withFake { server, client in
            let delay = Duration.milliseconds(200)
            server.controls.setFault(.delay(.milliseconds(200)), for: .list)
            let start = ContinuousClock.now
            let response = try await client.get(alice)
            #expect(ContinuousClock.now - start >= delay)
            #expect(try names(response) == ["admin-key"])
        }
    }

    @Test("a dropConnection fault closes the connection without a response, and does nothing")
    func dropConnection() async throws {
        try await withFake { (server, client) async throws in
            server.controls.setFault(.dropConnection, for: .create)
            await #expect(throws: TestHTTPClientError.closedWithoutResponse) {
                try await client.post(alice, #"{"name": "ci"}"#)
            }
            #expect(server.controls.calls(.create) == 1)
            #expect(try names(try await client.get(alice)) == ["admin-key"])
        }
    }

    @Test("an invalidJSON fault answers 200 with a body that is not JSON")
    func invalidJSONFault() async throws {
        try await withFake { server, client in
            server.controls.setFault(.invalidJSON, for: .list)
            let response = try await client.get(alice)
            #expect(response.status == .ok)
            #expect((try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) == nil)
        }
    }

    @Test("a held list answers, on release, with the state from when it arrived")
    func holdAndRelease() async throws {
        try await withFake { (server, client) async throws in
            let controls = server.controls
            controls.hold(.list)
            async let held = client.get(alice)
            #expect(try await eventually { controls.heldCount(.list) == 1 })
            #expect(try await client.post(alice, #"{"name": "late"}"#).status == .ok)
            controls.release(.list)
            #expect(try names(try await held) == ["admin-key"])
            #expect(controls.heldCount(.list) == 0)
            #expect(try names(try await client.get(alice)) == ["admin-key", "late"])
        }
    }
}
