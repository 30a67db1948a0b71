import NIOCore
import NIOEmbedded
import Testing

@testable import MixpeekFake
@testable import MixpeekHTTP

/// The network faults the fake plays on its own connections (the server knows nothing of
/// them), byte for byte on an embedded channel with the fake server's pipeline.
@Suite("Connection faults")
struct ConnectionFaultTests {
    static let list = "GET /v1/organizations/users/alice%40example.com/api-keys HTTP/1.1\r\nAuthorization: Bearer sk_alpha\r\n\r\n"

    /// A connection to `fake` as its server builds one.
    func connection(to fake: FakeMixpeek) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try HTTPServer.addHandlers(
            to: channel.pipeline.syncOperations, responder: FakeResponder(fake: fake), limits: ServerLimits(),
            connectionHandlers: [ConnectionFaultHandler()])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        return channel
    }

    func received(_ channel: EmbeddedChannel) throws -> String {
        channel.embeddedEventLoop.run()
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            text += String(buffer: buffer)
        }
        return text
    }

    @Test("a truncatedBody fault sends the whole head, with the full Content-Length and without the mark, then half the body, and closes")
    func truncated() throws {
        let fake = FakeMixpeek()
        let whole = try received(try connection(to: fake).sending(Self.list))
        fake.controls.setFault(.truncatedBody, for: .list)
        let channel = try connection(to: fake).sending(Self.list)
        let cut = try received(channel)
        #expect(!channel.isActive)

        let wholeParts = whole.components(separatedBy: "\r\n\r\n")
        let cutParts = cut.components(separatedBy: "\r\n\r\n")
        try #require(wholeParts.count == 2 && cutParts.count == 2)
        #expect(cutParts[0] == wholeParts[0], "the same head, the full length announced")
        #expect(!cut.lowercased().contains("x-fake-fault"))
        // (The fake encodes objects in no fixed key order: lengths are what can be compared.)
        #expect(cutParts[1].utf8.count == wholeParts[1].utf8.count / 2)
    }

    @Test("a dropConnection fault closes the connection and sends nothing")
    func dropped() throws {
        let fake = FakeMixpeek()
        fake.controls.setFault(.dropConnection, for: .list)
        let channel = try connection(to: fake).sending(Self.list)
        #expect(try received(channel) == "")
        #expect(!channel.isActive)
    }

    @Test("without a fault the connection answers and stays open")
    func healthy() throws {
        let channel = try connection(to: FakeMixpeek()).sending(Self.list + Self.list)
        #expect(try received(channel).components(separatedBy: "HTTP/1.1 200 OK").count == 3)
        #expect(channel.isActive)
    }
}

extension EmbeddedChannel {
    func sending(_ text: String) throws -> EmbeddedChannel {
        try writeInbound(ByteBuffer(string: text))
        return self
    }
}
