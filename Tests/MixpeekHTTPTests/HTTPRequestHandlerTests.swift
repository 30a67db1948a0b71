import NIOCore
import NIOHTTP1
import Testing

@testable import MixpeekHTTP

/// What the connection handler took over from NIO's response encoder, pipelining handler and
/// quiescing: HTTP/1.1 as RFC 9110 and 9112 say, checked byte for byte on an embedded channel.
@Suite("HTTP/1.1 connection")
struct HTTPRequestHandlerTests {
    // MARK: Pipelining

    @Test("pipelined requests are answered in request order: a later one waits for a slow earlier one")
    func pipeliningOrder() throws {
        let connection = try TestConnection()
        connection.responder.hold("/slow")
        try connection.send("GET /slow HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\n\r\n")
        #expect(try connection.received() == "")
        #expect(connection.responder.requests.map(\.target) == ["/slow"], "the second request waits for the first answer")
        connection.responder.complete("/slow", with: .success(HTTPResponse(status: .accepted, body: ByteBuffer(string: "slow"))))
        #expect(try connection.received() == "HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\n\r\nslow" + helloResponse())
        #expect(connection.responder.requests.map(\.target) == ["/slow", "/fast"])
        #expect(connection.isOpen)
    }

    // MARK: HEAD, 1xx, 204, 304

    @Test("an answer to HEAD is the head a GET gets, without the body: the next answer on the connection reads right")
    func headHasNoBody() throws {
        let connection = try TestConnection()
        try connection.send("HEAD /_proxy/health HTTP/1.1\r\n\r\nGET /_proxy/health HTTP/1.1\r\n\r\n")
        #expect(try connection.received() == "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n" + helloResponse())
        #expect(connection.isOpen)
    }

    @Test("an error answer to HEAD (a 405) has no body either")
    func headErrorHasNoBody() throws {
        let connection = try TestConnection()
        connection.responder.answer = { request in
            request.method == .HEAD
                ? HTTPResponse(status: .methodNotAllowed, headers: ["Allow": "GET"], body: ByteBuffer(string: "nope"))
                : ScriptedResponder.hello
        }
        try connection.send("HEAD /v1/keys HTTP/1.1\r\n\r\nGET /v1/keys HTTP/1.1\r\n\r\n")
        #expect(try connection.received() == "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 4\r\n\r\n" + helloResponse())
    }

    @Test("a refusal of a HEAD request has no body")
    func headRefusalHasNoBody() throws {
        let connection = try TestConnection()
        try connection.send("HEAD / HTTP/1.1\r\nExpect: the-moon\r\n\r\n")
        #expect(try connection.received() == "HTTP/1.1 417 Expectation Failed\r\nContent-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\n\r\n")
        #expect(!connection.isOpen)
    }

    @Test("an answer to HEAD keeps the responder's Content-Length (a forwarded HEAD's) and adds none; with neither length nor body, none")
    func headKeepsGivenLength() throws {
        let connection = try TestConnection()
        connection.responder.answer = { request in
            switch request.path {
            case "/forwarded": HTTPResponse(status: .ok, headers: ["content-length": "1234", "X-Upstream": "1"])
            case "/lying": HTTPResponse(status: .ok, headers: ["content-length": "1234"], body: ByteBuffer(string: "abc"))
            default: HTTPResponse(status: .ok)
            }
        }
        try connection.send("HEAD /forwarded HTTP/1.1\r\n\r\nHEAD /empty HTTP/1.1\r\n\r\nGET /lying HTTP/1.1\r\n\r\n")
        #expect(try connection.received() == "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\nX-Upstream: 1\r\n\r\n"
            + "HTTP/1.1 200 OK\r\n\r\n"
            + "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "a GET's length is always its body's")
    }

