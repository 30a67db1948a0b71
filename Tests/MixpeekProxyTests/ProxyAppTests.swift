import Foundation
import Logging
import MixpeekFake
import MixpeekProxy
import NIOCore
import NIOPosix
import Testing

@Suite("ProxyApp: built from what it is given")
struct ProxyAppTests {
    @Test("event loops given to the proxy serve its requests and are left running at its shutdown")
    func givenEventLoops() async throws {
        let server = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let fake = try await FakeUpstreamServer.start()
        var config = ProxyConfig()
        config.port = 0
        config.upstream = fake.url
        config.dataDir = TestProxy.makeDataDir()
        defer { try? FileManager.default.removeItem(atPath: config.dataDir) }
        let app = try await ProxyApp.start(
            config: config, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            accessLogSink: nil, eventLoops: .init(server: server))
        let raw = try await rawExchange(port: app.port, Array(
            "GET /v1/organizations/users/a/api-keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(TestProxy.token)\r\nConnection: close\r\n\r\n".utf8))
        #expect(raw.text.hasPrefix("HTTP/1.1 200 "))
        await app.shutdown()
        #expect(try await server.next().submit { 1 }.get() == 1, "the server group still runs")
        await fake.shutdown()
        try await server.shutdownGracefully()
    }
}
