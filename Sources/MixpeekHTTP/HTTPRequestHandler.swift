import NIOCore
import NIOHTTP1

/// Reads one whole request at a time, hands it to the responder and writes the reply.
///
/// It sits right behind NIO's request decoder and writes responses as bytes itself: a cache
/// hit's response goes out as one buffer (the head, written in one piece, then the stored
/// body copied after it when it is small; a larger body is a write of its own), without
/// passing through NIO's response encoder, header validator and pipelining handler (together
/// a sixth of a hit's CPU time). What those did is done here: parts of pipelined requests that
/// arrive while a response is pending wait in a queue (and reading stops until it drains), so
/// replies leave in request order; header fields are checked before they are written; a
/// quiescing server closes each connection after its current response. It enforces the
/// `ServerLimits` and answers parser errors with the responder's own error shape.
///
/// And HTTP/1.1 as RFC 9110 and 9112 say: no body in an answer to HEAD or in a 1xx, 204 or
/// 304, and no `Content-Length` on a 1xx or 204 (`Framing`); `Expect: 100-continue` answered
/// with `100 Continue` before the body is read, or with the final status when the request is
/// refused anyway; an HTTP/1.0 connection kept open only when the client asks for it.
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
    /// What came after the request being answered could not be parsed: answer it, then close
    /// (its client gets its answer; nothing after it is read).
    private var unreadableAfter = false

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
        if unreadableAfter { return }
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

    /// Switches on the part, then on the state (a switch over both would copy the state, a
    /// request head among it, for every part).
    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            switch state {
            case .idle: break
            case .closing: return
            case .readingBody, .responding: return unexpectedPart(context: context)
            }
            switch check(head) {
            case .refuse(let refusal):
                return refuse(refusal, to: head, context: context)
            case .read(let sendContinue):
                if sendContinue {
                    context.writeAndFlush(wrapOutboundOut(Self.continueResponse), promise: nil)
                }
            }
            state = .readingBody(head, nil)
        case .body(var chunk):
            guard case .readingBody(let head, var body) = state else { return unexpectedPart(context: context) }
            if (body?.readableBytes ?? 0) + chunk.readableBytes > limits.maxBodyBytes {
                refuse(.bodyTooLarge(limit: limits.maxBodyBytes), to: head, context: context)
                return
            }
            if body == nil {
                body = chunk
            } else {
                body!.writeBuffer(&chunk)
            }
            state = .readingBody(head, body)
        case .end:
            guard case .readingBody(let head, let body) = state else { return unexpectedPart(context: context) }
            readDeadline = .distantFuture
            state = .responding
            let request = HTTPRequest(
                method: head.method, target: head.uri, version: head.version,
                headers: head.headers, body: body, remoteAddress: remoteAddress, localAddress: localAddress)
            let keepAlive = head.isKeepAlive && !quiescing && !Self.hasFaultyFraming(head)
            switch responder.respond(to: request, on: context.eventLoop) {
            case .now(let response):
                write(response, to: head, keepAlive: keepAlive, context: context)
            case .later(let future):
                future.hop(to: context.eventLoop).assumeIsolated().whenComplete { result in
                    guard case .responding = self.state else { return }
                    switch result {
                    case .success(let response):
                        self.write(response, to: head, keepAlive: keepAlive && !self.quiescing && !self.unreadableAfter, context: context)
                    case .failure:
                        self.write(self.responder.refusal(.internalError), to: head, keepAlive: false, context: context)
                    }
                }
            }
        }
    }

    /// A part that does not fit the state: ignored on a closing connection, else refused.
    private func unexpectedPart(context: ChannelHandlerContext) {
        if case .closing = state { return }
        refuse(.malformed("unexpected request part"), to: headBeingRead, context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .idle, .readingBody:
            if error is HTTPParserError {
                refuse(.malformed(Self.describe(error)), to: headBeingRead, context: context)
            } else {
                context.close(promise: nil)
            }
        case .responding where error is HTTPParserError:
            // Bytes after a whole request that is being answered: the request keeps its answer
            // (a mutation may be under way upstream), then the connection closes.
            unreadableAfter = true
            queued.removeAll()
        case .responding, .closing:
            // A response is already under way: all that is left is to drop the connection.
            state = .closing
            context.close(promise: nil)
        }
    }

    private var headBeingRead: HTTPRequestHead? {
        if case .readingBody(let head, _) = state { head } else { nil }
    }

    /// What a request's head decides before its body is read.
    private enum HeadCheck {
        case refuse(HTTPRefusal)
        /// Read the body; first send `100 Continue` when the client waits for it.
        case read(sendContinue: Bool)
    }

    private static let continueResponse = ByteBuffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")

    /// The limits, the framing and the expectations of a request, in one pass over its fields.
    private func check(_ head: HTTPRequestHead) -> HeadCheck {
        if head.headers.count > limits.maxHeaderCount {
            return .refuse(.tooManyHeaders(limit: limits.maxHeaderCount))
        }
        var headerBytes = 0
        var length: String?
        var conflictingLengths = false
        var expectsContinue = false
        var unknownExpectation = false
        var hosts = 0
        var authorizations = 0
        for (name, value) in head.headers {
            headerBytes += name.utf8.count + value.utf8.count + 4
            // The length of a name rules out nearly every field before its bytes are compared.
            switch name.utf8.count {
            case 4 where Self.equalsIgnoringCase(name.utf8, "host"):
                hosts += 1
            case 13 where Self.equalsIgnoringCase(name.utf8, "authorization"):
                authorizations += 1
            case 6 where Self.equalsIgnoringCase(name.utf8, "expect"):
                switch Self.expectation(value) {
                case .none: break
                case .continue: expectsContinue = true
                case .unknown: unknownExpectation = true
                }
            case 14 where Self.equalsIgnoringCase(name.utf8, "content-length"):
                if let length, length != value { conflictingLengths = true }
                length = value
            default:
                break
            }
        }
        if headerBytes > limits.maxHeaderBytes {
            return .refuse(.headersTooLarge(limit: limits.maxHeaderBytes))
        }
        if conflictingLengths {
            return .refuse(.malformed("conflicting Content-Length headers"))
        }
        // Neither is a list field (RFC 9110 §7.2, §11.6.2): with two, whoever reads the first and
        // whoever reads the last would see two hosts, or two credentials (a list cached under
        // one and authorized with the other). RFC 9112 §3.2 says so for Host.
        if hosts > 1 {
            return .refuse(.malformed("more than one Host field"))
        }
        if authorizations > 1 {
            return .refuse(.malformed("more than one Authorization field"))
        }
        if let length {
            guard let declared = Int(length), declared >= 0 else {
                return .refuse(.malformed("invalid Content-Length"))
            }
            // Refused before the body is read: a client waiting for 100 Continue gets 413 instead.
            if declared > limits.maxBodyBytes { return .refuse(.bodyTooLarge(limit: limits.maxBodyBytes)) }
        }
        if unknownExpectation {
            return .refuse(.expectationFailed)
        }
        // RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored.
        return .read(sendContinue: expectsContinue && !Self.isHTTP10(head.version))
    }

    private enum Expectation { case none, `continue`, unknown }

    /// What an `Expect` field asks for: `100-continue` is the only expectation there is
    /// (RFC 9110 §10.1.1); anything else is one this server cannot meet.
    private static func expectation(_ value: String) -> Expectation {
        var found = Expectation.none
        for member in value.utf8.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: true) {
            let isBlank = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
            guard let first = member.firstIndex(where: { !isBlank($0) }), let last = member.lastIndex(where: { !isBlank($0) }) else {
                continue
            }
            guard equalsIgnoringCase(member[first...last], "100-continue") else { return .unknown }
            found = .continue
        }
        return found
    }

    private func refuse(_ refusal: HTTPRefusal, to head: HTTPRequestHead?, context: ChannelHandlerContext) {
        readTimer?.cancel()
        readTimer = nil
        send(responder.refusal(refusal), isHead: head?.method == .HEAD, version: .http1_1, connection: .close, context: context)
    }

    private func write(_ response: HTTPResponse, to head: HTTPRequestHead, keepAlive: Bool, context: ChannelHandlerContext) {
        guard Self.canSend(response.headers) else {
            // A field that would split or corrupt the response is never written.
            return write(responder.refusal(.internalError), to: head, keepAlive: false, context: context)
        }
        let connection: ConnectionField = !keepAlive ? .close : Self.isHTTP10(head.version) ? .keepAlive : .none
        send(response, isHead: head.method == .HEAD, version: head.version, connection: connection, context: context)
        if keepAlive {
            state = .idle
            armReadTimer(context: context)
            drainQueue(context: context)
        }
    }

    /// The `Connection` field the server writes: HTTP/1.1 connections stay open unless it says
    /// `close`; an HTTP/1.0 connection stays open only when it says `keep-alive`.
    private enum ConnectionField { case none, keepAlive, close }

    /// Writes the status line, the header section and, when the response has one (`Framing`),
    /// the body; with `.close`, closes the connection once they are out. `Content-Length` and
    /// `Connection` are the server's own and replace any the response carries, but for the
    /// responder's `Content-Length` in an answer without a body.
    private func send(_ response: HTTPResponse, isHead: Bool, version: HTTPVersion, connection: ConnectionField,
                      context: ChannelHandlerContext) {
        let code = response.status.code
        let framing = Framing(status: code, isHead: isHead, body: response.body, headers: response.headers)
        let reason = response.status.reasonPhrase
        let isHTTP10 = Self.isHTTP10(version)
        // A small body goes in the head's buffer: copying a few KiB costs less than another
        // write through the pipeline and another iovec for the socket.
        let bodyWithHead = framing.sendsBody && response.body.readableBytes <= Self.bodyBytesWrittenWithHead
        // The head is written as one piece (`ByteWriter`): the room it needs is counted first.
        var room = "HTTP/1.1 ".utf8.count + ByteWriter.maxDecimalDigits + 1 + reason.utf8.count + 2
            + (response.headerBlock?.bytes.readableBytes ?? 0)
            + "Content-Length: ".utf8.count + ByteWriter.maxDecimalDigits + 2 + "Connection: keep-alive\r\n".utf8.count + 2
            + (bodyWithHead ? response.body.readableBytes : 0)
        for (name, value) in response.headers {
            room += name.utf8.count + value.utf8.count + 4
        }
        var head = context.channel.allocator.buffer(capacity: room)
        head.writeBytes(atMost: room) { head in
            head.write(isHTTP10 ? "HTTP/1.0 " : "HTTP/1.1 ")
            head.writeDecimal(Int(code))
            head.write(UInt8(ascii: " "))
            head.writeString(reason)
            head.write("\r\n")
            if let block = response.headerBlock {
                head.write(block.bytes)
            }
            for (name, value) in response.headers
            where (framing.keepsGivenLength || !Self.equalsIgnoringCase(name.utf8, "content-length"))
                && !Self.equalsIgnoringCase(name.utf8, "connection") {
                head.writeString(name)
                head.write(": ")
                head.writeString(value)
                head.write("\r\n")
            }
            if let length = framing.contentLength {
                head.write("Content-Length: ")
                head.writeDecimal(length)
                head.write("\r\n")
            }
            switch connection {
            case .none: break
            case .keepAlive: head.write("Connection: keep-alive\r\n")
            case .close: head.write("Connection: close\r\n")
            }
            head.write("\r\n")
            if bodyWithHead {
                head.write(response.body)
            }
        }

        if case .close = connection {
            state = .closing
            queued.removeAll()
        }
        let last: ByteBuffer
        if framing.sendsBody && !bodyWithHead {
            context.write(wrapOutboundOut(head), promise: nil)
            last = response.body
        } else {
            last = head
        }
        if case .close = connection {
            context.writeAndFlush(wrapOutboundOut(last)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        } else {
            context.writeAndFlush(wrapOutboundOut(last), promise: nil)
        }
    }

    /// Bodies up to this size are copied into the head's buffer and written with it.
    static let bodyBytesWrittenWithHead = 8 << 10

    /// How a response's body is delimited (RFC 9110 §6.4.1, §8.6, §9.3.2; RFC 9112 §6.3).
    struct Framing: Equatable {
        /// The body follows the head.
        var sendsBody: Bool
        /// The `Content-Length` the server writes, if any.
        var contentLength: Int?
        /// The response's own `Content-Length` is written as given: in an answer to HEAD or in
        /// a 304 it states the representation's length, not the bytes that follow (there are none).
        var keepsGivenLength: Bool

        init(status code: UInt, isHead: Bool, body: ByteBuffer, headers: HTTPHeaders) {
            switch code {
            case 200..<204, 205..<304, 305...:
                if isHead {
                    // A HEAD answer says what a GET's would: the responder's length, or its body's.
                    let given = headers.contains(name: "content-length")
                    self.init(sendsBody: false, contentLength: given || body.readableBytes == 0 ? nil : body.readableBytes,
                              keepsGivenLength: given)
                } else {
                    self.init(sendsBody: true, contentLength: body.readableBytes, keepsGivenLength: false)
                }
            case 304:
                self.init(sendsBody: false, contentLength: nil, keepsGivenLength: true)
            default:
                // 1xx and 204: neither content nor a Content-Length.
                self.init(sendsBody: false, contentLength: nil, keepsGivenLength: false)
            }
        }

        init(sendsBody: Bool, contentLength: Int?, keepsGivenLength: Bool) {
            self.sendsBody = sendsBody
            self.contentLength = contentLength
            self.keepsGivenLength = keepsGivenLength
        }
    }

    /// Field names are tokens and values hold no CR, LF or NUL (RFC 9110 §5.1, §5.5).
    static func canSend(_ headers: HTTPHeaders) -> Bool {
        headers.allSatisfy { name, value in isToken(name) && isFieldValue(value) }
    }

    private static func isToken(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { bytes in
            guard !bytes.isEmpty else { return false }
            for byte in bytes where !isTokenByte(byte) { return false }
            return true
        }
    }

    private static func isFieldValue(_ value: String) -> Bool {
        var value = value
        return value.withUTF8 { bytes in
            for byte in bytes where byte == 0x0D || byte == 0x0A || byte == 0x00 { return false }
            return true
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

    private static func equalsIgnoringCase(_ bytes: some Collection<UInt8>, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        return lowercase.withUTF8Buffer { expected in
            zip(bytes, expected).allSatisfy { ($0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0) == $1 }
        }
    }

    /// An HTTP/1.0 request with `Transfer-Encoding`: RFC 9112 §6.1 says to treat its framing as
    /// faulty (a 1.0 intermediary may have read the body otherwise) and close after answering.
    private static func hasFaultyFraming(_ head: HTTPRequestHead) -> Bool {
        isHTTP10(head.version) && head.headers.contains(name: "transfer-encoding")
    }

    private static func isHTTP10(_ version: HTTPVersion) -> Bool {
        version.major == 1 && version.minor == 0
    }

    /// Starts the clock on reading the next request. The connection's one timer is scheduled
    /// only if none is pending; one that fires before the deadline schedules itself again.
    /// Time is the event loop's, so that tests on an embedded loop can advance it.
    private func armReadTimer(context: ChannelHandlerContext) {
        readDeadline = context.eventLoop.now + limits.requestReadTimeout
        if readTimer == nil { scheduleReadTimer(context: context) }
    }

    private func scheduleReadTimer(context: ChannelHandlerContext) {
        readTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: readDeadline) {
            self.readTimer = nil
            switch self.state {
            case .idle, .readingBody:
                if context.eventLoop.now >= self.readDeadline {
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
