import Foundation
import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where the request log's lines end up. Only the writer thread calls it.
public protocol AccessLogSink: Sendable {
    /// Writes whole lines; a throw loses them, and they are counted as dropped.
    func write(_ lines: ByteBuffer) throws
    /// Opens the destination again, so that later lines go to a new file after logrotate
    /// renamed the old one.
    func reopen() throws
}

/// A file descriptor written with blocking `write(2)`: standard error, or a file opened for
/// appending (and opened again by `reopen()`).
public final class FileSink: AccessLogSink, @unchecked Sendable {
    /// Nil for standard error.
    public let path: String?
    // Changed by `reopen()` only, which runs on the writer thread like `write`.
    private var descriptor: Int32

    public static func standardError() -> FileSink { FileSink(path: nil, descriptor: STDERR_FILENO) }

    /// Opens (creates, 0640) `path` for appending; throws a message naming the path and the reason.
    public init(path: String) throws {
        self.path = path
        descriptor = try Self.openForAppending(path)
    }

    private init(path: String?, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    deinit {
        if path != nil { _ = close(descriptor) }
    }

    private static func openForAppending(_ path: String) throws -> Int32 {
        let descriptor = path.withCString { open($0, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640) }
        guard descriptor >= 0 else { throw AccessLogError(message: "cannot open \(path): \(String(cString: strerror(errno)))") }
        return descriptor
    }

    public func write(_ lines: ByteBuffer) throws {
        try lines.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = systemWrite(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written >= 0 {
                    offset += written
                } else if errno == EINTR {
                    continue
                } else if errno == EAGAIN {
                    // A non-blocking standard error (a pipe someone else set so): wait for room.
                    var ready = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&ready, 1, 1000)
                } else {
                    throw AccessLogError(message: "cannot write to \(path ?? "standard error"): \(String(cString: strerror(errno)))")
                }
            }
        }
    }

    public func reopen() throws {
        guard let path else { return }
        let new = try Self.openForAppending(path)
        _ = close(descriptor)
        descriptor = new
    }
}

/// `write(2)`, out of reach of `FileSink.write` by name.
private func systemWrite(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    write(descriptor, bytes, count)
}

public struct AccessLogError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}

/// The one thread that writes the request log. Event loops hand it whole buffers of lines,
/// never a line at a time; it writes them with blocking `write(2)`. The queue between them is
/// bounded in bytes: a buffer that does not fit is dropped and its lines counted, so a slow
/// disk or a full pipe never makes a request wait. Its lock is taken once per buffer handed
/// over (every 32 KiB of lines or every second per loop), not per request.
final class AccessLogWriter: @unchecked Sendable {
    private enum Item {
        case lines(ByteBuffer, count: Int)
        case reopen
        case barrier(@Sendable () -> Void)
    }

    private let sink: any AccessLogSink
    private let capacity: Int
    private let logger: Logger
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var items: [Item] = []
    private var queuedBytes = 0
    private var dropped = 0
    private var written = 0
    private var closing = false
    private var failing = false

    /// `capacity`: the most bytes of lines waiting for the writer.
    init(sink: any AccessLogSink, capacity: Int, logger: Logger) {
        self.sink = sink
        self.capacity = capacity
        self.logger = logger
        let thread = Thread { [self] in run() }
        thread.name = "mixpeek-proxy-access-log"
        thread.start()
    }

    /// Lines lost: dropped because the queue was full, or failed to write.
    var droppedLines: Int { locked { dropped } }
    var writtenLines: Int { locked { written } }

    /// Queues `lines` (`count` of them) unless that would pass the bound (`force` ignores it:
    /// at shutdown no line is dropped). False when they were dropped.
    @discardableResult
    func submit(_ lines: ByteBuffer, count: Int, force: Bool = false) -> Bool {
        locked {
            guard !closing, force || queuedBytes + lines.readableBytes <= capacity else {
                dropped += count
                return false
            }
            queuedBytes += lines.readableBytes
            items.append(.lines(lines, count: count))
            condition.signal()
            return true
        }
    }

    /// Opens the sink again once the lines queued before are written.
    func reopen() {
        enqueue(.reopen)
    }

    /// Returns once every line queued before it is written.
    func drain() async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            if !enqueue(.barrier { done.resume() }) { done.resume() }
        }
    }

    /// Writes what is queued, then ends the thread; later lines are dropped and counted.
    func close() async {
        await drain()
        locked {
            closing = true
            condition.signal()
        }
    }

    @discardableResult
    private func enqueue(_ item: Item) -> Bool {
        locked {
            guard !closing else { return false }
            items.append(item)
            condition.signal()
            return true
        }
    }

    private func locked<T>(_ body: () -> T) -> T {
        condition.lock()
        defer { condition.unlock() }
        return body()
    }

    private func run() {
        while true {
            condition.lock()
            while items.isEmpty && !closing { condition.wait() }
            if items.isEmpty {
                condition.unlock()
                return
            }
            let batch = items
            items.removeAll(keepingCapacity: true)
            condition.unlock()
            for item in batch {
                switch item {
                case .lines(let lines, let count):
                    let ok: Bool
                    do {
                        try sink.write(lines)
                        ok = true
                    } catch {
                        ok = false
                        report(error)
                    }
                    locked {
                        queuedBytes -= lines.readableBytes
                        if ok { written += count } else { dropped += count }
                        if ok { failing = false }
                    }
                case .reopen:
                    do {
                        try sink.reopen()
                    } catch {
                        logger.error("request log: could not reopen; still writing to the file open before", metadata: ["error": "\(error)"])
                    }
                case .barrier(let done):
                    done()
                }
            }
        }
    }

    /// Says once, not per buffer, that lines are being lost.
    private func report(_ error: any Error) {
        let first = locked {
            defer { failing = true }
            return !failing
        }
        if first {
            logger.error("request log: lines are dropped (and counted in mixpeek_proxy_log_lines_dropped_total) until writing works again",
                         metadata: ["error": "\(error)"])
        }
    }
}
