import NIOCore
import NIOHTTP1

/// Reads one whole request at a time, hands it to the responder and writes the reply.
///
/// It sits behind NIO's `HTTPServerPipelineHandler`, which holds pipelined requests back until
/// the previous response has ended, so replies always leave in request order. It enforces the
/// `ServerLimits` and answers parser errors with the responder's own error shape.
final class HTTPRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        /// Waiting for a request head (a new connection, or after a response).
        case idle
        case readingBody(HTTPRequestHead, ByteBuffer?)
        /// The request is with the responder; nothing more is read until it answers.
        case responding
        /// A refusal was written; the connection closes once it is flushed.
        case closing
    }

    private let responder: any HTTPResponder
    private let limits: ServerLimits
    private var state = State.idle
    /// One timer per connection, re-armed only when it fires early: a keep-alive connection
    /// does not schedule and cancel a task for every request.
    private var readTimer: Scheduled<Void>?
    /// When the request being read (or awaited) must be complete.
    private var readDeadline = NIODeadline.distantFuture
    private var remoteAddress: SocketAddress?
    private var localAddress: SocketAddress?

    init(responder: any HTTPResponder, limits: ServerLimits) {
        self.responder = responder
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { connectionStarted(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        connectionStarted(context: context)
        context.fireChannelActive()
    }

    private func connectionStarted(context: ChannelHandlerContext) {
        remoteAddress = context.channel.remoteAddress
        localAddress = context.channel.localAddress
        armReadTimer(context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        readTimer?.cancel()
        readTimer = nil
        state = .closing
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (unwrapInboundIn(data), state) {
        case (.head(let head), .idle):
            if let refusal = check(head) {
                refuse(refusal, context: context)
                return
            }
            state = .readingBody(head, nil)
        case (.body(var chunk), .readingBody(let head, var body)):
            if (body?.readableBytes ?? 0) + chunk.readableBytes > limits.maxBodyBytes {
                refuse(.bodyTooLarge(limit: limits.maxBodyBytes), context: context)
                return
            }
            if body == nil {
                body = chunk
            } else {
                body!.writeBuffer(&chunk)
            }
            state = .readingBody(head, body)
        case (.end, .readingBody(let head, let body)):
            readDeadline = .distantFuture
            state = .responding
            let request = HTTPRequest(
                method: head.method, target: head.uri, version: head.version,
                headers: head.headers, body: body, remoteAddress: remoteAddress, localAddress: localAddress)
            let keepAlive = head.isKeepAlive
            switch responder.respond(to: request, on: context.eventLoop) {
            case .now(let response):
                write(response, keepAlive: keepAlive, version: head.version, context: context)
            case .later(let future):
                future.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
                    guard case .responding = self.state else { return }
                    switch result {
                    case .success(let response):
                        self.write(response, keepAlive: keepAlive, version: head.version, context: context)
                    case .failure(HTTPServerError.dropConnection):
                        self.state = .closing
                        context.close(promise: nil)
                    case .failure(HTTPServerError.truncate(let response)):
                        self.writeTruncated(response, context: context)
                    case .failure:
                        self.write(self.responder.refusal(.internalError), keepAlive: false, version: head.version, context: context)
                    }
                }
            }
        case (_, .closing):
            break
        default:
            refuse(.malformed("unexpected request part"), context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .idle, .readingBody:
            if error is HTTPParserError {
                refuse(.malformed(Self.describe(error)), context: context)
            } else {
                context.close(promise: nil)
            }
        case .responding, .closing:
            // A response is already under way: all that is left is to drop the connection.
            state = .closing
            context.close(promise: nil)
        }
    }

    private func check(_ head: HTTPRequestHead) -> HTTPRefusal? {
        if head.headers.count > limits.maxHeaderCount {
            return .tooManyHeaders(limit: limits.maxHeaderCount)
        }
        var headerBytes = 0
        for (name, value) in head.headers {
            headerBytes += name.utf8.count + value.utf8.count + 4
        }
        if headerBytes > limits.maxHeaderBytes {
            return .headersTooLarge(limit: limits.maxHeaderBytes)
        }
        let lengths = head.headers["content-length"]
        if lengths.count > 1 && Set(lengths).count > 1 {
            return .malformed("conflicting Content-Length headers")
        }
        if let length = lengths.first {
            guard let declared = Int(length), declared >= 0 else {
                return .malformed("invalid Content-Length")
            }
            if declared > limits.maxBodyBytes { return .bodyTooLarge(limit: limits.maxBodyBytes) }
        }
        return nil
    }

    private func refuse(_ refusal: HTTPRefusal, context: ChannelHandlerContext) {
        readTimer?.cancel()
        readTimer = nil
        state = .closing
        var response = responder.refusal(refusal)
        response.headers.replaceOrAdd(name: "connection", value: "close")
        response.headers.replaceOrAdd(name: "content-length", value: String(response.body.readableBytes))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: response.headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private func write(_ response: HTTPResponse, keepAlive: Bool, version: HTTPVersion, context: ChannelHandlerContext) {
        var headers = response.headers
        headers.replaceOrAdd(name: "content-length", value: String(response.body.readableBytes))
        if !keepAlive {
            headers.replaceOrAdd(name: "connection", value: "close")
        } else if version.major == 1 && version.minor == 0 {
            headers.replaceOrAdd(name: "connection", value: "keep-alive")
        }
        let head = HTTPResponseHead(version: version.major == 1 && version.minor == 0 ? .http1_0 : .http1_1, status: response.status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if response.body.readableBytes > 0 {
            context.write(wrapOutboundOut(.body(.byteBuffer(response.body))), promise: nil)
        }
        if keepAlive {
            state = .idle
            armReadTimer(context: context)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            state = .closing
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }

    private func writeTruncated(_ response: HTTPResponse, context: ChannelHandlerContext) {
        state = .closing
        var headers = response.headers
        headers.replaceOrAdd(name: "content-length", value: String(response.body.readableBytes))
        let half = response.body.getSlice(at: response.body.readerIndex, length: response.body.readableBytes / 2) ?? ByteBuffer()
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: response.status, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(half)))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    /// Starts the clock on reading the next request. The connection's one timer is scheduled
    /// only if none is pending; one that fires before the deadline schedules itself again.
    private func armReadTimer(context: ChannelHandlerContext) {
        readDeadline = .now() + limits.requestReadTimeout
        if readTimer == nil { scheduleReadTimer(context: context) }
    }

    private func scheduleReadTimer(context: ChannelHandlerContext) {
        readTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: readDeadline) {
            self.readTimer = nil
            switch self.state {
            case .idle, .readingBody:
                if NIODeadline.now() >= self.readDeadline {
                    self.state = .closing
                    context.close(promise: nil)
                } else {
                    self.scheduleReadTimer(context: context)
                }
            case .responding, .closing:
                // Re-armed with a fresh deadline once the response is written.
                break
            }
        }
    }

    private static func describe(_ error: any Error) -> String {
        guard let parserError = error as? HTTPParserError else { return "invalid HTTP" }
        switch parserError {
        case .invalidHeaderToken: return "invalid header"
        case .invalidURL: return "invalid request target"
        case .invalidMethod: return "invalid method"
        case .invalidVersion: return "invalid HTTP version"
        case .unexpectedContentLength, .invalidContentLength: return "invalid Content-Length"
        case .headerOverflow: return "header section too large"
        case .invalidChunkSize: return "invalid chunked body"
        default: return "invalid HTTP (\(parserError))"
        }
    }
}
