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
    private var readTimer: Scheduled<Void>?
    private var remoteAddress: SocketAddress?

    init(responder: any HTTPResponder, limits: ServerLimits) {
        self.responder = responder
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        remoteAddress = context.channel.remoteAddress
        if context.channel.isActive { armReadTimer(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        remoteAddress = context.channel.remoteAddress
        armReadTimer(context: context)
        context.fireChannelActive()
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
            readTimer?.cancel()
            readTimer = nil
            state = .responding
            let request = HTTPRequest(
                method: head.method, target: head.uri, version: head.version,
                headers: head.headers, body: body, remoteAddress: remoteAddress, localAddress: context.channel.localAddress)
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

    private func armReadTimer(context: ChannelHandlerContext) {
        readTimer?.cancel()
        readTimer = context.eventLoop.assumeIsolated().scheduleTask(in: limits.requestReadTimeout) {
            switch self.state {
            case .idle, .readingBody:
                self.state = .closing
                context.close(promise: nil)
            case .responding, .closing:
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
