import Crypto
import Foundation
import MixpeekAPI
import MixpeekHTTP
import NIOConcurrencyHelpers
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// The Mixpeek API-keys API, in memory, with Mixpeek's semantics: each bearer token is its
/// own organisation; every user in it starts with a protected key named `admin-key`; create
/// and rotate return a fresh `sk_...` secret once; delete revokes; list hides revoked keys
/// unless `include_revoked` is true.
///
/// Tests read per-operation call counts and switch faults on through `FakeControls`.
public final class FakeMixpeek: Sendable {
    public let controls = FakeControls()
    private let organizations = NIOLockedValueBox([String: Organization]())

    public init() {}

    struct Organization {
        let internalID: String
        /// Keys by user, in creation order.
        var users: [String: [APIKeyRecord]] = [:]
    }

    /// Answers one request, with the state as it is now.
    func answer(_ request: HTTPRequest) -> HTTPResponse {
        let route = Route(method: request.method, target: request.target)
        if case .passThrough = route {
            return Self.error(.notFound, "Not Found", type: "not_found")
        }
        if case .rejected(let why) = route {
            if case .methodNotAllowed = why { return Self.error(.methodNotAllowed, "Method Not Allowed", type: "method_not_allowed") }
            return Self.error(.notFound, why.message, type: "not_found")
        }
        guard let token = Self.bearerToken(request.headers) else {
            return Self.error(.unauthorized, "Missing or invalid API key. Use 'Authorization: Bearer sk_...'.", type: "unauthorized")
        }
        let body = request.body.flatMap { try? JSONSerialization.jsonObject(with: Data(buffer: $0)) }
        return organizations.withLockedValue { orgs in
            var org = orgs[token] ?? Organization(internalID: "org_" + Self.shortHash(token))
            defer { orgs[token] = org }
            let now = Self.timestamp()
            switch route {
            case .list(let user, let includeRevoked):
                guard let includeRevoked else {
                    return Self.error(.unprocessableEntity, "include_revoked must be a boolean", type: "validation_error")
                }
                let keys = org.keys(of: user).filter { includeRevoked || $0.status != "revoked" }
                return Self.json(ListBody(keys: keys, total: keys.count))
            case .create(let user):
                guard let fields = body as? [String: Any], let name = fields["name"] as? String, (1...100).contains(name.count),
                      let key = Self.validated(fields, into: nil) else {
                    return Self.error(.unprocessableEntity, "body must be a JSON object with a 'name' of 1 to 100 characters", type: "validation_error")
                }
                if org.keys(of: user).contains(where: { $0.name == name && $0.status != "revoked" }) {
                    return Self.error(.badRequest, "an active key named '\(name)' already exists", type: "bad_request", code: "key_name_taken")
                }
                let secret = Self.newSecret()
                var record = Self.newRecord(name: name, user: user, org: org, secret: secret, now: now)
                record.description = key.description
                record.permissions = key.permissions
                record.rate_limit_override = key.rate_limit_override
                record.expires_at = key.expires_at
                record.allowed_origins = key.allowed_origins
                org.users[user, default: []].append(record)
                record.key = secret
                return Self.json(record)
            case .update(let user, let name), .rotate(let user, let name), .delete(let user, let name):
                if name == "admin-key" {
                    return Self.error(.forbidden, "The 'admin-key' is protected and cannot be modified.", type: "forbidden")
                }
                var keys = org.keys(of: user)
                guard let index = keys.lastIndex(where: { $0.name == name && $0.status != "revoked" }) else {
                    return Self.error(.notFound, "API key '\(name)' not found for \(user)", type: "not_found")
                }
                defer { org.users[user] = keys }
                switch route {
                case .update:
                    guard let fields = body as? [String: Any], let updated = Self.validated(fields, into: keys[index]) else {
                        return Self.error(.unprocessableEntity, "body must be a JSON object of APIKeyUpdateRequest fields", type: "validation_error")
                    }
                    if updated.name != name, keys.contains(where: { $0.name == updated.name && $0.status != "revoked" }) {
                        return Self.error(.badRequest, "an active key named '\(updated.name)' already exists", type: "bad_request", code: "key_name_taken")
                    }
                    keys[index] = updated
                    if updated.status == "revoked" && keys[index].revoked_at == nil {
                        keys[index].revoked_at = now
                        keys[index].revoked_by = keys[index].user_id
                    }
                    return Self.json(keys[index])
                case .rotate:
                    let secret = Self.newSecret()
                    keys[index].key_hash = Self.sha256Hex(secret)
                    keys[index].key_prefix = String(secret.prefix(10))
                    var response = keys[index]
                    response.key = secret
                    return Self.json(response)
                default:
                    keys[index].status = "revoked"
                    keys[index].revoked_at = now
                    keys[index].revoked_by = keys[index].user_id
                    return Self.json(SuccessBody(message: "API key '\(name)' revoked"))
                }
            case .passThrough, .rejected:
                return Self.error(.notFound, "Not Found", type: "not_found")
            }
        }
    }

