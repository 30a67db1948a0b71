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
        var users: [String: UserKeys] = [:]
    }

    /// One user's keys in creation order, and where each active (not revoked) key is by name,
    /// so a create or an update finds a name in constant time however many keys there are.
    struct UserKeys {
        private(set) var records: [APIKeyRecord] = []
        private var active: [String: Int] = [:]

        init(_ first: APIKeyRecord) { append(first) }

        func activeIndex(named name: String) -> Int? { active[name] }

        mutating func append(_ record: APIKeyRecord) {
            records.append(record)
            if record.status != "revoked" { active[record.name] = records.count - 1 }
        }

        subscript(index: Int) -> APIKeyRecord {
            get { records[index] }
            set {
                let old = records[index]
                if old.status != "revoked", active[old.name] == index { active[old.name] = nil }
                records[index] = newValue
                if newValue.status != "revoked" { active[newValue.name] = index }
            }
        }
    }

    /// Answers one request, with the state as it is now.
    func answer(_ request: HTTPRequest) -> HTTPResponse {
        let routed: Route
        switch UpstreamRouting(request) {
        case .route(let route): routed = route
        case .notFound: return Self.error(.notFound, "Not Found", type: "not_found")
        case .redirect(let location):
            return HTTPResponse(status: .temporaryRedirect, headers: ["location": location], body: ByteBuffer())
        }
        if case .rejected(let why) = routed {
            if case .methodNotAllowed = why { return Self.error(.methodNotAllowed, "Method Not Allowed", type: "method_not_allowed") }
            return Self.error(.notFound, why.message, type: "not_found")
        }
        guard let token = Self.bearerToken(request.headers) else {
            return Self.error(.unauthorized, "Missing or invalid API key. Use 'Authorization: Bearer sk_...'.", type: "unauthorized")
        }
        let body = request.body.flatMap { try? JSONSerialization.jsonObject(with: Data(buffer: $0)) }
        let createdName = (body as? [String: Any])?["name"] as? String
        let route = controls.matchesUsersCaseInsensitively ? routed.withUser(UserIdentity.folded) : routed
        return organizations.withLockedValue { orgs in
            if orgs[token] == nil { orgs[token] = Organization(internalID: "org_" + Self.shortHash(token)) }
            // In place: a copy of the organisation would copy every key list on each mutation.
            let response = Self.apply(route, body: body, to: &orgs[token]!)
            // Inside the lock: the history's order is the order the calls were applied in.
            controls.noteAnswered(routed, method: request.method, createdName: createdName, status: response.status)
            return response
        }
    }

    private static func apply(_ route: Route, body: Any?, to org: inout Organization) -> HTTPResponse {
        let now = timestamp()
        switch route {
        case .list(let user, let includeRevoked):
            guard let includeRevoked else {
                return error(.unprocessableEntity, "include_revoked must be a boolean", type: "validation_error")
            }
            let keys = org.withKeys(of: user) { $0.records.filter { includeRevoked || $0.status != "revoked" } }
            return json(ListBody(keys: keys, total: keys.count))
        case .create(let user):
            guard let fields = body as? [String: Any], let name = fields["name"] as? String, (1...100).contains(name.count),
                  let key = validated(fields, into: nil) else {
                return error(.unprocessableEntity, "body must be a JSON object with a 'name' of 1 to 100 characters", type: "validation_error")
            }
            let secret = newSecret()
            var record = newRecord(name: name, user: user, org: org, secret: secret, now: now)
            record.description = key.description
            record.permissions = key.permissions
            record.rate_limit_override = key.rate_limit_override
            record.expires_at = key.expires_at
            record.allowed_origins = key.allowed_origins
            return org.withKeys(of: user) { keys in
                if keys.activeIndex(named: name) != nil {
                    return error(.badRequest, "an active key named '\(name)' already exists", type: "bad_request", code: "key_name_taken")
                }
                keys.append(record)
                record.key = secret
                return json(record)
            }
        case .update(let user, let name), .rotate(let user, let name), .delete(let user, let name):
            if name == "admin-key" {
                return error(.forbidden, "The 'admin-key' is protected and cannot be modified.", type: "forbidden")
            }
            return org.withKeys(of: user) { keys in
                guard let index = keys.activeIndex(named: name) else {
                    return error(.notFound, "API key '\(name)' not found for \(user)", type: "not_found")
                }
                switch route {
                case .update:
                    guard let fields = body as? [String: Any], var updated = validated(fields, into: keys[index]) else {
                        return error(.unprocessableEntity, "body must be a JSON object of APIKeyUpdateRequest fields", type: "validation_error")
                    }
                    if updated.name != name, keys.activeIndex(named: updated.name) != nil {
                        return error(.badRequest, "an active key named '\(updated.name)' already exists", type: "bad_request", code: "key_name_taken")
                    }
                    if updated.status == "revoked" && updated.revoked_at == nil {
                        updated.revoked_at = now
                        updated.revoked_by = updated.user_id
                    }
                    keys[index] = updated
                    return json(updated)
                case .rotate:
                    let secret = newSecret()
                    var rotated = keys[index]
                    rotated.key_hash = sha256Hex(secret)
                    rotated.key_prefix = String(secret.prefix(10))
                    keys[index] = rotated
                    rotated.key = secret
                    return json(rotated)
                default:
                    var revoked = keys[index]
                    revoked.status = "revoked"
                    revoked.revoked_at = now
                    revoked.revoked_by = revoked.user_id
                    keys[index] = revoked
                    return json(SuccessBody(message: "API key '\(name)' revoked"))
                }
            }
        case .passThrough, .rejected:
            return error(.notFound, "Not Found", type: "not_found")
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

    /// `sk_` and 40 random letters and digits.
    static func newSecret() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8)
        var generator = SystemRandomNumberGenerator()
        var letters: [UInt8] = Array("sk_".utf8)
        while letters.count < 43 {
            // Each 64-bit draw gives ten letters (6 bits each, the 2 of 64 that would not map are skipped).
            var bits = generator.next() as UInt64
            for _ in 0..<10 where letters.count < 43 {
                let index = Int(bits & 0x3F)
                bits >>= 6
                if index < alphabet.count { letters.append(alphabet[index]) }
            }
        }
        return String(decoding: letters, as: UTF8.self)
    }

    static func sha256Hex(_ text: String) -> String {
        Array(SHA256.hash(data: Data(text.utf8))).hex
    }

    static func shortHash(_ text: String) -> String { String(sha256Hex(text).prefix(12)) }

    static func randomHex(_ bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<bytes).map { _ in generator.next() as UInt8 }.hex
    }

    static func timestamp() -> String {
        Timestamp.string(Date())
    }

    /// A body no benchmark writes per request (the test controls'), with `JSONEncoder`.
    static func encoded<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) -> HTTPResponse {
        let body = (try? JSONEncoder().encodeAsByteBuffer(value, allocator: ByteBufferAllocator())) ?? ByteBuffer()
        return HTTPResponse(status: status, headers: ["content-type": "application/json"], body: body)
    }

    static func json(_ value: some JSONBody, status: HTTPResponseStatus = .ok) -> HTTPResponse {
        var json = JSONWriter()
        value.write(to: &json)
        return HTTPResponse(status: status, headers: ["content-type": "application/json"], body: ByteBuffer(bytes: json.bytes))
    }

    static func error(_ status: HTTPResponseStatus, _ message: String, type: String, code: String? = nil) -> HTTPResponse {
        HTTPResponse(
            status: status, headers: ["content-type": "application/json"],
            body: ErrorBody(status: status, message: message, type: type, code: code).buffer)
    }
}

