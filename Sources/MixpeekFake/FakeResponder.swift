import MixpeekAPI
import MixpeekHTTP
import NIOCore
import NIOHTTP1

/// The fake as an `HTTPResponder`: applies faults and holds, then answers from `FakeMixpeek`.
struct FakeResponder: HTTPResponder {
    let fake: FakeMixpeek

    func respond(to request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        let operation = FakeOperation(Route(method: request.method, target: request.target))
        let (fault, gate) = fake.controls.admit(request, as: operation, on: eventLoop)
        let response: HTTPResponse
        switch fault {
        case .status(let status):
            response = FakeMixpeek.error(status, "injected fault", type: "injected_fault")
        case .invalidJSON:
            response = HTTPResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: "{\"keys\": [ not json"))
        case .dropConnection:
            return .later(eventLoop.makeFailedFuture(HTTPServerError.dropConnection))
        case .delay, nil:
            response = fake.answer(request)
        }
        switch (fault, gate) {
        case (.delay(let amount), _):
            let ready = gate ?? eventLoop.makeSucceededVoidFuture()
            return .later(ready.flatMap { eventLoop.scheduleTask(in: amount) { response }.futureResult })
        case (_, let gate?):
            return .later(gate.map { response })
        default:
            return .now(response)
        }
    }

    func refusal(_ reason: HTTPRefusal) -> HTTPResponse {
        FakeMixpeek.error(reason.status, reason.message, type: "bad_request")
    }
}

/// The fake upstream on a real socket.
public final class FakeUpstreamServer: Sendable {
    public let fake: FakeMixpeek
    public let server: HTTPServer

    public var controls: FakeControls { fake.controls }
    public var port: Int { server.port }
    /// `http://host:port`, to use as the proxy's upstream.
    public var url: String { "http://\(server.host):\(server.port)" }

    private init(fake: FakeMixpeek, server: HTTPServer) {
        self.fake = fake
        self.server = server
    }

    public static func start(host: String = "127.0.0.1", port: Int = 0, fake: FakeMixpeek = FakeMixpeek()) async throws -> FakeUpstreamServer {
        let server = try await HTTPServer.start(host: host, port: port, responder: FakeResponder(fake: fake))
        return FakeUpstreamServer(fake: fake, server: server)
    }

    public func shutdown() async {
        fake.controls.reset()
        await server.shutdown(grace: .seconds(2))
    }
}
