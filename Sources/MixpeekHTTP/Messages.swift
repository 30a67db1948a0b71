import NIOCore
import NIOHTTP1

/// A complete request as the server hands it to a responder: head and body already read.
public struct HTTPRequest: Sendable {
    public var method: HTTPMethod
    /// The request target exactly as the client sent it (path and query, never re-normalised).
    public var target: String
    public var version: HTTPVersion
    public var headers: HTTPHeaders
    public var body: ByteBuffer?
    public var remoteAddress: SocketAddress?
    /// The address the client connected to.
    public var localAddress: SocketAddress?

    public init(
        method: HTTPMethod, target: String, version: HTTPVersion = .http1_1,
        headers: HTTPHeaders = [:], body: ByteBuffer? = nil, remoteAddress: SocketAddress? = nil,
        localAddress: SocketAddress? = nil
    ) {
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
        self.localAddress = localAddress
    }

    /// The target's path, before any `?` (found byte-wise, as every HTTP peer reads it).
    public var path: Substring {
        target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? target[...]
    }

    /// The target's query, after the first `?`, if any.
    public var query: Substring? {
        target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[target.utf8.index(after: $0)...] }
    }

    /// The client's IP address, without the port.
    public var clientAddress: String {
        remoteAddress?.ipAddress ?? "unknown"
    }
}

/// A complete response: the server adds `Content-Length` and `Connection` itself, and leaves
/// out the body where HTTP has none (an answer to HEAD, 1xx, 204, 304). In an answer to HEAD
/// and in a 304, a `Content-Length` in `headers` is kept: it states the representation's length.
public struct HTTPResponse: Sendable {
    public var status: HTTPResponseStatus
    /// Fields encoded ahead, written first (a cached list's fixed fields).
    public var headerBlock: HTTPHeaderBlock?
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    public init(status: HTTPResponseStatus, headerBlock: HTTPHeaderBlock? = nil, headers: HTTPHeaders = [:], body: ByteBuffer = ByteBuffer()) {
        self.status = status
        self.headerBlock = headerBlock
        self.headers = headers
        self.body = body
    }
}

/// Header fields encoded and checked once, for a response sent many times: each field as
/// `name: value` CRLF, as the server writes them.
public struct HTTPHeaderBlock: Sendable {
    let bytes: ByteBuffer

    /// Nil when a field could not be sent (see `HTTPRequestHandler.canSend`).
    public init?(_ headers: HTTPHeaders) {
        guard HTTPRequestHandler.canSend(headers) else { return nil }
        var bytes = ByteBuffer()
        for (name, value) in headers {
            bytes.writeString(name)
            bytes.writeStaticString(": ")
            bytes.writeString(value)
            bytes.writeStaticString("\r\n")
        }
        self.bytes = bytes
    }
}

/// How a responder answers: now, on the event loop, or later.
public enum HTTPReply: Sendable {
    case now(HTTPResponse)
    case later(EventLoopFuture<HTTPResponse>)
}

/// What the server calls once per complete request.
///
/// `respond` runs on the connection's event loop; it must not block. Cache hits answer `.now`,
/// anything that waits on the network or the disk answers `.later`.
public protocol HTTPResponder: Sendable {
    func respond(to request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply
    /// The response for a request the server refused before it reached `respond`. A failed
    /// `.later` future is answered with `refusal(.internalError)`.
    func refusal(_ reason: HTTPRefusal) -> HTTPResponse
}

/// Why the server itself refused a request.
public enum HTTPRefusal: Sendable, Equatable {
    case malformed(String)
    case bodyTooLarge(limit: Int)
    case headersTooLarge(limit: Int)
    case tooManyHeaders(limit: Int)
    /// An `Expect` field asking for something other than `100-continue`.
    case expectationFailed
    case internalError

    public var status: HTTPResponseStatus {
        switch self {
        case .malformed: .badRequest
        case .bodyTooLarge: .payloadTooLarge
        case .headersTooLarge, .tooManyHeaders: .requestHeaderFieldsTooLarge
        case .expectationFailed: .expectationFailed
        case .internalError: .internalServerError
        }
    }

    public var message: String {
        switch self {
        case .malformed(let why): "malformed request: \(why)"
        case .bodyTooLarge(let limit): "request body is larger than the limit of \(limit) bytes"
        case .headersTooLarge(let limit): "request header section is larger than the limit of \(limit) bytes"
        case .tooManyHeaders(let limit): "request has more than \(limit) header fields"
        case .expectationFailed: "the only expectation this server meets is Expect: 100-continue"
        case .internalError: "internal error"
        }
    }
}

