import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// The upstream through keep-alive HTTP/1.1 connections of our own, pooled per event loop
/// (issue 28): a request asked on a loop is written, and its answer read, on a connection of
/// that loop, so a forward never hops between threads and no task is made for it (it replaced
/// AsyncHTTPClient here, measured: forwarding went from 0.42× to 0.66× nginx's rate, half the
/// CPU a request; docs/BENCHMARKS.md). What it kept of it (the tests decide): TLS verified
/// against the system's roots or `upstream_ca_file`, the server name sent (SNI) and checked;
/// one deadline of `upstream_timeout` for the whole exchange, connect included (failed at most
/// a tenth of it, and never more than 50 ms, past it; a connect alone gives up after 10 s); no
/// retry of a refused connection and no redirect followed; a response larger than
/// `maxResponseBytes` refused; every failure an `UpstreamError` in the same words. No request
/// is ever sent twice: a pooled connection the upstream closes is dropped from its pool when
/// the close arrives.
public final class NIOUpstream: Upstream, @unchecked Sendable {
    private let scheme: String
    private let host: String
    private let port: Int
    private let pathPrefix: String
    private let hostHeader: String
    private let timeout: TimeAmount
    private let maxResponseBytes: Int
    private let tls: NIOSSLContext?
    /// Where requests asked without a loop (`send(_:)`, from a task) go; the proxy's own calls
    /// all name their loop.
    private let group: any EventLoopGroup
    private let pools = NIOLockedValueBox<[ObjectIdentifier: Pool]>([:])
    static let connectTimeout = TimeAmount.seconds(10)
    static let idleTimeout = TimeAmount.seconds(60)
    static let maxIdlePerLoop = 64

    /// - Parameters:
    ///   - url: `scheme://host[:port]`; a path prefix is kept in front of every target.
    ///   - caFile: PEM file of extra trust roots (for an upstream with a private CA).
    public init(url: String, timeout: TimeAmount, caFile: String? = nil, maxResponseBytes: Int = 16 << 20,
                group: any EventLoopGroup) throws {
        guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = parsed.host, !host.isEmpty else {
            throw UpstreamError.unreachable("the upstream URL \(url) is not http(s)://host[:port]")
        }
        self.scheme = scheme
        self.host = host
        port = parsed.port ?? (scheme == "https" ? 443 : 80)
        let path = parsed.path
        pathPrefix = path.hasSuffix("/") ? String(path.dropLast()) : path
        let bracketed = host.contains(":") ? "[\(host)]" : host
        hostHeader = parsed.port.map { "\(bracketed):\($0)" } ?? bracketed
        self.timeout = timeout
        self.maxResponseBytes = maxResponseBytes
        self.group = group
        if scheme == "https" {
            var configuration = TLSConfiguration.makeClientConfiguration()
            if let caFile { configuration.trustRoots = .file(caFile) }
            configuration.applicationProtocols = ["http/1.1"]
            tls = try NIOSSLContext(configuration: configuration)
        } else {
            tls = nil
        }
    }

    public func send(_ request: UpstreamRequest) async throws -> UpstreamResponse {
        try await send(request, on: group.next()).get()
    }

    /// Answered on `eventLoop`, on a connection of that loop.
    public func send(_ request: UpstreamRequest, on eventLoop: any EventLoop) -> EventLoopFuture<UpstreamResponse> {
        let promise = eventLoop.makePromise(of: UpstreamResponse.self)
        if eventLoop.inEventLoop {
            start(request, promise: promise, on: eventLoop)
        } else {
            eventLoop.execute { self.start(request, promise: promise, on: eventLoop) }
        }
        return promise.futureResult
    }

    public func shutdown() async {
        let all = pools.withLockedValue { pools in
            defer { pools.removeAll() }
            return Array(pools.values)
        }
        for pool in all {
            try? await pool.loop.submit { pool.closeAll() }.get()
        }
    }

    // MARK: On the loop

    private func pool(for loop: any EventLoop) -> Pool {
        let id = ObjectIdentifier(loop)
        return pools.withLockedValue { pools in
            if let pool = pools[id] { return pool }
            let pool = Pool(loop: loop, timeout: timeout)
            pools[id] = pool
            return pool
        }
    }

    private func start(_ request: UpstreamRequest, promise: EventLoopPromise<UpstreamResponse>, on loop: any EventLoop) {
        let pool = pool(for: loop)
        let exchange = Exchange(head: head(for: request), body: request.body, promise: promise, maxResponseBytes: maxResponseBytes, pool: pool)
        pool.track(exchange)
        run(exchange, pool: pool, on: loop)
    }

    private func run(_ exchange: Exchange, pool: Pool, on loop: any EventLoop) {
        if let handler = pool.takeIdle() {
            handler.start(exchange)
            return
        }
        connect(on: loop, pool: pool).whenComplete { result in
            switch result {
            case .success(let handler):
                // Past its deadline while connecting: the connection is kept for the next one.
                if exchange.done { return pool.putBack(handler) }
                handler.start(exchange)
            case .failure(let error):
                exchange.fail(Self.upstreamError(error))
            }
        }
    }