    @Test("204 has neither body nor Content-Length; 304 no body and only the Content-Length it was given", arguments: [
        (204, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"),
        (304, "HTTP/1.1 304 Not Modified\r\nX-A: 1\r\ncontent-length: 9\r\n\r\n"),
    ])
    func bodylessStatuses(status: Int, expected: String) throws {
        let connection = try TestConnection()
        connection.responder.answer = { request in
            request.path == "/bodyless"
                ? HTTPResponse(status: HTTPResponseStatus(statusCode: status), headers: ["X-A": "1", "content-length": "9"], body: ByteBuffer(string: "some body"))
                : ScriptedResponder.hello
        }
        try connection.send("GET /bodyless HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        #expect(try connection.received() == expected + helloResponse())
    }

    @Test("the framing table: 1xx and 204 neither body nor length; HEAD and 304 no body; anything else its body's length")
    func framingTable() {
        typealias Framing = HTTPRequestHandler.Framing
        let body = ByteBuffer(string: "abc")
        let given: HTTPHeaders = ["Content-Length": "99"]
        let none = Framing(sendsBody: false, contentLength: nil, keepsGivenLength: false)
        for code: UInt in [100, 103, 204] {
            #expect(Framing(status: code, isHead: false, body: body, headers: given) == none, "\(code)")
            #expect(Framing(status: code, isHead: true, body: body, headers: given) == none, "HEAD \(code)")
        }
        let kept = Framing(sendsBody: false, contentLength: nil, keepsGivenLength: true)
        #expect(Framing(status: 304, isHead: false, body: body, headers: given) == kept)
        #expect(Framing(status: 304, isHead: true, body: body, headers: [:]) == kept)
        for code: UInt in [200, 201, 205, 302, 404, 503] {
            #expect(Framing(status: code, isHead: false, body: body, headers: given) == Framing(sendsBody: true, contentLength: 3, keepsGivenLength: false))
            #expect(Framing(status: code, isHead: true, body: body, headers: given) == kept)
            #expect(Framing(status: code, isHead: true, body: body, headers: [:]) == Framing(sendsBody: false, contentLength: 3, keepsGivenLength: false))
        }
    }

    // MARK: Expect

    @Test("Expect: 100-continue gets 100 Continue before the body is read, then the answer", arguments: ["100-continue", "100-Continue", " 100-continue "])
    func continueBeforeBody(expectation: String) throws {
        let connection = try TestConnection()
        try connection.send("POST /upload HTTP/1.1\r\nContent-Length: 5\r\nExpect:\(expectation)\r\n\r\n")
        #expect(try connection.received() == "HTTP/1.1 100 Continue\r\n\r\n")
        #expect(connection.responder.requests.isEmpty)
        try connection.send("12345")
        #expect(try connection.received() == helloResponse())
        #expect(connection.responder.requests.first?.body.map { String(buffer: $0) } == "12345")
        #expect(connection.isOpen)
    }

    @Test("Expect: 100-continue with a declared length over the limit gets 413 at once, never 100, and the connection closes")
    func continueRefusedWhenTooLarge() throws {
        var limits = ServerLimits()
        limits.maxBodyBytes = 10
        let connection = try TestConnection(limits: limits)
        try connection.send("POST /upload HTTP/1.1\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        let reply = try connection.received()
        #expect(reply.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"), "got \(reply)")
        #expect(!reply.contains("100 Continue"))
        #expect(!connection.isOpen)
        #expect(connection.responder.requests.isEmpty)
    }

    @Test("an expectation other than 100-continue gets 417, never reaches the responder, and the connection closes",
          arguments: ["the-moon", "100-continue, the-moon", "100-continue=1"])
    func unknownExpectation(expectation: String) throws {
        let connection = try TestConnection()
        try connection.send("POST /upload HTTP/1.1\r\nContent-Length: 2\r\nExpect: \(expectation)\r\n\r\n")
        #expect(try connection.received() == "HTTP/1.1 417 Expectation Failed\r\nContent-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\n\r\nrefused")
        #expect(!connection.isOpen)
        #expect(connection.responder.requests.isEmpty)
    }

    @Test("an HTTP/1.0 request's 100-continue is ignored (RFC 9110 §10.1.1)")
    func continueIgnoredForHTTP10() throws {
        let connection = try TestConnection()
        try connection.send("POST /upload HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nab")
        #expect(try connection.received() == helloResponse("HTTP/1.0", extra: "Connection: close\r\n"))
    }

    // MARK: Keep-alive and close

    @Test("HTTP/1.0: closed after the answer unless the client asks for keep-alive; then kept open, and said so")
    func http10KeepAlive() throws {
        let closing = try TestConnection()
        try closing.send("GET / HTTP/1.0\r\n\r\n")
        #expect(try closing.received() == helloResponse("HTTP/1.0", extra: "Connection: close\r\n"))
        #expect(!closing.isOpen)

        let kept = try TestConnection()
        try kept.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        let keptAnswer = helloResponse("HTTP/1.0", extra: "Connection: keep-alive\r\n")
        #expect(try kept.received() == keptAnswer + keptAnswer)
        #expect(kept.isOpen)
        try kept.send("GET / HTTP/1.0\r\n\r\n")
        #expect(try kept.received() == helloResponse("HTTP/1.0", extra: "Connection: close\r\n"), "each request asks anew")
        #expect(!kept.isOpen)
    }

    @Test("HTTP/1.1 stays open without a Connection field; Connection: close is answered with close, and nothing after it is read")
    func http11Close() throws {
        let connection = try TestConnection()
        try connection.send("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\nGET /c HTTP/1.1\r\n\r\n")
        #expect(try connection.received() == helloResponse() + helloResponse(extra: "Connection: close\r\n"))
        #expect(!connection.isOpen)
        #expect(connection.responder.requests.map(\.target) == ["/a", "/b"])
    }

    // MARK: Quiescing

    @Test("quiescing: an idle connection closes at once; one with an answer pending sends it with Connection: close, then closes, reading nothing more")
    func quiescing() throws {
        let idle = try TestConnection()
        idle.quiesce()
        #expect(!idle.isOpen)
        #expect(try idle.received() == "")

        let busy = try TestConnection()
        busy.responder.hold("/slow")
        try busy.send("GET /slow HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        busy.quiesce()
        #expect(busy.isOpen)
        busy.responder.complete("/slow", with: .success(ScriptedResponder.hello))
        #expect(try busy.received() == helloResponse(extra: "Connection: close\r\n"))
        #expect(!busy.isOpen)
        #expect(busy.responder.requests.map(\.target) == ["/slow"])
    }

    // MARK: Read timeout

    @Test("a connection is closed when no whole request arrives within the read timeout: idle, trickling, or idle after an answer")
    func readTimeout() throws {
        var limits = ServerLimits()
        limits.requestReadTimeout = .seconds(30)

        let idle = try TestConnection(limits: limits)
        idle.advanceTime(by: .seconds(29))
        #expect(idle.isOpen)
        idle.advanceTime(by: .seconds(2))
        #expect(!idle.isOpen)

        let trickling = try TestConnection(limits: limits)
        for piece in ["GET / HT", "TP/1.1\r\n", "Host: x\r\n"] {
            try trickling.send(piece)
            trickling.advanceTime(by: .seconds(12))
        }
        #expect(!trickling.isOpen, "bytes arriving do not reset the clock; a whole request does")
        #expect(trickling.responder.requests.isEmpty)

        let served = try TestConnection(limits: limits)
        served.advanceTime(by: .seconds(20))
        try served.send("GET / HTTP/1.1\r\n\r\n")
        #expect(try served.received() == helloResponse())
        served.advanceTime(by: .seconds(20))
        #expect(served.isOpen, "the clock starts again after each answer")
        served.advanceTime(by: .seconds(11))
        #expect(!served.isOpen)
    }

    @Test("a slow answer is not the client's delay: the connection waits for it past the read timeout")
    func slowAnswerNotTimedOut() throws {
        var limits = ServerLimits()
        limits.requestReadTimeout = .seconds(30)
        let connection = try TestConnection(limits: limits)
        connection.responder.hold("/slow")
        try connection.send("GET /slow HTTP/1.1\r\n\r\n")
        connection.advanceTime(by: .seconds(90))
        #expect(connection.isOpen)
        connection.responder.complete("/slow", with: .success(ScriptedResponder.hello))
        #expect(try connection.received() == helloResponse())
    }

    // MARK: Limits and errors

    static let limits = {
        var limits = ServerLimits()
        limits.maxBodyBytes = 10
        limits.maxHeaderCount = 5
        limits.maxHeaderBytes = 100
        return limits
    }()

    @Test("a request over a limit or badly framed gets the responder's refusal and a closed connection, and never reaches the responder", arguments: [
        ("POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", "413 Payload Too Large"),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n", "413 Payload Too Large"),
        ("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\n\r\n", "431 Request Header Fields Too Large"),
        ("GET / HTTP/1.1\r\nX-Big: \(String(repeating: "a", count: 100))\r\n\r\n", "431 Request Header Fields Too Large"),
        ("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "400 Bad Request"),
        ("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400 Bad Request"),
        ("GARBAGE\r\n\r\n", "400 Bad Request"),
    ])
    func refusals(request: String, status: String) throws {
        let connection = try TestConnection(limits: Self.limits)
        try connection.send(request)
        let reply = try connection.received()
        #expect(reply.hasPrefix("HTTP/1.1 \(status)\r\n"), "got \(reply)")
        #expect(reply.hasSuffix("Connection: close\r\n\r\nrefused"))
        #expect(!connection.isOpen)
        #expect(connection.responder.requests.isEmpty)
    }

    @Test("an answer that fails, or carries a field that would split the response, is replaced by the internal-error refusal, and the connection closes")
    func internalErrors() throws {
        struct Failure: Error {}
        let expected = "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\n\r\nrefused"

        let failed = try TestConnection()
        failed.responder.hold("/")
        try failed.send("GET / HTTP/1.1\r\n\r\n")
        failed.responder.complete("/", with: .failure(Failure()))
        #expect(try failed.received() == expected)
        #expect(!failed.isOpen)

        let unsendable = try TestConnection()
        unsendable.responder.answer = { _ in HTTPResponse(status: .ok, headers: ["X-Evil": "a\r\nSet-Cookie: x"]) }
        try unsendable.send("GET / HTTP/1.1\r\n\r\n")
        #expect(try unsendable.received() == expected)
        #expect(!unsendable.isOpen)
    }
}
