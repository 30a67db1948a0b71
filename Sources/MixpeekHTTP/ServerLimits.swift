import NIOCore

/// The bounds a connection is held to; every one of them protects the proxy from a client.
public struct ServerLimits: Sendable {
    /// Largest request body accepted; larger ones get 413 before anything else happens.
    public var maxBodyBytes: Int = 1 << 20
    /// Largest header section (names and values) accepted.
    public var maxHeaderBytes: Int = 16 << 10
    /// Most header fields accepted.
    public var maxHeaderCount: Int = 100
    /// How long a client may take to send one whole request, counted from the connection's
    /// start or the end of the previous response. An idle keep-alive connection, or a client
    /// trickling bytes (slowloris), is closed when it runs out.
    public var requestReadTimeout: TimeAmount = .seconds(30)

    public init() {}
}
