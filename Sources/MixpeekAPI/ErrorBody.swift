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

    public var buffer: ByteBuffer {
        (try? JSONEncoder().encodeAsByteBuffer(self, allocator: ByteBufferAllocator())) ?? ByteBuffer()
    }
}
