import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix

/// A complete HTTP response as a test sees it.
struct TestResponse: Sendable {
    var status: HTTPResponseStatus
    var headers: HTTPHeaders
    var body: ByteBuffer

    var text: String { String(buffer: body) }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(type, from: body)
    }

    /// The body as a JSON object, for checking a shape rather than decoding a type.
    func jsonObject() throws -> [String: Any] {
        guard let object = try JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else {
            throw TestHTTPClientError.notAJSONObject(text)
        }
        return object
    }
}

enum TestHTTPClientError: Error, Equatable {
    /// The server closed the connection before a whole response arrived.
    case closedWithoutResponse
    case notAJSONObject(String)
    case notAnHTTPURL(String)
}

/// A minimal HTTP/1.1 client on NIO: one connection per request, closed after the response,
/// so a test sees exactly what the server put on the wire (or that it put nothing).
struct TestHTTPClient: Sendable {
    let host: String
    let port: Int
    /// Sent as `Authorization` on every request unless a request sets its own headers.
    var token: String?

    init(host: String = "127.0.0.1", port: Int, token: String? = nil) {
        self.host = host
        self.port = port
        self.token = token
    }

    /// A client for a server's `http://host:port` address.
    init(url: String, token: String? = nil) throws {
        guard let components = URLComponents(string: url), components.scheme == "http",
              let host = components.host, let port = components.port
        else { throw TestHTTPClientError.notAnHTTPURL(url) }
        self.init(host: host, port: port, token: token)
    }

    /// A client with another credential against the same server.
    func with(token: String?) -> TestHTTPClient {
        TestHTTPClient(host: host, port: port, token: token)
    }

    func send(
        _ method: HTTPMethod, _ target: String, headers: HTTPHeaders? = nil, body: String? = nil
    ) async throws -> TestResponse {
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: target)
        head.headers = headers ?? (token.map { ["authorization": "Bearer \($0)"] } ?? [:])
        head.headers.replaceOrAdd(name: "host", value: "\(host):\(port)")
        head.headers.replaceOrAdd(name: "connection", value: "close")
        if let body {
            if !head.headers.contains(name: "content-type") { head.headers.add(name: "content-type", value: "application/json") }
            head.headers.replaceOrAdd(name: "content-length", value: String(body.utf8.count))
        }
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: TestResponse.self)
        let requestHead = head
        let requestBody = body.map { ByteBuffer(string: $0) }
        do {
            _ = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(
                            OneExchangeHandler(head: requestHead, body: requestBody, promise: promise))
                    }
                }
                .connect(host: host, port: port)
                .get()
        } catch {
            promise.fail(error)
        }
        return try await promise.futureResult.get()
    }

    func get(_ target: String) async throws -> TestResponse { try await send(.GET, target) }
    func post(_ target: String, _ body: String? = nil) async throws -> TestResponse { try await send(.POST, target, body: body) }
    func patch(_ target: String, _ body: String) async throws -> TestResponse { try await send(.PATCH, target, body: body) }
    func delete(_ target: String) async throws -> TestResponse { try await send(.DELETE, target) }
}

/// Writes one request when the connection is up and completes the promise with its response,
/// or with `closedWithoutResponse` if the connection ends first.
private final class OneExchangeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let head: HTTPRequestHead
    private let body: ByteBuffer?
    private let promise: EventLoopPromise<TestResponse>
    private var response: TestResponse?
    private var done = false

    init(head: HTTPRequestHead, body: ByteBuffer?, promise: EventLoopPromise<TestResponse>) {
        self.head = head
        self.body = body
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if let body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response = TestResponse(status: head.status, headers: head.headers, body: ByteBuffer())
        case .body(var chunk):
            response?.body.writeBuffer(&chunk)
        case .end:
            if let response { finish(.success(response)) }
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(.failure(TestHTTPClientError.closedWithoutResponse))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }

    private func finish(_ result: Result<TestResponse, any Error>) {
        guard !done else { return }
        done = true
        promise.completeWith(result)
    }
}
