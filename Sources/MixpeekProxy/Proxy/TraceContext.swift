import MixpeekAPI
import NIOHTTP1
import Synchronization

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

    /// A new trace: ids no other trace of this process has, unpredictable without the
    /// process's seeds, not sampled. Drawn without a system call: `SystemRandomNumberGenerator`
    /// made one `getrandom` per byte, 24 a forwarded request (perf: a twentieth of its CPU).
    static func started() -> TraceContext {
        let (high, low, parent) = TraceIDs.next()
        return TraceContext(traceparent: String(unsafeUninitializedCapacity: 55) { buffer in
            var writer = HexWriter(buffer)
            for byte in "00-".utf8 { writer.byte(byte) }
            writer.hex(high)
            writer.hex(low)
            writer.byte(UInt8(ascii: "-"))
            writer.hex(parent)
            for byte in "-00".utf8 { writer.byte(byte) }
            return writer.count
        }, fromClient: false)
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

/// Trace and parent ids: a process-wide counter through SplitMix64's finalizer (a bijection on
/// 64 bits) keyed by three random seeds drawn once, so every id of a run differs from every
/// other, none is zero, and they look random to anyone without the seeds.
enum TraceIDs {
    private static let seeds = (UInt64.random(in: .min ... .max), UInt64.random(in: .min ... .max), UInt64.random(in: .min ... .max))
    private static let counter = Atomic<UInt64>(0)

    static func next() -> (high: UInt64, low: UInt64, parent: UInt64) {
        while true {
            let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
            let ids = (mix(n ^ seeds.0), mix(n &+ seeds.1), mix(n ^ seeds.2))
            if (ids.0 | ids.1) != 0, ids.2 != 0 { return ids }
        }
    }

    static func mix(_ value: UInt64) -> UInt64 {
        var z = value &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
