import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOExtras
import NIOHTTP1
import NIOPosix

/// An HTTP/1.1 server on a real socket: NIO's request decoder and our `HTTPRequestHandler`
/// in front of one `HTTPResponder`.
public final class HTTPServer: Sendable {
    public let host: String
    private let group: any EventLoopGroup
    private let channel: any Channel
    /// Let go of once shut down: its deinit fails a promise on one of `group`'s loops, so it
    /// must go before they do ("Cannot schedule tasks on an EventLoop that has already shut down").
    private let quiesce: NIOLockedValueBox<ServerQuiescingHelper?>

    /// The port the server listens on (the chosen one when started with port 0).
    public var port: Int { channel.localAddress?.port ?? 0 }

    private init(host: String, group: any EventLoopGroup, channel: any Channel, quiesce: ServerQuiescingHelper) {
        self.host = host
        self.group = group
        self.channel = channel
        self.quiesce = NIOLockedValueBox(quiesce)
    }

    /// - Parameter connectionHandlers: made for each connection and put nearest the socket, in
    ///   front of the server's own (the fake upstream plays a broken network with them).
    public static func start(
        host: String, port: Int, responder: any HTTPResponder, limits: ServerLimits = ServerLimits(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        connectionHandlers: @escaping @Sendable () -> [any ChannelHandler] = { [] }
    ) async throws -> HTTPServer {
        try resolveHandlerTypes(responder: responder, limits: limits, connectionHandlers: connectionHandlers())
        let quiesce = ServerQuiescingHelper(group: group)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try addHandlers(
                        to: channel.pipeline.syncOperations, responder: responder, limits: limits,
                        connectionHandlers: connectionHandlers())
                }
            }
            .bind(host: host, port: port)
            .get()
        return HTTPServer(host: host, group: group, channel: channel, quiesce: quiesce)
    }

    /// One connection's handlers: `connectionHandlers`, NIO's request decoder only, then
    /// `HTTPRequestHandler`, which orders pipelined requests and writes responses itself.
    static func addHandlers(to pipeline: ChannelPipeline.SynchronousOperations, responder: any HTTPResponder,
                            limits: ServerLimits, connectionHandlers: [any ChannelHandler] = []) throws {
        try pipeline.addHandlers(connectionHandlers)
        try pipeline.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
        try pipeline.addHandler(HTTPRequestHandler(responder: responder, limits: limits))
    }

    /// Builds one connection's pipeline on an unconnected in-memory channel, on this thread,
    /// before the first connection: every type the handlers need is then resolved once, here,
    /// not by two event loops at once (the fake upstream crashed once inside the runtime's
    /// `swift_getTypeByMangledName`, called from `addHandlers`, under a burst of first
    /// connections on two loops; see the note on it in docs/OPERATIONS.md).
    static func resolveHandlerTypes(responder: any HTTPResponder, limits: ServerLimits, connectionHandlers: [any ChannelHandler]) throws {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        try addHandlers(to: channel.pipeline.syncOperations, responder: responder, limits: limits, connectionHandlers: connectionHandlers)
    }

    /// Stops accepting connections, lets requests in flight finish (each connection closes
    /// after its current response), and returns when every connection is closed or after
    /// `grace`, whichever is first.
    public func shutdown(grace: TimeAmount = .seconds(10)) async {
        guard let helper = quiesce.withLockedValue({ $0 }) else { return }
        let promise = channel.eventLoop.makePromise(of: Void.self)
        helper.initiateShutdown(promise: promise)
        let deadline = channel.eventLoop.scheduleTask(in: grace) {
            promise.succeed()
        }
        try? await promise.futureResult.get()
        deadline.cancel()
        quiesce.withLockedValue { $0 = nil }
    }
}
