import MixpeekAPI
import NIOHTTP1

/// A request's W3C Trace Context (`traceparent`, `tracestate`): the client's when it sent a
/// valid one, else one the proxy starts, so that a mutation can be followed from a client's
/// trace to its request-log line and its audit record by the trace id.
///
/// The proxy is not a tracer: it forwards a valid `traceparent` as it came (no span of its
/// own), and the trace id is all it keeps.
struct TraceContext: Sendable, Equatable {
    /// The `traceparent` sent upstream.
    let traceparent: String
    /// The client sent it (with its `tracestate`, if any): both are forwarded as they came.
    let fromClient: Bool

    /// The 32 lowercase hex digits that name the trace.
    var traceID: String {
        let start = traceparent.utf8.index(traceparent.utf8.startIndex, offsetBy: 3)
        let end = traceparent.utf8.index(start, offsetBy: 32)
        return String(traceparent[start..<end])
    }

    /// The client's context when its `traceparent` is valid (W3C Trace Context §3.2: one
    /// field, `version-traceid-parentid-flags` in lowercase hex, neither id all zeros, version
    /// `ff` invalid, a later version read by its first four parts); nil otherwise.
    init?(_ headers: HTTPHeaders) {
        // Looked for without making an array: most requests (and hits) carry none.
        guard let field = headers.first(name: "traceparent"), Self.isValid(field), headers["traceparent"].count == 1 else { return nil }
        traceparent = field
        fromClient = true
    }

    /// A new trace: random ids, not sampled.
    static func started() -> TraceContext {
        var generator = SystemRandomNumberGenerator()
        var traceID = [UInt8](repeating: 0, count: 16)
        var parentID = [UInt8](repeating: 0, count: 8)
        repeat {
            for index in traceID.indices { traceID[index] = generator.next() }
        } while traceID.allSatisfy { $0 == 0 }
        repeat {
            for index in parentID.indices { parentID[index] = generator.next() }
        } while parentID.allSatisfy { $0 == 0 }
        return TraceContext(traceparent: "00-\(traceID.hex)-\(parentID.hex)-00", fromClient: false)
    }

    private init(traceparent: String, fromClient: Bool) {
        self.traceparent = traceparent
        self.fromClient = fromClient
    }

    /// The request's fields for the upstream: the client's valid context as it came, or this
    /// one in place of an invalid or missing `traceparent` (and without its `tracestate`,
    /// which W3C Trace Context says to drop with an invalid parent).
    func apply(to headers: inout HTTPHeaders) {
        guard !fromClient else { return }
        headers.remove(name: "traceparent")
        headers.remove(name: "tracestate")
        headers.add(name: "traceparent", value: traceparent)
    }

    static func isValid(_ value: String) -> Bool {
        let bytes = Array(value.utf8)
        guard bytes.count >= 55, bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-") else {
            return false
        }
        func isHex(_ range: Range<Int>) -> Bool {
            bytes[range].allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
        }
        func isZero(_ range: Range<Int>) -> Bool { bytes[range].allSatisfy { $0 == UInt8(ascii: "0") } }
        guard isHex(0..<2), isHex(3..<35), isHex(36..<52), isHex(53..<55), !isZero(3..<35), !isZero(36..<52) else { return false }
        let version = value.prefix(2)
        if version == "ff" { return false }
        // Version 00 is exactly 55 characters; a later one may add parts after a `-`.
        return version == "00" ? bytes.count == 55 : bytes.count == 55 || bytes[55] == UInt8(ascii: "-")
    }
}
