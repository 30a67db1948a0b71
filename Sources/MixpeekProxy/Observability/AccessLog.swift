import Logging
import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The request log: one line per request, on by default, at about the cost of nginx's
/// buffered access log (`access_log … buffer= flush=`).
///
/// Each event loop appends its requests' lines to a buffer of its own: no lock, no syscall,
/// formatted by hand (`AccessLogLines`). A loop hands its buffer to the writer thread
/// (`AccessLogWriter`) when it holds `flushBytes`, after `flushInterval` at most, and at
/// shutdown. When the writer falls behind, whole buffers are dropped and their lines counted
/// (`mixpeek_proxy_log_lines_dropped_total`): requests never wait for the log.
public final class AccessLog: Sendable {
    public struct Settings: Sendable {
        public var format = ProxyConfig.LogFormat.text
        /// Lines reach the writer at least this often.
        public var flushInterval = TimeAmount.seconds(1)
        /// A loop hands its lines over as soon as they fill this many bytes.
        public var flushBytes = 32 << 10
        /// The most bytes of lines waiting for the writer; beyond, lines are dropped and counted.
        public var queueBytes = 8 << 20
        public init() {}
    }

    private struct Loop: Sendable {
        let eventLoop: any EventLoop
        let lines: NIOLoopBoundBox<AccessLogLines>
    }

    private let settings: Settings
    private let loops: [Loop]
    private let timers: [RepeatedTask]
    private let writer: AccessLogWriter

    /// `eventLoops`: the loops requests are answered on, each of which gets its own buffer.
    public init(sink: any AccessLogSink, eventLoops: [any EventLoop], settings: Settings = Settings(),
                logger: Logger = Logger(label: "mixpeek-proxy")) {
        self.settings = settings
        let writer = AccessLogWriter(sink: sink, capacity: settings.queueBytes, logger: logger)
        let loops = eventLoops.map { eventLoop in
            Loop(eventLoop: eventLoop, lines: .makeBoxSendingValue(
                AccessLogLines(format: settings.format, capacity: settings.flushBytes + 1024), eventLoop: eventLoop))
        }
        self.writer = writer
        self.loops = loops
        timers = loops.map { loop in
            loop.eventLoop.scheduleRepeatedTask(initialDelay: settings.flushInterval, delay: settings.flushInterval) { _ in
                Self.handOver(loop, to: writer)
            }
        }
    }

    /// Lines lost so far: dropped because the writer was behind, or failed to write.
    public var droppedLines: Int { writer.droppedLines }
    /// Lines written so far.
    public var writtenLines: Int { writer.writtenLines }

    /// Appends a request's line. On one of the loops given at start (as the proxy always
    /// is), it touches only that loop's buffer.
    func record(_ entry: AccessLogEntry, on eventLoop: any EventLoop) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if eventLoop.inEventLoop, let loop = loops.first(where: { $0.eventLoop === eventLoop }) {
            let full = loop.lines.withValue { (lines: inout AccessLogLines) -> (lines: ByteBuffer, count: Int)? in
                lines.append(entry, at: now)
                return lines.bytes.readableBytes >= settings.flushBytes ? lines.take() : nil
            }
            if let full { writer.submit(full.lines, count: full.count) }
            return
        }
        var lines = AccessLogLines(format: settings.format, capacity: 256)
        lines.append(entry, at: now)
        if let one = lines.take() { writer.submit(one.lines, count: one.count) }
    }

    /// Hands every loop's lines to the writer and returns once they are written.
    public func flush() async {
        for loop in loops {
            try? await loop.eventLoop.submit { Self.handOver(loop, to: self.writer) }.get()
        }
        await writer.drain()
    }

    /// Opens the file again (SIGHUP, after logrotate renamed it): the lines recorded before
    /// go to the old file, later ones to the new. Returns once it is reopened.
    public func reopen() async {
        for loop in loops {
            try? await loop.eventLoop.submit { Self.handOver(loop, to: self.writer) }.get()
        }
        writer.reopen()
        await writer.drain()
    }

    /// Writes every line still buffered, even past the queue's bound, and stops the writer.
    /// Call it before the event loops shut down.
    public func close() async {
        for timer in timers { timer.cancel() }
        for loop in loops {
            try? await loop.eventLoop.submit { Self.handOver(loop, to: self.writer, force: true) }.get()
        }
        await writer.close()
    }

    private static func handOver(_ loop: Loop, to writer: AccessLogWriter, force: Bool = false) {
        if let taken = loop.lines.withValue({ $0.take() }) {
            writer.submit(taken.lines, count: taken.count, force: force)
        }
    }
}
