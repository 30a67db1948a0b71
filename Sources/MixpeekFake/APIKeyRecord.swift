import Foundation

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

struct ListBody: Codable {
    var keys: [APIKeyRecord]
    var total: Int
}

struct SuccessBody: Codable {
    var message: String
    var success = true
}
