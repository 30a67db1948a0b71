import AsyncHTTPClient
import Foundation
import Logging
import MixpeekFake
import MixpeekProxy
import NIOConcurrencyHelpers
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix

/// A response as a test reads it.
struct TestResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: String

    var json: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:]
    }

    var header: (String) -> String? { { name in headers.first(name: name) } }

    /// Names of the keys in a list response.
    var keyNames: [String] {
        (json["keys"] as? [[String: Any]])?.compactMap { $0["name"] as? String } ?? []
    }

    /// The `error` object of the contract's error shape.
    var error: [String: Any]? { json["error"] as? [String: Any] }
}

/// The real proxy on a real port in front of the fake upstream on another, with its own
/// temporary data dir. Every test gets a fresh one.
final class TestProxy: Sendable {
    let fake: FakeUpstreamServer
    let app: ProxyApp
    let dataDir: String
    let client: HTTPClient
    /// The request log's lines, when it goes to its default place (stderr).
    let requestLog: LineSink?

    static let token = "sk_test_aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    static let otherToken = "sk_test_bbbbbbbbbbbbbbbbbbbbbbbbbbbb"

    var controls: FakeControls { fake.controls }
    var url: String { app.url }

    private init(fake: FakeUpstreamServer, app: ProxyApp, dataDir: String, client: HTTPClient, requestLog: LineSink?) {
        self.requestLog = requestLog
        self.fake = fake
        self.app = app
        self.dataDir = dataDir
        self.client = client
    }

