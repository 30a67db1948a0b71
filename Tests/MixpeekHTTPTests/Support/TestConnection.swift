import NIOCore
import NIOEmbedded
import NIOHTTP1

@testable import MixpeekHTTP

/// A responder whose answers the test decides: by default `200 OK` with the text `hello`;
/// `hold` keeps a path's answer pending until the test completes it.
final class ScriptedResponder: HTTPResponder, @unchecked Sendable {
    // Only touched on the embedded event loop, which is the test's own thread.
    private(set) var requests: [HTTPRequest] = []
    var answer: (HTTPRequest) -> HTTPResponse = { _ in ScriptedResponder.hello }
    private var holding: [String: EventLoopPromise<HTTPResponse>] = [:]
    private var held: Set<String> = []

    static let hello = HTTPResponse(status: .ok, headers: ["Content-Type": "text/plain"], body: ByteBuffer(string: "hello"))

    /// Answers for `path` stay pending until `complete(path, with:)`.
    func hold(_ path: String) { held.insert(path) }

    func complete(_ path: String, with result: Result<HTTPResponse, any Error>) {
        holding.removeValue(forKey: path)?.completeWith(result)
    }

    func respond(to request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        requests.append(request)
        let path = String(request.path)
        guard held.contains(path) else { return .now(answer(request)) }
        let promise = eventLoop.makePromise(of: HTTPResponse.self)
        holding[path] = promise
        return .later(promise.futureResult)
    }

    func refusal(_ reason: HTTPRefusal) -> HTTPResponse {
        HTTPResponse(status: reason.status, headers: ["Content-Type": "text/plain"], body: ByteBuffer(string: "refused"))
    }
}

/// One server connection on an `EmbeddedChannel`, with the server's own pipeline: bytes in
/// as a client would send them, bytes out as the client would read them.
struct TestConnection {
    let channel = EmbeddedChannel()
    let responder: ScriptedResponder

    init(_ responder: ScriptedResponder = ScriptedResponder(), limits: ServerLimits = ServerLimits()) throws {
        self.responder = responder
        try HTTPServer.addHandlers(to: channel.pipeline.syncOperations, responder: responder, limits: limits)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
    }

    func send(_ text: String) throws {
        try channel.writeInbound(ByteBuffer(string: text))
    }

    /// Everything the server wrote since the last call.
    func received() throws -> String {
        channel.embeddedEventLoop.run()
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            text += String(buffer: buffer)
        }
        return text
    }

    var isOpen: Bool { channel.isActive }

    func advanceTime(by amount: TimeAmount) {
        channel.embeddedEventLoop.advanceTime(by: amount)
    }

    func quiesce() {
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
    }
}

/// The answer `ScriptedResponder.hello` as written on the wire, with `extra` header lines.
func helloResponse(_ version: String = "HTTP/1.1", extra: String = "") -> String {
    "\(version) 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\(extra)\r\nhello"
}