    /// The fields of a create or update body applied to `base` (or to defaults); nil when a
    /// field has the wrong type or value, as the upstream's validation would answer 422.
    private static func validated(_ fields: [String: Any], into base: APIKeyRecord?) -> APIKeyRecord? {
        var record = base ?? APIKeyRecord(
            key_id: "", key_hash: "", key_prefix: "", internal_id: "", organization_id: "", user_id: "",
            name: "", created_at: "", created_by: "")
        for (field, value) in fields where !(value is NSNull) {
            switch field {
            case "name":
                guard let name = value as? String, (1...100).contains(name.count) else { return nil }
                record.name = name
            case "description":
                guard let text = value as? String, text.count <= 500 else { return nil }
                record.description = text
            case "permissions":
                guard let list = value as? [String], list.allSatisfy(["read", "write", "delete", "admin"].contains) else { return nil }
                record.permissions = list
            case "rate_limit_override":
                guard let limit = value as? Int, limit >= 1, !(value is Bool) else { return nil }
                record.rate_limit_override = limit
            case "status":
                guard let status = value as? String, ["active", "revoked", "expired"].contains(status) else { return nil }
                record.status = status
            case "expires_at":
                guard let date = value as? String else { return nil }
                record.expires_at = date
            case "allowed_origins":
                guard let origins = value as? [String] else { return nil }
                record.allowed_origins = origins
            default:
                continue
            }
        }
        return record
    }

    private static func newRecord(name: String, user: String, org: Organization, secret: String, now: String) -> APIKeyRecord {
        APIKeyRecord(
            key_id: "key_" + randomHex(8), key_hash: sha256Hex(secret), key_prefix: String(secret.prefix(10)),
            internal_id: org.internalID, organization_id: org.internalID, user_id: "usr_" + shortHash(user),
            name: name, created_at: now, created_by: "usr_" + shortHash(user))
    }

    static func bearerToken(_ headers: HTTPHeaders) -> String? {
        guard let value = headers.first(name: "authorization") else { return nil }
        let parts = value.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer", parts[1].hasPrefix("sk_"), parts[1].count > 3 else { return nil }
        return String(parts[1])
    }

    static func newSecret() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        return "sk_" + String((0..<40).map { _ in alphabet.randomElement()! })
    }

    static func sha256Hex(_ text: String) -> String {
        SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    static func shortHash(_ text: String) -> String { String(sha256Hex(text).prefix(12)) }

    static func randomHex(_ bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }

    static func timestamp() -> String {
        Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) -> HTTPResponse {
        let body = (try? JSONEncoder().encodeAsByteBuffer(value, allocator: ByteBufferAllocator())) ?? ByteBuffer()
        return HTTPResponse(status: status, headers: ["content-type": "application/json"], body: body)
    }

    static func error(_ status: HTTPResponseStatus, _ message: String, type: String, code: String? = nil) -> HTTPResponse {
        HTTPResponse(
            status: status, headers: ["content-type": "application/json"],
            body: ErrorBody(status: status, message: message, type: type, code: code).buffer)
    }
}

extension FakeMixpeek.Organization {
    /// A user's keys, starting with the protected `admin-key` every user has.
    mutating func keys(of user: String) -> [APIKeyRecord] {
        if let keys = users[user] { return keys }
        let secret = FakeMixpeek.newSecret()
        let admin = APIKeyRecord(
            key_id: "key_" + FakeMixpeek.randomHex(8), key_hash: FakeMixpeek.sha256Hex(secret),
            key_prefix: String(secret.prefix(10)), internal_id: internalID, organization_id: internalID,
            user_id: "usr_" + FakeMixpeek.shortHash(user), name: "admin-key", description: "Protected organisation key",
            permissions: ["read", "write", "delete", "admin"], created_at: FakeMixpeek.timestamp(),
            created_by: "usr_" + FakeMixpeek.shortHash(user))
        users[user] = [admin]
        return [admin]
    }
}