    private func connect(on loop: any EventLoop, pool: Pool) -> EventLoopFuture<ExchangeHandler> {
        let (tls, host) = (self.tls, self.host)
        let handler = ExchangeHandler(pool: pool)
        return ClientBootstrap(group: loop)
            .connectTimeout(Self.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                do {
                    if let tls {
                        // SNI and the certificate's name check, except for an IP literal.
                        let name = (try? SocketAddress(ipAddress: host, port: 0)) == nil ? host : nil
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: name))
                    }
                    // NIO's client handlers without the outbound header validator (a twelfth of
                    // a forward's CPU): every field sent was parsed from a client by the
                    // server's llhttp, which refuses what the validator looks for, or made here.
                    try channel.pipeline.syncOperations.addHandlers([
                        HTTPRequestEncoder(), ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes)), handler,
                    ])
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
            .connect(host: host, port: port)
            .map { _ in handler }
    }

    private func head(for request: UpstreamRequest) -> HTTPRequestHead {
        var headers = request.headers
        headers.replaceOrAdd(name: "Host", value: hostHeader)
        if let body = request.body {
            headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        } else if request.method == .POST || request.method == .PUT || request.method == .PATCH {
            headers.replaceOrAdd(name: "Content-Length", value: "0")
        }
        return HTTPRequestHead(version: .http1_1, method: request.method, uri: pathPrefix + request.target, headers: headers)
    }

    /// Any failure as an `UpstreamError`, in the words the proxy has always used.
    static func upstreamError(_ error: any Error) -> UpstreamError {
        switch error {
        case let error as UpstreamError:
            return error
        case is NIOSSLError, is BoringSSLError:
            return .unreachable(describeTLS(error))
        case ChannelError.connectTimeout:
            return .unreachable("could not connect to the upstream in time")
        default:
            return .unreachable("could not reach the upstream: \(describe(error))")
        }
    }

    /// A TLS failure (NIOSSL's, or BoringSSL's own) in words, without BoringSSL's source paths.
    private static func describeTLS(_ error: any Error) -> String {
        if "\(error)".contains("CERTIFICATE_VERIFY_FAILED") {
            return "TLS handshake with the upstream failed: its certificate is not trusted (set upstream_ca_file for a private CA)"
        }
        if case NIOSSLError.handshakeFailed = error { return "TLS handshake with the upstream failed" }
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
        return String(describing: error)
    }

    // MARK: Pool and exchange (each confined to one loop)

    /// A loop's idle keep-alive connections, newest last (taken LIFO: the warmest first), and
    /// the exchanges in flight on it. Their timers are the pool's, not each one's: an
    /// exchange's deadline and an idle connection's end are checked by a sweep that runs only
    /// while there is something to check, instead of a timer scheduled and cancelled on the
    /// loop for every request, twice (5 % of a forward's CPU in perf, docs/BENCHMARKS.md).
    final class Pool: @unchecked Sendable {
        let loop: any EventLoop
        private var idle: [ExchangeHandler] = []
        /// In flight, in no order (an exchange knows its slot, so that leaving is O(1)).
        private var exchanges: [Exchange] = []
        private let timeout: TimeAmount
        /// How late past its deadline an exchange may be failed: a tenth of the timeout, at
        /// most 50 ms.
        private let sweepInterval: TimeAmount
        private var deadlineSweep: Scheduled<Void>?
        private var idleSweep: Scheduled<Void>?

        init(loop: any EventLoop, timeout: TimeAmount) {
            self.loop = loop
            self.timeout = timeout
            sweepInterval = .nanoseconds(max(1_000_000, min(timeout.nanoseconds / 10, 50_000_000)))
        }

        func takeIdle() -> ExchangeHandler? {
            while let handler = idle.popLast() {
                if handler.isUsable { return handler }
            }
            return nil
        }

        func putBack(_ handler: ExchangeHandler) {
            guard idle.count < NIOUpstream.maxIdlePerLoop else { return handler.close() }
            handler.idleSince = .now()
            idle.append(handler)
            if idleSweep == nil { scheduleIdleSweep() }
        }

        func remove(_ handler: ExchangeHandler) {
            idle.removeAll { $0 === handler }
        }

        func closeAll() {
            idleSweep?.cancel()
            idleSweep = nil
            let all = idle
            idle.removeAll()
            for handler in all { handler.close() }
        }

        /// The oldest idle connection (the first: the rest came back after it) is closed once
        /// it has been idle for `NIOUpstream.idleTimeout`, then the next one, when its turn comes.
        private func scheduleIdleSweep() {
            guard let oldest = idle.first else { return }
            idleSweep = loop.scheduleTask(deadline: oldest.idleSince + NIOUpstream.idleTimeout) { self.sweepIdle() }
        }

        private func sweepIdle() {
            idleSweep = nil
            let now = NIODeadline.now()
            while let oldest = idle.first, oldest.idleSince + NIOUpstream.idleTimeout <= now {
                idle.removeFirst()
                oldest.close()
            }
            scheduleIdleSweep()
        }

        func track(_ exchange: Exchange) {
            exchange.deadline = .now() + timeout
            exchange.slot = exchanges.count
            exchanges.append(exchange)
            if deadlineSweep == nil { deadlineSweep = loop.scheduleTask(in: sweepInterval) { self.sweepDeadlines() } }
        }

        func untrack(_ exchange: Exchange) {
            let slot = exchange.slot
            guard slot >= 0 else { return }
            exchange.slot = -1
            let last = exchanges.removeLast()
            if last !== exchange {
                exchanges[slot] = last
                last.slot = slot
            }
        }

        private func sweepDeadlines() {
            deadlineSweep = nil
            let now = NIODeadline.now()
            for exchange in exchanges.filter({ $0.deadline <= now }) { exchange.fail(.timeout) }
            if !exchanges.isEmpty { deadlineSweep = loop.scheduleTask(in: sweepInterval) { self.sweepDeadlines() } }
        }
    }

    /// One request and its answer.
    final class Exchange: @unchecked Sendable {
        let head: HTTPRequestHead
        let body: ByteBuffer?
        let promise: EventLoopPromise<UpstreamResponse>
        let maxResponseBytes: Int
        let pool: Pool
        /// When it fails with `.timeout` (`Pool`'s sweep), connect included.
        var deadline = NIODeadline.distantFuture
        /// Its place among the pool's exchanges in flight; -1 once it is done.
        var slot = -1
        var done = false
        /// The connection it is sent on, closed when the exchange fails (by its deadline, say).
        weak var connection: ExchangeHandler?

        init(head: HTTPRequestHead, body: ByteBuffer?, promise: EventLoopPromise<UpstreamResponse>, maxResponseBytes: Int, pool: Pool) {
            self.head = head
            self.body = body
            self.promise = promise
            self.maxResponseBytes = maxResponseBytes
            self.pool = pool
        }

        func succeed(_ response: UpstreamResponse) {
            guard !done else { return }
            done = true
            pool.untrack(self)
            promise.succeed(response)
        }

        func fail(_ error: UpstreamError) {
            guard !done else { return }
            done = true
            pool.untrack(self)
            connection?.close()
            connection = nil
            promise.fail(error)
        }
    }

    /// The last handler of an upstream connection: writes an exchange's request, reads its
    /// answer, then gives the connection back to its pool or closes it.
    final class ExchangeHandler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPClientResponsePart
        typealias OutboundOut = HTTPClientRequestPart

        private let pool: Pool
        private var context: ChannelHandlerContext?
        private var exchange: Exchange?
        private var status: HTTPResponseStatus = .ok
        private var headers = HTTPHeaders()
        private var body = ByteBuffer()
        private var keepAlive = false
        /// Since when it has been in its pool's idle list.
        var idleSince = NIODeadline.uptimeNanoseconds(0)
        private var closed = false
        /// The first error the connection met, for an exchange that comes after it.
        private var failure: UpstreamError?

        init(pool: Pool) { self.pool = pool }

        var isUsable: Bool { !closed && (context?.channel.isActive ?? false) }

        func handlerAdded(context: ChannelHandlerContext) { self.context = context }

        func start(_ exchange: Exchange) {
            guard let context, !exchange.done else { return }
            guard !closed else {
                // It failed (a TLS handshake, say) before the exchange came.
                return exchange.fail(failure ?? .unreachable("could not reach the upstream: the connection closed before the request was sent"))
            }
            self.exchange = exchange
            body = context.channel.allocator.buffer(capacity: 0)
            exchange.connection = self
            keepAlive = exchange.head.isKeepAlive
            context.write(wrapOutboundOut(.head(exchange.head)), promise: nil)
            if let requestBody = exchange.body, requestBody.readableBytes > 0 {
                context.write(wrapOutboundOut(.body(.byteBuffer(requestBody))), promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard let exchange else { return }
            switch unwrapInboundIn(data) {
            case .head(let head):
                status = head.status
                headers = head.headers
                keepAlive = keepAlive && head.isKeepAlive
            case .body(var part):
                guard body.readableBytes + part.readableBytes <= exchange.maxResponseBytes else {
                    finish(failing: .unreachable("upstream request failed: the response is larger than \(exchange.maxResponseBytes) bytes"))
                    return
                }
                body.writeBuffer(&part)
            case .end:
                self.exchange = nil
                exchange.connection = nil
                let response = UpstreamResponse(status: status, headers: headers, body: body)
                if keepAlive && !exchange.done {
                    pool.putBack(self)
                } else {
                    close()
                }
                exchange.succeed(response)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            closed = true
            pool.remove(self)
            guard let exchange else { return }
            self.exchange = nil
            exchange.fail(.unreachable("could not reach the upstream: the connection closed before the answer was complete"))
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            finish(failing: NIOUpstream.upstreamError(error))
        }

        private func finish(failing error: UpstreamError) {
            let exchange = self.exchange
            self.exchange = nil
            if failure == nil { failure = error }
            close()
            exchange?.fail(error)
        }

        func close() {
            guard !closed else { return }
            closed = true
            context?.close(promise: nil)
        }
    }
}
