import Foundation
import MixpeekAPI
import MixpeekHTTP
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
    var cache: CacheResult?
    var milliseconds: Double
    var requestID: String?
    /// The W3C trace id the request carried or the proxy started; written only when known.
    var traceID: String? = nil
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
        let seconds = Int(now.tv_sec)
        if seconds != second {
            second = seconds
            secondText = Array(Timestamp.string(Date(timeIntervalSince1970: Double(seconds))).utf8.prefix(20))
        }
        let cache = entry.cache?.rawValue ?? "-"
        let method = entry.method.rawValue
        let requestID = entry.requestID ?? "-"
        // The line is written as one piece (`ByteWriter`); the room it needs is counted first:
        // the fixed parts, the time, the numbers, and each value escaped at worst (6 bytes a byte).
        let values = cache.utf8.count + method.utf8.count + requestID.utf8.count + entry.route.utf8.count
            + (entry.traceID.map { $0.utf8.count + 16 } ?? 0)
        let room = 192 + secondText.count + 3 * ByteWriter.maxDecimalDigits + 6 * values
        let json = json
        let secondText = secondText
        bytes.writeBytes(atMost: room) { line in
            if json {
                line.write(#"{"cache":""#)
                Self.write(cache, json: true, to: &line)
                line.write(#"","label":"mixpeek-proxy","level":"info","message":"request","method":""#)
                Self.write(method, json: true, to: &line)
                line.write(#"","ms":""#)
                Self.writeMilliseconds(entry.milliseconds, to: &line)
                line.write(#"","request_id":""#)
                Self.write(requestID, json: true, to: &line)
                line.write(#"","route":""#)
                Self.write(entry.route, json: true, to: &line)
                line.write(#"","status":""#)
                line.writeDecimal(Int(entry.status), minimumDigits: 3)
                line.write(#"","time":""#)
                Self.writeTime(now, secondText: secondText, to: &line)
                if let traceID = entry.traceID {
                    line.write(#"","trace_id":""#)
                    Self.write(traceID, json: true, to: &line)
                }
                line.write("\"}\n")
            } else {
                Self.writeTime(now, secondText: secondText, to: &line)
                line.write(" info mixpeek-proxy: cache=")
                Self.write(cache, json: false, to: &line)
                line.write(" method=")
                Self.write(method, json: false, to: &line)
                line.write(" ms=")
                Self.writeMilliseconds(entry.milliseconds, to: &line)
                line.write(" request_id=")
                Self.write(requestID, json: false, to: &line)
                line.write(" route=")
                Self.write(entry.route, json: false, to: &line)
                line.write(" status=")
                line.writeDecimal(Int(entry.status), minimumDigits: 3)
                if let traceID = entry.traceID {
                    line.write(" trace_id=")
                    Self.write(traceID, json: false, to: &line)
                }
                line.write(" [MixpeekProxy] request\n")
            }
        }
        count += 1
    }

    /// `2026-12-02T03:19:51.123Z`, as `Timestamp` writes times; `secondText` is the part up to
    /// the fraction, for `now`'s second.
    private static func writeTime(_ now: timespec, secondText: [UInt8], to line: inout ByteWriter) {
        line.write(secondText)
        line.writeDecimal(Int(now.tv_nsec) / 1_000_000, minimumDigits: 3)
        line.write(UInt8(ascii: "Z"))
    }

    /// Two decimals, as `%.2f` writes them.
    private static func writeMilliseconds(_ milliseconds: Double, to line: inout ByteWriter) {
        let hundredths = Int((max(milliseconds, 0) * 100).rounded())
        line.writeDecimal(hundredths / 100)
        line.write(UInt8(ascii: "."))
        line.writeDecimal(hundredths % 100, minimumDigits: 2)
    }

    /// A value as is when it is plain (the usual case: routes, methods, cache results and the
    /// proxy's own request ids); otherwise escaped, so that a request id from a client or the
    /// upstream can neither end a JSON string nor split a text line into fields.
    private static func write(_ value: String, json: Bool, to line: inout ByteWriter) {
        var value = value
        value.withUTF8 { bytes in
            var plain = true
            for byte in bytes where !(byte > 0x20 && byte < 0x7f && byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\")) {
                plain = false
                break
            }
            if plain { return line.write(bytes) }
            for byte in bytes {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                    if json { line.write(UInt8(ascii: "\\")) }
                    line.write(byte)
                case 0..<0x20, 0x7f:
                    writeEscaped(byte, json: json, to: &line)
                case UInt8(ascii: " ") where !json:
                    writeEscaped(byte, json: json, to: &line)
                default:
                    line.write(byte)
                }
            }
        }
    }

    /// `\u00XX` in JSON, `\xXX` in text.
    private static func writeEscaped(_ byte: UInt8, json: Bool, to line: inout ByteWriter) {
        line.write(json ? "\\u00" : "\\x")
        line.writeString([byte].hex)
    }
}
