import MixpeekAPI
import MixpeekHTTP
import NIOCore
import NIOHTTP1

/// The fake as an `HTTPResponder`: applies faults and holds, then answers from `FakeMixpeek`.
struct FakeResponder: HTTPResponder {
    let fake: FakeMixpeek

    func respond(to request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        if request.path == "/_fake/fault" {
            return .now(setFault(request.query ?? ""))
        }
        if request.path == "/_fake/history" {
            return .now(history(request))
        }
        let isAudit = request.path == FakeAuditTrail.path
        let operation: FakeOperation = if isAudit { .audit } else if case .route(let route) = UpstreamRouting(request) { FakeOperation(route) } else { .other }
        let (fault, gate) = fake.controls.admit(request, as: operation, on: eventLoop)
        let answer = { isAudit ? fake.auditTrail.answer(request) : fake.answer(request) }
        let response: HTTPResponse
        switch fault {
        case .status(let status):
            response = FakeMixpeek.error(status, "injected fault", type: "injected_fault")
        case .invalidJSON:
            response = HTTPResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: "{\"keys\": [ not json"))
        case .dropConnection:
            return .now(ConnectionFaultHandler.mark(HTTPResponse(status: .ok), .drop))
        case .truncatedBody:
            return .now(ConnectionFaultHandler.mark(answer(), .truncate))
        case .delay, nil:
            response = answer()
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

    /// `POST /_fake/fault?op=list&kind=status&value=503`: switches a fault from outside the
    /// process (soak and end-to-end scripts). `kind` is status, delay (ms), drop, json,
    /// truncate or off; without `op` it applies to every operation. `op=audit&kind=ratelimit&value=S`
    /// makes the next audit-log request answer 429 with `Retry-After: S`, once.
    private func setFault(_ query: Substring) -> HTTPResponse {
        var fields: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { fields[parts[0]] = parts[1] }
        }
        let operation = fields["op"].flatMap(FakeOperation.init(rawValue:))
        let value = fields["value"].flatMap(Int.init)
        let fault: FakeFault?
        switch fields["kind"] {
        case "status": fault = value.map { .status(HTTPResponseStatus(statusCode: $0)) }
        case "delay": fault = value.map { .delay(.milliseconds(Int64($0))) }
        case "drop": fault = .dropConnection
        case "json": fault = .invalidJSON
        case "truncate": fault = .truncatedBody
        case "off": fault = nil
        case "ratelimit" where operation == .audit:
            guard let value else { return FakeMixpeek.error(.badRequest, "ratelimit needs a numeric value", type: "bad_request") }
            fake.auditTrail.rateLimitOnce(retryAfter: value)
            return HTTPResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: #"{"success":true}"#))
        default: return FakeMixpeek.error(.badRequest, "kind must be status, delay, drop, json, truncate, off (or ratelimit with op=audit)", type: "bad_request")
        }
        if fault == nil && fields["kind"] != "off" {
            return FakeMixpeek.error(.badRequest, "status and delay need a numeric value", type: "bad_request")
        }
        fake.controls.setFault(fault, for: operation)
        return HTTPResponse(status: .ok, headers: ["content-type": "application/json"], body: ByteBuffer(string: #"{"success":true}"#))
    }

    /// `GET /_fake/history[?after=N]`: the mutations the fake applied, in the order it applied
    /// them (`index` from 1; only those after N when asked), each with its method, user, key and
    /// the status it answered, and how many list calls it answered per user (end-to-end scripts
    /// check what clients saw against it).
    private func history(_ request: HTTPRequest) -> HTTPResponse {
        guard request.method == .GET else {
            return FakeMixpeek.error(.methodNotAllowed, "Method Not Allowed", type: "method_not_allowed")
        }
        var after = 0
        for pair in (request.query ?? "").split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2, parts[0] == "after" {
                guard let value = Int(parts[1]), value >= 0 else {
                    return FakeMixpeek.error(.badRequest, "after must be a whole number", type: "bad_request")
                }
                after = value
            }
        }
        return FakeMixpeek.encoded(fake.controls.history(after: after))
    }

    func refusal(_ reason: HTTPRefusal) -> HTTPResponse {
        FakeMixpeek.error(reason.status, reason.message, type: "bad_request")
    }
}

/// The fake upstream on a real socket, its connections able to play the network's faults.
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
        let server = try await HTTPServer.start(
            host: host, port: port, responder: FakeResponder(fake: fake),
            connectionHandlers: { [ConnectionFaultHandler()] })
        return FakeUpstreamServer(fake: fake, server: server)
    }

    public func shutdown() async {
        fake.controls.reset()
        await server.shutdown(grace: .seconds(2))
    }
}
