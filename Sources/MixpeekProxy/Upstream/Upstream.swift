import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A request on its way to the upstream: the target exactly as the client sent it and
/// headers already cleaned of hop-by-hop fields.
public struct UpstreamRequest: Sendable {
    public var method: HTTPMethod
    public var target: String
    public var headers: HTTPHeaders
    public var body: ByteBuffer?

    public init(method: HTTPMethod, target: String, headers: HTTPHeaders, body: ByteBuffer?) {
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
    }
}

public struct UpstreamResponse: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: ByteBuffer

    public init(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// Why no response came back from the upstream.
public enum UpstreamError: Error, Sendable, Equatable {
    /// No complete answer within the upstream timeout.
    case timeout
    /// Could not connect, resolve, complete TLS, or read a well-formed response.
    case unreachable(String)
}

/// Where forwarded requests go. Production uses `NIOUpstream`; tests point it at the
/// in-process fake on a real port.
public protocol Upstream: Sendable {
    /// Sends one request; throws only `UpstreamError`.
    func send(_ request: UpstreamRequest) async throws -> UpstreamResponse
    /// The same, answered on `eventLoop`; fails only with `UpstreamError`. The proxy's calls
    /// (list misses, forwards, mutations) use it so they never leave the connection's event
    /// loop when the upstream can stay on it.
    func send(_ request: UpstreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamResponse>
}

extension Upstream {
    public func send(_ request: UpstreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamResponse> {
        let promise = eventLoop.makePromise(of: UpstreamResponse.self)
        promise.completeWithTask { try await self.send(request) }
        return promise.futureResult
    }
}