extension FakeMixpeek.Organization {
    /// Runs `body` on a user's keys in place, starting with the protected `admin-key` every
    /// user has.
    mutating func withKeys<T>(of user: String, _ body: (inout FakeMixpeek.UserKeys) -> T) -> T {
        if users[user] == nil {
            let secret = FakeMixpeek.newSecret()
            let admin = APIKeyRecord(
                key_id: "key_" + FakeMixpeek.randomHex(8), key_hash: FakeMixpeek.sha256Hex(secret),
                key_prefix: String(secret.prefix(10)), internal_id: internalID, organization_id: internalID,
                user_id: "usr_" + FakeMixpeek.shortHash(user), name: "admin-key", description: "Protected organisation key",
                permissions: ["read", "write", "delete", "admin"], created_at: FakeMixpeek.timestamp(),
                created_by: "usr_" + FakeMixpeek.shortHash(user))
            users[user] = FakeMixpeek.UserKeys(admin)
        }
        return body(&users[user]!)
    }
}

extension Route {
    /// The same call about `transform(user)`.
    func withUser(_ transform: (String) -> String) -> Route {
        switch self {
        case .create(let user): .create(user: transform(user))
        case .list(let user, let includeRevoked): .list(user: transform(user), includeRevoked: includeRevoked)
        case .update(let user, let key): .update(user: transform(user), key: key)
        case .rotate(let user, let key): .rotate(user: transform(user), key: key)
        case .delete(let user, let key): .delete(user: transform(user), key: key)
        case .passThrough, .rejected: self
        }
    }
}
