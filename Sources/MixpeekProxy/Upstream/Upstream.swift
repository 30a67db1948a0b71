import AsyncHTTPClient
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

/// Where forwarded requests go. Production uses `HTTPClientUpstream`; tests point it at the
/// in-process fake on a real port.
public protocol Upstream: Sendable {
    /// Sends one request; throws only `UpstreamError`.
    func send(_ request: UpstreamRequest) async throws -> UpstreamResponse
    /// The same, answered on `eventLoop`; fails only with `UpstreamError`. List misses use it
    /// so they never leave the connection's event loop when the upstream can stay on it.
    func send(_ request: UpstreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamResponse>
}

extension Upstream {
    public func send(_ request: UpstreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamResponse> {
        let promise = eventLoop.makePromise(of: UpstreamResponse.self)
        promise.completeWithTask { try await self.send(request) }
        return promise.futureResult
    }
}

/// The upstream through one shared, pooled AsyncHTTPClient (TLS verified, redirects not followed).
public final class HTTPClientUpstream: Upstream {
    private let client: HTTPClient
    /// The client's event loops, where list misses are prepared, sent and read.
    private let group: any EventLoopGroup
    private let baseURL: String
    private let timeout: TimeAmount
    private let maxResponseBytes: Int

    /// - Parameters:
    ///   - url: `scheme://host[:port]`; a path prefix is kept in front of every target.
    ///   - caFile: PEM file of extra trust roots (for an upstream with a private CA).
    public init(url: String, timeout: TimeAmount, caFile: String? = nil, maxResponseBytes: Int = 16 << 20,
                group: any EventLoopGroup) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile {
            tls.trustRoots = .file(caFile)
        }
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: tls,
            redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(10), read: timeout),
            decompression: .disabled)
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        configuration.httpVersion = .http1Only
        // No spans: nothing here exports them, and making them cost a tenth of a miss.
        configuration.tracing.tracer = nil
        // Fail fast like nginx (502 at once) rather than retry a refused connection until the deadline.
        configuration.connectionPool.retryConnectionEstablishment = false
        self.client = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: configuration)
        self.group = group
        self.baseURL = url.hasSuffix("/") ? String(url.dropLast()) : url
        self.timeout = timeout
        self.maxResponseBytes = maxResponseBytes
    }

    /// Every request takes the one path below: mutations and pass-through too, answered on one
    /// of the client's loops.
    public func send(_ request: UpstreamRequest) async throws -> UpstreamResponse {
        try await send(request, on: group.next()).get()
    }

    /// Answered on the caller's event loop. The request is built, sent and read on one of the
    /// client's own event loops, so the upstream half of a miss runs beside the server's loop
    /// (the loop is preferred, not required: AHC closes a connection made for a required loop
    /// as soon as it falls idle, a connect per miss).
    public func send(_ request: UpstreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamResponse> {
        let answer = eventLoop.makePromise(of: UpstreamResponse.self)
        let loop = group.next()
        loop.execute {
            do {
                let outgoing = try HTTPClient.Request(
                    url: self.baseURL + request.target, method: request.method, headers: request.headers,
                    body: request.body.map { .byteBuffer($0) })
                self.client.execute(
                    request: outgoing, delegate: ResponseAccumulator(request: outgoing, maxBodySize: self.maxResponseBytes),
                    eventLoop: .delegate(on: loop), deadline: .now() + self.timeout
                ).futureResult.whenComplete { result in
                    // Completing the caller's promise brings the answer back to its loop.
                    switch result {
                    case .success(let response):
                        answer.succeed(UpstreamResponse(status: response.status, headers: response.headers, body: response.body ?? ByteBuffer()))
                    case .failure(let error):
                        answer.fail(Self.upstreamError(error))
                    }
                }
            } catch {
                answer.fail(Self.upstreamError(error))
            }
        }
        return answer.futureResult
    }

    /// Any failure of the client as an `UpstreamError`, in words a user can act on.
    static func upstreamError(_ error: any Error) -> UpstreamError {
        switch error {
        case let error as UpstreamError:
            return error
        case let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout:
            return .timeout
        case let error as NIOSSLError:
            return .unreachable(describeTLS(error))
        case let error as HTTPClientError where error == .connectTimeout:
            return .unreachable("could not connect to the upstream in time")
        case let error as HTTPClientError:
            return .unreachable("upstream request failed: \(error)")
        default:
            return .unreachable("could not reach the upstream: \(describe(error))")
        }
    }

    public func shutdown() async {
        try? await client.shutdown()
    }

    /// A TLS failure in words, without BoringSSL's source paths.
    private static func describeTLS(_ error: NIOSSLError) -> String {
        if "\(error)".contains("CERTIFICATE_VERIFY_FAILED") {
            return "TLS handshake with the upstream failed: its certificate is not trusted (set upstream_ca_file for a private CA)"
        }
        if case .handshakeFailed = error { return "TLS handshake with the upstream failed" }
        return "TLS failure talking to the upstream"
    }

    private static func describe(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError {
            if error.dnsAAAAError != nil || error.dnsAError != nil, error.connectionErrors.isEmpty {
                return "DNS lookup of \(error.host) failed"
            }
            return "connection to \(error.host):\(error.port) failed"
        }
        if let error = error as? IOError { return error.description }
        if let error = error as? NIOSSLError { return describeTLS(error) }
        return String(describing: error)
    }
}