    static func makeDataDir() -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mixpeek-proxy-test-\(UUID().uuidString)").path
        return dir
    }

    /// Starts a fake and a proxy in front of it; `configure` adjusts the proxy's config.
    static func start(
        dataDir: String = makeDataDir(), fake existing: FakeUpstreamServer? = nil,
        clock: (@Sendable () -> Double)? = nil, configure: (inout ProxyConfig) -> Void = { _ in }
    ) async throws -> TestProxy {
        let fake: FakeUpstreamServer
        if let existing {
            fake = existing
        } else {
            fake = try await FakeUpstreamServer.start()
        }
        var config = ProxyConfig()
        config.port = 0
        config.upstream = fake.url
        config.dataDir = dataDir
        config.upstreamTimeout = 5
        config.logLevel = .warning
        configure(&config)
        var logger = Logger(label: "test-proxy")
        logger.logLevel = config.logLevel
        // The request log stays on (its code runs in every test) but is kept out of the test output.
        let requestLog = config.accessLog == .stderr ? LineSink() : nil
        let app = try await ProxyApp.start(config: config, logger: logger, clock: clock, accessLogSink: requestLog)
        var clientConfiguration = HTTPClient.Configuration(redirectConfiguration: .disallow)
        clientConfiguration.httpVersion = .http1Only
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        return TestProxy(fake: fake, app: app, dataDir: dataDir, client: client, requestLog: requestLog)
    }

    /// Stops the proxy (and the fake unless `keepFake`), keeping the data dir.
    func stop(keepFake: Bool = false) async {
        try? await client.shutdown()
        await app.shutdown()
        if !keepFake { await fake.shutdown() }
    }

    func removeData() {
        try? FileManager.default.removeItem(atPath: dataDir)
    }

    static func path(user: String = "alice@example.com", key: String? = nil, rotate: Bool = false, query: String? = nil) -> String {
        var path = "/v1/organizations/users/\(user)/api-keys"
        if let key { path += "/\(key)" }
        if rotate { path += "/rotate" }
        if let query { path += "?\(query)" }
        return path
    }

    func request(
        _ method: HTTPMethod, _ path: String, token: String? = TestProxy.token, headers: HTTPHeaders = [:],
        json: String? = nil, timeout: TimeAmount = .seconds(10), base: String? = nil
    ) async throws -> TestResponse {
        var request = HTTPClientRequest(url: (base ?? url) + path)
        request.method = method
        request.headers = headers
        if let token { request.headers.replaceOrAdd(name: "authorization", value: "Bearer \(token)") }
        if let json {
            request.headers.replaceOrAdd(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await client.execute(request, timeout: timeout)
        let body = try await response.body.collect(upTo: 16 << 20)
        return TestResponse(status: Int(response.status.code), headers: response.headers, body: String(buffer: body))
    }

    func list(user: String = "alice@example.com", query: String? = nil, token: String? = TestProxy.token,
              headers: HTTPHeaders = [:]) async throws -> TestResponse {
        try await request(.GET, Self.path(user: user, query: query), token: token, headers: headers)
    }

    func create(user: String = "alice@example.com", name: String, token: String? = TestProxy.token) async throws -> TestResponse {
        try await request(.POST, Self.path(user: user), token: token, json: #"{"name": "\#(name)"}"#)
    }

    func update(user: String = "alice@example.com", key: String, json: String = #"{"description": "changed"}"#,
                token: String? = TestProxy.token) async throws -> TestResponse {
        try await request(.PATCH, Self.path(user: user, key: key), token: token, json: json)
    }

    func rotate(user: String = "alice@example.com", key: String, token: String? = TestProxy.token) async throws -> TestResponse {
        try await request(.POST, Self.path(user: user, key: key, rotate: true), token: token)
    }

    func delete(user: String = "alice@example.com", key: String, token: String? = TestProxy.token) async throws -> TestResponse {
        try await request(.DELETE, Self.path(user: user, key: key), token: token)
    }
}

/// Runs `body` with a fresh proxy and fake, and always stops them and removes the data.
func withTestProxy(
    clock: (@Sendable () -> Double)? = nil, configure: (inout ProxyConfig) -> Void = { _ in },
    _ body: (TestProxy) async throws -> Void
) async throws {
    let proxy = try await TestProxy.start(clock: clock, configure: configure)
    do {
        try await body(proxy)
    } catch {
        await proxy.stop()
        proxy.removeData()
        throw error
    }
    await proxy.stop()
    proxy.removeData()
}

/// Polls `condition` every 10 ms for at most `seconds`; true when it held.
func eventually(within seconds: Double = 30, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}

/// A settable clock for TTL tests.
final class TestClock: Sendable {
    private let now = NIOLockedValueBox<Double>(1_900_000_000)
    var read: @Sendable () -> Double { { self.now.withLockedValue { $0 } } }
    func advance(_ seconds: Double) { now.withLockedValue { $0 += seconds } }
}

/// Runs `body` against a proxy in front of `upstream` (no fake) and shuts it down. The data
/// dir is a fresh one removed afterwards, unless `dataDir` is given (to read it afterwards).
func withStubProxy<T>(_ upstream: StubUpstream, dataDir given: String? = nil, logger: Logger? = nil,
                      clock: (@Sendable () -> Double)? = nil, configure: (inout ProxyConfig) -> Void = { _ in },
                      _ body: (_ app: ProxyApp, _ dataDir: String) async throws -> T) async throws -> T {
    let dataDir = given ?? TestProxy.makeDataDir()
    defer { if given == nil { try? FileManager.default.removeItem(atPath: dataDir) } }
    var config = ProxyConfig()
    config.port = 0
    config.dataDir = dataDir
    config.logLevel = .warning
    configure(&config)
    let app = try await ProxyApp.start(
        config: config, upstream: upstream, logger: logger ?? Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
        clock: clock, accessLogSink: LineSink())
    do {
        let result = try await body(app, dataDir)
        await app.shutdown()
        return result
    } catch {
        await app.shutdown()
        throw error
    }
}

/// One list of `user` through `app` with `token`: its status and X-Cache.
func listThrough(_ app: ProxyApp, user: String = "alice@example.com", token: String = TestProxy.token) async throws -> (status: Int, cache: String?) {
    var request = HTTPClientRequest(url: app.url + TestProxy.path(user: user))
    request.headers.add(name: "authorization", value: "Bearer \(token)")
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(5))
    _ = try await response.body.collect(upTo: 1 << 20)
    return (Int(response.status.code), response.headers.first(name: "X-Cache"))
}

/// Writes raw bytes to a port and returns everything read until the peer closes or
/// `timeout` passes: for requests no well-behaved client would send.
func rawExchange(port: Int, _ bytes: [UInt8], timeout: TimeAmount = .seconds(3)) async throws -> (text: String, closed: Bool) {
    let connection = try await RawConnection.open(port: port)
    // Nothing to send (an idle client) is no write that could meet a connection already timed out.
    if !bytes.isEmpty { try await connection.send(bytes) }
    let closed = await connection.closedByServer(within: timeout)
    return (connection.text, closed)
}

func rawExchange(port: Int, _ text: String, timeout: TimeAmount = .seconds(3)) async throws -> (text: String, closed: Bool) {
    try await rawExchange(port: port, Array(text.utf8), timeout: timeout)
}

/// A client connection of raw bytes that can wait for the server between writes (for
/// `Expect: 100-continue`).
struct RawConnection: Sendable {
    let channel: any Channel
    let collector: RawCollector

    static func open(port: Int) async throws -> RawConnection {
        let collector = RawCollector()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel, collector: collector)
    }

    /// Everything received so far.
    var text: String { collector.text }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }

    func send(_ text: String) async throws {
        try await send(Array(text.utf8))
    }

    /// True when the server closes the connection within `timeout`; the connection is closed
    /// either way afterwards.
    func closedByServer(within timeout: TimeAmount) async -> Bool {
        do {
            try await channel.closeFuture.timeout(after: timeout, on: channel.eventLoop)
            return true
        } catch {
            try? await channel.close()
            return false
        }
    }
}

final class RawCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    private let received = NIOLockedValueBox([UInt8]())
    var text: String { String(decoding: received.withLockedValue { $0 }, as: UTF8.self) }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        received.withLockedValue { $0.append(contentsOf: buffer.readableBytesView) }
    }
}

extension EventLoopFuture where Value == Void {
    func timeout(after amount: TimeAmount, on loop: any EventLoop) async throws {
        let promise = loop.makePromise(of: Void.self)
        let timer = loop.scheduleTask(in: amount) { promise.fail(ChannelError.connectTimeout(amount)) }
        self.whenComplete { _ in timer.cancel(); promise.succeed() }
        try await promise.futureResult.get()
    }
}
