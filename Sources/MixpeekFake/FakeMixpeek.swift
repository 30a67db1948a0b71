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
/// unless `include_revoked` is true. A key whose `expires_at` has passed is `expired` and its
/// secret authenticates nothing. Requests are validated as the real API (FastAPI, OpenAPI
/// 0.81) validates them (`FakeValidation`), answering 422 in the contract's error shape.
///
/// Tests read per-operation call counts and switch faults on through `FakeControls`.
public final class FakeMixpeek: Sendable {
    public let controls = FakeControls()
    /// The organisation audit log: every mutation applied.
    public let auditTrail = FakeAuditTrail()
    private let organizations = NIOLockedValueBox(Organizations())

    /// Every organisation, by bearer token, and every secret it issued (by its `key_hash`): a
    /// request bearing one acts in the organisation that issued it, until the key is revoked
    /// (deleted, rotated away, or updated to `revoked`) or expires; then it authenticates
    /// nothing, as the real API refuses a dead key (401).
    struct Organizations {
        var byToken: [String: Organization] = [:]
        var secrets: [String: Secret] = [:]
    }

    struct Secret {
        /// The bearer token of the organisation that issued it.
        var organization: String
        var expiry: Date?
        var revoked = false
    }

    /// What one call did to the secrets it issued or ended, by `key_hash`.
    enum SecretChange {
        case issued(String, expiry: Date?)
        case expiry(String, Date?)
        case revoked(String)
    }

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
        /// Where each active key with an `expires_at` is, and when it expires.
        private var expiring: [Int: Date] = [:]

        init(_ first: APIKeyRecord) { append(first) }

        func activeIndex(named name: String) -> Int? { active[name] }

        mutating func append(_ record: APIKeyRecord) {
            records.append(record)
            if record.status != "revoked" { active[record.name] = records.count - 1 }
            noteExpiry(of: record, at: records.count - 1)
        }

        /// Marks every active key whose `expires_at` has passed `expired`.
        mutating func expire(now: Date) {
            for (index, date) in expiring where date <= now {
                records[index].status = "expired"
                expiring[index] = nil
            }
        }

        private mutating func noteExpiry(of record: APIKeyRecord, at index: Int) {
            expiring[index] = record.status == "active" ? record.expires_at.flatMap(FakeValidation.dateTime) : nil
        }

        subscript(index: Int) -> APIKeyRecord {
            get { records[index] }
            set {
                let old = records[index]
                if old.status != "revoked", active[old.name] == index { active[old.name] = nil }
                records[index] = newValue
                if newValue.status != "revoked" { active[newValue.name] = index }
                noteExpiry(of: newValue, at: index)
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
            if case .methodNotAllowed(let allowed) = why {
                // As Starlette answers a path it has with a method it has not.
                var response = Self.error(.methodNotAllowed, "Method Not Allowed", type: "method_not_allowed")
                response.headers.add(name: "allow", value: allowed)
                return response
            }
            return Self.error(.notFound, why.message, type: "not_found")
        }
        guard let token = Self.bearerToken(request.headers) else {
            return Self.error(.unauthorized, "Missing or invalid API key. Use 'Authorization: Bearer sk_...'.", type: "unauthorized")
        }
        // FastAPI validates the query and the body before the handler runs.
        let body: Any?
        var createdName: String?
        switch routed {
        case .list:
            body = nil
            if case .failure(let failure) = FakeValidation.includeRevoked(in: request.query) { return Self.invalid(failure) }
        case .create, .update:
            let fields = FakeValidation.jsonBody(request).flatMap { FakeValidation.keyFields($0, creating: routed.isCreate) }
            switch fields {
            case .success(let fields):
                body = fields
                createdName = fields.name
            case .failure(let failure):
                return Self.invalid(failure)
            }
        default:
            body = nil
        }
        let route = controls.matchesUsersCaseInsensitively ? routed.withUser(UserIdentity.folded) : routed
        let now = Date()
        return organizations.withLockedValue { orgs in
            // A token the fake never issued is an organisation of its own (any sk_… works).
            var organization = token
            if !orgs.secrets.isEmpty, let secret = orgs.secrets[Self.sha256Hex(token)] {
                if secret.revoked { return Self.error(.unauthorized, "API key has been revoked", type: "unauthorized") }
                if let expiry = secret.expiry, expiry <= now {
                    return Self.error(.unauthorized, "API key has expired", type: "unauthorized")
                }
                organization = secret.organization
            }
            if orgs.byToken[organization] == nil { orgs.byToken[organization] = Organization(internalID: "org_" + Self.shortHash(organization)) }
            // In place: a copy of the organisation would copy every key list on each mutation.
            var applied: (keyID: String, name: String)?
            let (response, changes) = Self.apply(route, query: request.query, body: body, to: &orgs.byToken[organization]!, now: now,
                                                 applied: &applied)
            if let applied { auditTrail.note(route, keyID: applied.keyID, name: applied.name, at: now) }
            for change in changes {
                switch change {
                case .issued(let hash, let expiry): orgs.secrets[hash] = Secret(organization: organization, expiry: expiry)
                case .expiry(let hash, let expiry): orgs.secrets[hash]?.expiry = expiry
                case .revoked(let hash): orgs.secrets[hash]?.revoked = true
                }
            }
            // Inside the lock: the history's order is the order the calls were applied in.
            controls.noteAnswered(routed, method: request.method, createdName: createdName, status: response.status)
            return response
        }
    }

