import NIOCore
import NIOHTTP1

/// Reads one whole request at a time, hands it to the responder and writes the reply.
///
/// It sits right behind NIO's request decoder and writes responses as bytes itself: a cache
/// hit's response goes out as one head buffer and the stored body, without passing through
/// NIO's response encoder, header validator and pipelining handler (together a sixth of a
/// hit's CPU time). What those did is done here: parts of pipelined requests that arrive
/// while a response is pending wait in a queue (and reading stops until it drains), so
/// replies leave in request order; header fields are checked before they are written; a
/// quiescing server closes each connection after its current response. It enforces the
/// `ServerLimits` and answers parser errors with the responder's own error shape.
final class HTTPRequestHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

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
    /// Parts of pipelined requests read while a response is pending.
    private var queued = CircularBuffer<HTTPServerRequestPart>()
    private var draining = false
    /// A read the channel asked for while parts were queued; issued once they are handled.
    private var readHeld = false
    /// The server is shutting down: close after the current response.
    private var quiescing = false

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
        queued.removeAll()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else { return context.fireUserInboundEventTriggered(event) }
        quiescing = true
        if case .idle = state, queued.isEmpty {
            state = .closing
            context.close(promise: nil)
        }
    }

    func read(context: ChannelHandlerContext) {
        if queued.isEmpty {
            context.read()
        } else {
            readHeld = true
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if case .responding = state {
            queued.append(part)
        } else {
            handle(part, context: context)
        }
    }

    /// Handles queued parts until the queue is empty or a request is with the responder.
    private func drainQueue(context: ChannelHandlerContext) {
        guard !draining else { return }
        draining = true
        defer { draining = false }
        while !queued.isEmpty {
            switch state {
            case .idle, .readingBody: handle(queued.removeFirst(), context: context)
            case .responding: return
            case .closing: return queued.removeAll()
            }
        }
        if readHeld {
            readHeld = false
            context.read()
        }
    }

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch (part, state) {
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
            let keepAlive = head.isKeepAlive && !quiescing
            switch responder.respond(to: request, on: context.eventLoop) {
            case .now(let response):
                write(response, keepAlive: keepAlive, version: head.version, context: context)
            case .later(let future):
                future.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
                    guard case .responding = self.state else { return }
                    switch result {
                    case .success(let response):
                        self.write(response, keepAlive: keepAlive && !self.quiescing, version: head.version, context: context)
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
        queued.removeAll()
        let response = responder.refusal(refusal)
        writeHead(response, contentLength: response.body.readableBytes, connection: "close", version: .http1_1, context: context)
        context.writeAndFlush(wrapOutboundOut(response.body)).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    private func write(_ response: HTTPResponse, keepAlive: Bool, version: HTTPVersion, context: ChannelHandlerContext) {
        guard Self.canSend(response.headers) else {
            // A field that would split or corrupt the response is never written.
            return write(responder.refusal(.internalError), keepAlive: false, version: version, context: context)
        }
        let http10 = version.major == 1 && version.minor == 0
        let connection: String? = !keepAlive ? "close" : http10 ? "keep-alive" : nil
        writeHead(response, contentLength: response.body.readableBytes, connection: connection, version: version, context: context)
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(response.body), promise: nil)
            state = .idle
            armReadTimer(context: context)
            drainQueue(context: context)
        } else {
            state = .closing
            queued.removeAll()
            context.writeAndFlush(wrapOutboundOut(response.body)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }

    /// Writes the status line and header section; `Content-Length` and `Connection` are the
    /// server's own and replace any the response carries.
    private func writeHead(_ response: HTTPResponse, contentLength: Int, connection: String?, version: HTTPVersion,
                           context: ChannelHandlerContext) {
        var head = context.channel.allocator.buffer(capacity: 256)
        head.writeStaticString(version.major == 1 && version.minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        head.writeString(String(response.status.code))
        head.writeInteger(UInt8(ascii: " "))
        head.writeString(response.status.reasonPhrase)
        head.writeStaticString("\r\n")
        if let block = response.headerBlock {
            head.writeImmutableBuffer(block.bytes)
        }
        for (name, value) in response.headers
        where !Self.equalsIgnoringCase(name, "content-length") && !Self.equalsIgnoringCase(name, "connection") {
            head.writeString(name)
            head.writeStaticString(": ")
            head.writeString(value)
            head.writeStaticString("\r\n")
        }
        head.writeStaticString("content-length: ")
        head.writeString(String(contentLength))
        if let connection {
            head.writeStaticString("\r\nconnection: ")
            head.writeString(connection)
        }
        head.writeStaticString("\r\n\r\n")
        context.write(wrapOutboundOut(head), promise: nil)
    }

    /// Field names are tokens and values hold no CR, LF or NUL (RFC 9110 §5.1, §5.5).
    static func canSend(_ headers: HTTPHeaders) -> Bool {
        headers.allSatisfy { name, value in
            !name.isEmpty && name.utf8.allSatisfy(isTokenByte) && !value.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0x00 }
        }
    }

    /// `!#$%&'*+-.^_`|~`, digits and letters.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case 0..<64: (0x03FF_6CFA_0000_0000 as UInt64) >> byte & 1 == 1
        case 64..<128: (0x57FF_FFFF_C7FF_FFFE as UInt64) >> (byte - 64) & 1 == 1
        default: false
        }
    }

    private static func equalsIgnoringCase(_ name: String, _ lowercase: StaticString) -> Bool {
        guard name.utf8.count == lowercase.utf8CodeUnitCount else { return false }
        return lowercase.withUTF8Buffer { expected in
            zip(name.utf8, expected).allSatisfy { ($0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0) == $1 }
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
