import MixpeekHTTP
import NIOCore

/// The fake's network faults: a connection dropped before the answer, an answer cut mid-body.
///
/// The HTTP server knows nothing of them. `FakeResponder` marks its response with the
/// `x-fake-fault` field; this handler, which the fake's server puts nearest the socket on every
/// connection, sees the mark in the response head going out, takes it out and plays the fault.
final class ConnectionFaultHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Fault: String {
        /// Close the connection; nothing of the response is sent.
        case drop
        /// Send the head and half the body, then close.
        case truncate
    }

    private static let field = "x-fake-fault"

    /// `response`, marked to be sent with `fault`.
    static func mark(_ response: HTTPResponse, _ fault: Fault) -> HTTPResponse {
        var marked = response
        marked.headers.replaceOrAdd(name: field, value: fault.rawValue)
        return marked
    }

    /// The head of a truncated response is out: the next write is its body.
    private var truncating = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        if truncating {
            truncating = false
            let half = buffer.getSlice(at: buffer.readerIndex, length: buffer.readableBytes / 2) ?? ByteBuffer()
            context.writeAndFlush(wrapOutboundOut(half)).assumeIsolated().whenComplete { _ in
                promise?.succeed()
                context.close(promise: nil)
            }
            return
        }
        guard let (fault, unmarked) = Self.fault(in: buffer) else {
            return context.write(data, promise: promise)
        }
        switch fault {
        case .drop:
            promise?.fail(ChannelError.ioOnClosedChannel)
            context.close(promise: nil)
        case .truncate:
            // The server writes a small body in the head's buffer: then the cut is made here.
            if let headBytes = Self.headLength(unmarked), headBytes < unmarked.readableBytes {
                let cut = unmarked.getSlice(at: unmarked.readerIndex, length: headBytes + (unmarked.readableBytes - headBytes) / 2)!
                context.writeAndFlush(wrapOutboundOut(cut)).assumeIsolated().whenComplete { _ in
                    promise?.succeed()
                    context.close(promise: nil)
                }
                return
            }
            truncating = true
            context.write(wrapOutboundOut(unmarked), promise: promise)
        }
    }

    func flush(context: ChannelHandlerContext) {
        guard truncating else { return context.flush() }
        // A head flushed without a body (an answer to HEAD): it is all there is to cut.
        truncating = false
        context.writeAndFlush(wrapOutboundOut(ByteBuffer())).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    /// The bytes of the head at the start of `buffer`, through the empty line that ends it.
    static func headLength(_ buffer: ByteBuffer) -> Int? {
        let bytes = buffer.readableBytesView
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        var index = bytes.startIndex
        while bytes.distance(from: index, to: bytes.endIndex) >= end.count {
            if bytes[index..<bytes.index(index, offsetBy: end.count)].elementsEqual(end) {
                return bytes.distance(from: bytes.startIndex, to: index) + end.count
            }
            index = bytes.index(after: index)
        }
        return nil
    }

    /// The fault a response head is marked with, and the head without the mark.
    static func fault(in head: ByteBuffer) -> (Fault, ByteBuffer)? {
        // Bodies are JSON: only a head starts with the status line.
        guard head.readableBytesView.starts(with: "HTTP/".utf8) else { return nil }
        let text = String(buffer: head)
        guard let mark = text.range(of: "\r\n\(field): "),
              let end = text[mark.upperBound...].range(of: "\r\n"),
              let fault = Fault(rawValue: String(text[mark.upperBound..<end.lowerBound])) else {
            return nil
        }
        return (fault, ByteBuffer(string: String(text[..<mark.lowerBound] + text[end.lowerBound...])))
    }
}
