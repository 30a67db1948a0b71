import Foundation
import MixpeekAPI

/// One key as the fake stores it, encoded with the field names of the SDK's `APIKeyModel`
/// (and `APIKeyCreateResponse`, which adds the plaintext `key`, shown once).
struct APIKeyRecord: Codable, Sendable {
    var key_id: String
    var key_hash: String
    var key_prefix: String
    var key_type = "standard"
    var is_internal = false
    var internal_id: String
    var organization_id: String
    var user_id: String
    var name: String
    var description: String = ""
    var permissions: [String] = ["read", "write", "delete"]
    var scopes: [KeyScope] = []
    var rate_limit_override: Int?
    var status = "active"
    var expires_at: String?
    var created_at: String
    var created_by: String
    var revoked_at: String?
    var revoked_by: String?
    var allowed_origins: [String]?
    /// Only in a create or rotate response.
    var key: String?
}

extension APIKeyRecord {
    /// A validated create or update body's fields (`FakeValidation.keyFields`) applied: a
    /// field absent keeps its value; `null` clears `expires_at`, `rate_limit_override` and
    /// `scopes`, as the spec's update says ("Use null to remove expiration").
    mutating func apply(_ fields: KeyFields) {
        if let name = fields.name { self.name = name }
        if let description = fields.description { self.description = description }
        if let permissions = fields.permissions { self.permissions = permissions }
        if let scopes = fields.scopes { self.scopes = scopes ?? [] }
        if let limit = fields.rateLimitOverride { rate_limit_override = limit }
        if let expiresAt = fields.expiresAt { expires_at = expiresAt }
        if let status = fields.status { self.status = status }
    }

    /// When this key's secret stops authenticating, if it ever does.
    var expiry: Date? { expires_at.flatMap(FakeValidation.dateTime) }
}

struct ListBody: Codable {
    var keys: [APIKeyRecord]
    var total: Int
}

struct SuccessBody: Codable {
    var message: String
    var success = true
}

/// The fake's bodies written with `JSONWriter` (what `JSONEncoder` wrote, without its cost:
/// the fake shares the benchmark's cores with the proxies).
protocol JSONBody {
    func write(to json: inout JSONWriter)
}

extension APIKeyRecord: JSONBody {
    func write(to json: inout JSONWriter) {
        json.beginObject()
        json.field("key_id", key_id)
        json.field("key_hash", key_hash)
        json.field("key_prefix", key_prefix)
        json.field("key_type", key_type)
        json.field("is_internal", is_internal)
        json.field("internal_id", internal_id)
        json.field("organization_id", organization_id)
        json.field("user_id", user_id)
        json.field("name", name)
        json.field("description", description)
        json.field("permissions", permissions)
        json.key("scopes")
        json.beginArray()
        for scope in scopes {
            json.beginObject()
            json.field("resource_type", scope.resourceType)
            json.field("resource_id", scope.resourceID)
            json.field("operations", scope.operations)
            json.endObject()
        }
        json.endArray()
        json.field("rate_limit_override", rate_limit_override)
        json.field("status", status)
        json.field("expires_at", expires_at)
        json.field("created_at", created_at)
        json.field("created_by", created_by)
        json.field("revoked_at", revoked_at)
        json.field("revoked_by", revoked_by)
        json.field("allowed_origins", allowed_origins)
        json.field("key", key)
        json.endObject()
    }
}

extension ListBody: JSONBody {
    func write(to json: inout JSONWriter) {
        json.beginObject()
        json.key("keys")
        json.beginArray()
        for key in keys { key.write(to: &json) }
        json.endArray()
        json.field("total", total)
        json.endObject()
    }
}

extension SuccessBody: JSONBody {
    func write(to json: inout JSONWriter) {
        json.beginObject()
        json.field("message", message)
        json.field("success", success)
        json.endObject()
    }
}
