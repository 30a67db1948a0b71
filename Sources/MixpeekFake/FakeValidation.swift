import Foundation
import MixpeekAPI
import MixpeekHTTP
import NIOCore
import NIOFoundationCompat

/// A request the real API (FastAPI and pydantic, validating against its OpenAPI document 0.81)
/// would refuse with 422: which field, and why.
struct ValidationFailure: Error, Equatable {
    /// Where, as FastAPI's `loc` says it: `["body", "permissions", "0"]`, `["query", "include_revoked"]`.
    var location: [String]
    var message: String
    /// pydantic's error type (`missing`, `enum`, `greater_than_equal`, …).
    var type: String

    init(_ location: [String], _ message: String, type: String) {
        self.location = location
        self.message = message
        self.type = type
    }

    /// The message of the fake's 422, naming the field that is wrong.
    var text: String { location.joined(separator: ".") + ": " + message }
}

/// The fields of a create or update body, checked as the spec's `APIKeyCreateRequest` and
/// `APIKeyUpdateRequest` say. A field absent from the body is nil; an explicit `null` is
/// `.some(nil)` where the spec allows one.
struct KeyFields: Equatable {
    var name: String?
    var description: String?
    var permissions: [String]?
    var scopes: [KeyScope]??
    var rateLimitOverride: Int??
    /// Normalised to the fake's own timestamp form.
    var expiresAt: String??
    var status: String?
}

/// One `ResourceScope` of a key, returned as it was given.
struct KeyScope: Equatable, Sendable, Codable {
    var resourceType: String
    var resourceID: String
    var operations: [String]?

    enum CodingKeys: String, CodingKey {
        case resourceType = "resource_type"
        case resourceID = "resource_id"
        case operations
    }
}

/// How the fake reads a request as the real API does.
enum FakeValidation {
    static let permissions = ["read", "write", "delete", "admin"]
    static let statuses = ["active", "revoked", "expired"]
    static let resourceTypes = [
        "organization", "user", "api_key", "namespace", "collection", "bucket", "retriever", "cluster", "taxonomy",
        "storage_connection", "alert",
    ]
    static let operations = [
        "read_data", "write_data", "delete_data", "execute_retriever", "create_retriever", "delete_retriever", "execute_job",
        "cancel_job", "create_cluster", "delete_cluster", "modify_cluster", "modify_infrastructure", "manage_permissions",
    ]

    // MARK: Query

    /// `include_revoked` as FastAPI reads a query: other parameters ignored, the last of a
    /// repeated one taken, pydantic's words for a boolean (any case).
    static func includeRevoked(in query: Substring?) -> Result<Bool, ValidationFailure> {
        guard let query else { return .success(false) }
        var last: String?
        for pair in Route.split(query, on: "&") where !pair.isEmpty {
            let parts = Route.split(pair, on: "=", maxSplits: 1)
            guard Route.percentDecode(parts[0], plusIsSpace: true) == "include_revoked" else { continue }
            last = parts.count == 2 ? Route.percentDecode(parts[1], plusIsSpace: true) ?? "\u{FFFD}" : ""
        }
        guard let last else { return .success(false) }
        switch last.lowercased() {
        case "true", "1", "yes", "on", "t", "y": return .success(true)
        case "false", "0", "no", "off", "f", "n": return .success(false)
        default: return .failure(ValidationFailure(["query", "include_revoked"], "Input should be a valid boolean, unable to interpret input", type: "bool_parsing"))
        }
    }

    // MARK: Body

    /// The request's body as JSON, when FastAPI would read it so: no `Content-Type`, or
    /// `application/json` or `application/*+json`. Anything else is not an object to FastAPI.
    static func jsonBody(_ request: HTTPRequest) -> Result<Any, ValidationFailure> {
        guard let body = request.body, body.readableBytes > 0 else {
            return .failure(ValidationFailure(["body"], "Field required", type: "missing"))
        }
        if let contentType = request.headers.first(name: "content-type") {
            let media = contentType.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            let isJSON = media == "application/json" || (media.hasPrefix("application/") && media.hasSuffix("+json"))
            guard isJSON else {
                return .failure(ValidationFailure(["body"], "Input should be a valid dictionary or object to extract fields from", type: "model_attributes_type"))
            }
        }
        guard let value = try? JSONSerialization.jsonObject(with: Data(buffer: body), options: [.fragmentsAllowed]) else {
            return .failure(ValidationFailure(["body"], "JSON decode error", type: "json_invalid"))
        }
        return .success(value)
    }