    /// Applies one call; also returns what it did to the secrets it issued or ended, and sets
    /// `applied` to the key a mutation changed.
    private static func apply(_ route: Route, query: Substring?, body: Any?, to org: inout Organization,
                              now date: Date, applied: inout (keyID: String, name: String)?) -> (HTTPResponse, [SecretChange]) {
        let now = Timestamp.string(date)
        let fields = body as? KeyFields ?? KeyFields()
        switch route {
        case .list(let user, _):
            let includeRevoked = (try? FakeValidation.includeRevoked(in: query).get()) ?? false
            let keys = org.withKeys(of: user) { keys in
                keys.expire(now: date)
                return keys.records.filter { includeRevoked || $0.status != "revoked" }
            }
            return (json(ListBody(keys: keys, total: keys.count)), [])
        case .create(let user):
            let name = fields.name ?? ""
            let secret = newSecret()
            var record = newRecord(name: name, user: user, org: org, secret: secret, now: now)
            record.apply(fields)
            return org.withKeys(of: user) { keys in
                keys.expire(now: date)
                if keys.activeIndex(named: name) != nil {
                    return (error(.badRequest, "an active key named '\(name)' already exists", type: "bad_request", code: "key_name_taken"), [])
                }
                keys.append(record)
                applied = (record.key_id, name)
                record.key = secret
                return (json(record), [.issued(record.key_hash, expiry: record.expiry)])
            }
        case .update(let user, let name), .rotate(let user, let name), .delete(let user, let name):
            if name == "admin-key" {
                return (error(.forbidden, "The 'admin-key' is protected and cannot be modified.", type: "forbidden"), [])
            }
            return org.withKeys(of: user) { keys in
                keys.expire(now: date)
                guard let index = keys.activeIndex(named: name) else {
                    return (error(.notFound, "API key '\(name)' not found for \(user)", type: "not_found"), [])
                }
                switch route {
                case .update:
                    var updated = keys[index]
                    updated.apply(fields)
                    if updated.name != name, keys.activeIndex(named: updated.name) != nil {
                        return (error(.badRequest, "an active key named '\(updated.name)' already exists", type: "bad_request", code: "key_name_taken"), [])
                    }
                    if updated.status == "revoked" && updated.revoked_at == nil {
                        updated.revoked_at = now
                        updated.revoked_by = updated.user_id
                    }
                    keys[index] = updated
                    applied = (updated.key_id, updated.name)
                    keys.expire(now: date)
                    var changes: [SecretChange] = fields.expiresAt == nil ? [] : [.expiry(updated.key_hash, updated.expiry)]
                    if keys[index].status != "active" { changes.append(.revoked(updated.key_hash)) }
                    return (json(keys[index]), changes)
                case .rotate:
                    let secret = newSecret()
                    var rotated = keys[index]
                    let old = rotated.key_hash
                    rotated.key_hash = sha256Hex(secret)
                    rotated.key_prefix = String(secret.prefix(10))
                    keys[index] = rotated
                    applied = (rotated.key_id, name)
                    rotated.key = secret
                    return (json(rotated), [.revoked(old), .issued(rotated.key_hash, expiry: rotated.expiry)])
                default:
                    var revoked = keys[index]
                    revoked.status = "revoked"
                    revoked.revoked_at = now
                    revoked.revoked_by = revoked.user_id
                    keys[index] = revoked
                    applied = (revoked.key_id, name)
                    return (json(SuccessBody(message: "API key '\(name)' revoked")), [.revoked(revoked.key_hash)])
                }
            }
        case .passThrough, .rejected:
            return (error(.notFound, "Not Found", type: "not_found"), [])
        }
    }

    /// The 422 the real API answers, in the contract's error shape (not FastAPI's
    /// `HTTPValidationError`; docs/DEVELOPMENT.md says how they differ): the message names the field.
    static func invalid(_ failure: ValidationFailure) -> HTTPResponse {
        var body = ErrorBody(status: .unprocessableEntity, message: failure.text, type: "validation_error")
        body.error.details = ["loc": failure.location.joined(separator: "."), "type": failure.type]
        return HTTPResponse(status: .unprocessableEntity, headers: ["content-type": "application/json"], body: body.buffer)
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
    var isCreate: Bool {
        if case .create = self { true } else { false }
    }

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
