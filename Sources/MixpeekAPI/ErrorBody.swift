import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// The one error shape of the Mixpeek API, which the proxy also uses for its own errors so
/// that SDK clients raise their usual exceptions:
/// `{"success": false, "status": N, "error": {"message", "type", "code", "details"}}`.
public struct ErrorBody: Codable, Equatable, Sendable {
    public struct Detail: Codable, Equatable, Sendable {
        public var message: String
        public var type: String
        public var code: String?
        public var details: [String: String]?
    }

    public var success: Bool
    public var status: Int
    public var error: Detail

    public init(status: HTTPResponseStatus, message: String, type: String, code: String? = nil) {
        self.success = false
        self.status = Int(status.code)
        self.error = Detail(message: message, type: type, code: code, details: nil)
    }

    /// The body, its members always in this order (`JSONEncoder` orders them anew on each
    /// run, so two answers to one request would differ byte for byte), `details` by key.
    public var buffer: ByteBuffer {
        var json = JSONWriter(capacity: 256)
        json.beginObject()
        json.field("success", success)
        json.field("status", status)
        json.key("error")
        json.beginObject()
        json.field("message", error.message)
        json.field("type", error.type)
        json.field("code", error.code)
        if let details = error.details {
            json.key("details")
            json.beginObject()
            for (name, value) in details.sorted(by: { $0.key < $1.key }) {
                json.key(name)
                json.string(value)
            }
            json.endObject()
        }
        json.endObject()
        json.endObject()
        return ByteBuffer(bytes: json.bytes)
    }
}