    /// A create (`creating`) or update body's fields, checked field by field in the spec's order.
    static func keyFields(_ body: Any, creating: Bool) -> Result<KeyFields, ValidationFailure> {
        guard let object = body as? [String: Any] else {
            return .failure(ValidationFailure(["body"], "Input should be a valid dictionary or object to extract fields from", type: "model_attributes_type"))
        }
        func failure(_ field: String, _ message: String, _ type: String, at index: String? = nil) -> Result<KeyFields, ValidationFailure> {
            .failure(ValidationFailure(["body", field] + (index.map { [$0] } ?? []), message, type: type))
        }
        var fields = KeyFields()
        // name: required on create, 1 to 100 characters; nullable on update.
        switch object["name"] {
        case nil:
            if creating { return failure("name", "Field required", "missing") }
        case let value? where value is NSNull:
            if creating { return failure("name", "Input should be a valid string", "string_type") }
        case let value?:
            guard let name = string(value) else { return failure("name", "Input should be a valid string", "string_type") }
            guard name.count >= 1 else { return failure("name", "String should have at least 1 character", "string_too_short") }
            guard name.count <= 100 else { return failure("name", "String should have at most 100 characters", "string_too_long") }
            fields.name = name
        }
        if let value = object["description"], !(value is NSNull) {
            guard let text = string(value) else { return failure("description", "Input should be a valid string", "string_type") }
            guard text.count <= 500 else { return failure("description", "String should have at most 500 characters", "string_too_long") }
            fields.description = text
        }
        if let value = object["permissions"] {
            if value is NSNull {
                if creating { return failure("permissions", "Input should be a valid list", "list_type") }
            } else {
                guard let list = value as? [Any] else { return failure("permissions", "Input should be a valid list", "list_type") }
                var permissions: [String] = []
                for (index, item) in list.enumerated() {
                    guard let permission = string(item), Self.permissions.contains(permission) else {
                        return failure("permissions", "Input should be 'read', 'write', 'delete' or 'admin'", "enum", at: String(index))
                    }
                    permissions.append(permission)
                }
                fields.permissions = permissions
            }
        }
        if let value = object["scopes"] {
            switch scopes(value) {
            case .success(let scopes): fields.scopes = .some(scopes)
            case .failure(let failure): return .failure(failure)
            }
        }
        if let value = object["rate_limit_override"] {
            if value is NSNull {
                fields.rateLimitOverride = .some(nil)
            } else {
                guard let limit = integer(value) else { return failure("rate_limit_override", "Input should be a valid integer", "int_type") }
                guard limit >= 1 else { return failure("rate_limit_override", "Input should be greater than or equal to 1", "greater_than_equal") }
                fields.rateLimitOverride = .some(limit)
            }
        }
        if let value = object["expires_at"] {
            if value is NSNull {
                fields.expiresAt = .some(nil)
            } else {
                guard let text = string(value), let date = dateTime(text) else {
                    return failure("expires_at", "Input should be a valid datetime", "datetime_parsing")
                }
                fields.expiresAt = .some(Timestamp.string(date))
            }
        }
        if !creating, let value = object["status"], !(value is NSNull) {
            guard let status = string(value), statuses.contains(status) else {
                return failure("status", "Input should be 'active', 'revoked' or 'expired'", "enum")
            }
            fields.status = status
        }
        return .success(fields)
    }

    private static func scopes(_ value: Any) -> Result<[KeyScope]?, ValidationFailure> {
        if value is NSNull { return .success(nil) }
        guard let list = value as? [Any] else { return .failure(ValidationFailure(["body", "scopes"], "Input should be a valid list", type: "list_type")) }
        var scopes: [KeyScope] = []
        for (index, item) in list.enumerated() {
            let at = ["body", "scopes", String(index)]
            guard let scope = item as? [String: Any] else {
                return .failure(ValidationFailure(at, "Input should be a valid dictionary or object to extract fields from", type: "model_attributes_type"))
            }
            guard let rawType = scope["resource_type"] else { return .failure(ValidationFailure(at + ["resource_type"], "Field required", type: "missing")) }
            guard let type = string(rawType), resourceTypes.contains(type) else {
                return .failure(ValidationFailure(at + ["resource_type"], "Input should be a valid ResourceType", type: "enum"))
            }
            guard let rawID = scope["resource_id"] else { return .failure(ValidationFailure(at + ["resource_id"], "Field required", type: "missing")) }
            guard let id = string(rawID) else { return .failure(ValidationFailure(at + ["resource_id"], "Input should be a valid string", type: "string_type")) }
            guard (1...100).contains(id.count) else {
                return .failure(ValidationFailure(at + ["resource_id"], "String should have 1 to 100 characters", type: id.isEmpty ? "string_too_short" : "string_too_long"))
            }
            var operations: [String]?
            if let raw = scope["operations"], !(raw is NSNull) {
                guard let items = raw as? [Any] else { return .failure(ValidationFailure(at + ["operations"], "Input should be a valid list", type: "list_type")) }
                operations = []
                for (position, item) in items.enumerated() {
                    guard let operation = string(item), Self.operations.contains(operation) else {
                        return .failure(ValidationFailure(at + ["operations", String(position)], "Input should be a valid NamespaceOperation", type: "enum"))
                    }
                    operations?.append(operation)
                }
            }
            scopes.append(KeyScope(resourceType: type, resourceID: id, operations: operations))
        }
        return .success(scopes)
    }

    // MARK: JSON values

    /// A JSON string; a number or boolean is not one (pydantic does not coerce them).
    private static func string(_ value: Any) -> String? {
        value as? NSNumber == nil ? value as? String : nil
    }

    /// A JSON integer (or a number with no fraction, as JSON Schema's `integer` allows); a
    /// boolean is not one, though Foundation hands it over as a number.
    private static func integer(_ value: Any) -> Int? {
        guard let number = value as? NSNumber, String(cString: number.objCType) != "c" else { return nil }
        let double = number.doubleValue
        guard double.rounded() == double, abs(double) < 9e18 else { return nil }
        return number.intValue
    }

    /// An RFC 3339 date-time (`format: date-time`), read as the real API reads it (`Timestamp.parse`).
    static func dateTime(_ text: String) -> Date? {
        Timestamp.parse(text)
    }
}
