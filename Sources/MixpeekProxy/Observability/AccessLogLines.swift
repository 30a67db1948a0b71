import Foundation
import MixpeekAPI
import NIOCore
import NIOHTTP1
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What the request log says about one request. Never headers or bodies.
struct AccessLogEntry: Sendable {
    var method: HTTPMethod
    var route: String
    var status: UInt
    /// The cache result (`HIT`, `MISS`, ...), nil for calls the cache has no part in.
    var cache: String?
    var milliseconds: Double
    var requestID: String?
}

/// One event loop's request-log lines not yet handed to the writer, and how a line is
/// formatted: by hand into the buffer, with the date part of the time made once a second.
///
/// The lines are those the swift-log handlers wrote before (same fields, same order), with the
/// time in UTC to the millisecond:
///
///     2026-12-02T03:19:51.123Z info mixpeek-proxy: cache=HIT method=GET ms=0.12 request_id=… route=list status=200 [MixpeekProxy] request
///     {"cache":"HIT","label":"mixpeek-proxy","level":"info","message":"request","method":"GET","ms":"0.12","request_id":"…","route":"list","status":"200","time":"2026-12-02T03:19:51.123Z"}
struct AccessLogLines: Sendable {
    private(set) var bytes = ByteBuffer()
    private(set) var count = 0
    private let json: Bool
    private let capacity: Int
    private var second = Int.min
    /// `2026-12-02T03:19:51.` for `second`.
    private var secondText: [UInt8] = []

    init(format: ProxyConfig.LogFormat, capacity: Int) {
        json = format == .json
        self.capacity = capacity
    }

    /// Takes the lines, leaving none; nil when there are none.
    mutating func take() -> (lines: ByteBuffer, count: Int)? {
        guard count > 0 else { return nil }
        defer {
            bytes = ByteBuffer()
            count = 0
        }
        return (bytes, count)
    }

    mutating func append(_ entry: AccessLogEntry, at now: timespec) {
        if bytes.capacity == 0 { bytes.reserveCapacity(capacity) }
        let cache = entry.cache ?? "-"
        if json {
            bytes.writeStaticString(#"{"cache":""#)
            write(cache)
            bytes.writeStaticString(#"","label":"mixpeek-proxy","level":"info","message":"request","method":""#)
            write(entry.method.rawValue)
            bytes.writeStaticString(#"","ms":""#)
            writeMilliseconds(entry.milliseconds)
            bytes.writeStaticString(#"","request_id":""#)
            write(entry.requestID ?? "-")
            bytes.writeStaticString(#"","route":""#)
            write(entry.route)
            bytes.writeStaticString(#"","status":""#)
            writeDigits(Int(entry.status), width: 3)
            bytes.writeStaticString(#"","time":""#)
            writeTime(now)
            bytes.writeStaticString("\"}\n")
        } else {
            writeTime(now)
            bytes.writeStaticString(" info mixpeek-proxy: cache=")
            write(cache)
            bytes.writeStaticString(" method=")
            write(entry.method.rawValue)
            bytes.writeStaticString(" ms=")
            writeMilliseconds(entry.milliseconds)
            bytes.writeStaticString(" request_id=")
            write(entry.requestID ?? "-")
            bytes.writeStaticString(" route=")
            write(entry.route)
            bytes.writeStaticString(" status=")
            writeDigits(Int(entry.status), width: 3)
            bytes.writeStaticString(" [MixpeekProxy] request\n")
        }
        count += 1
    }

    /// `2026-12-02T03:19:51.123Z`, as `Timestamp` writes times.
    private mutating func writeTime(_ now: timespec) {
        let seconds = Int(now.tv_sec)
        if seconds != second {
            second = seconds
            secondText = Array(Timestamp.string(Date(timeIntervalSince1970: Double(seconds))).utf8.prefix(20))
        }
        bytes.writeBytes(secondText)
        writeDigits(Int(now.tv_nsec) / 1_000_000, width: 3)
        bytes.writeInteger(UInt8(ascii: "Z"))
    }

    /// Two decimals, as `%.2f` writes them.
    private mutating func writeMilliseconds(_ milliseconds: Double) {
        let hundredths = Int((max(milliseconds, 0) * 100).rounded())
        writeDigits(hundredths / 100, width: 1)
        bytes.writeInteger(UInt8(ascii: "."))
        writeDigits(hundredths % 100, width: 2)
    }

    /// `value` in decimal, zero-padded to `width` digits at least.
    private mutating func writeDigits(_ value: Int, width: Int) {
        if width > 1 || value >= 10 { writeDigits(value / 10, width: width - 1) }
        bytes.writeInteger(UInt8(ascii: "0") + UInt8(value % 10))
    }

    /// A value as is when it is plain (the usual case: routes, methods, cache results and the
    /// proxy's own request ids); otherwise escaped, so that a request id from a client or the
    /// upstream can neither end a JSON string nor split a text line into fields.
    private mutating func write(_ value: String) {
        if value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }) {
            bytes.writeString(value)
            return
        }
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                if json { bytes.writeInteger(UInt8(ascii: "\\")) }
                bytes.writeInteger(byte)
            case 0..<0x20, 0x7f:
                writeEscaped(byte)
            case UInt8(ascii: " ") where !json:
                writeEscaped(byte)
            default:
                bytes.writeInteger(byte)
            }
        }
    }

    /// `\u00XX` in JSON, `\xXX` in text.
    private mutating func writeEscaped(_ byte: UInt8) {
        bytes.writeStaticString(json ? "\\u00" : "\\x")
        bytes.writeString([byte].hex)
    }
}
