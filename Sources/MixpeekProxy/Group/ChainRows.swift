import MixpeekAPI

/// Records as the group's append functions read them (`json_to_recordset`): a JSON array of
/// objects, one per record, with its fields under their column names and `user_fold`.
///
/// Written by hand: Foundation's `JSONEncoder` took a tenth of a proxy's CPU in a group's
/// mutation benchmark. A field without a value is left out (the column reads NULL).
enum ChainRows {
    /// `placed`: with `seq`, `prev_hash` and `hash` (records the proxy chained itself).
    static func json(_ records: [AuditRecord], placed: Bool) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(records.count * 640)
        out.append(UInt8(ascii: "["))
        for (index, record) in records.enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            var object = Object(out: out)
            out = []
            if placed { object.number("seq", record.seq) }
            object.string("kind", record.kind.rawValue)
            object.number("intent_seq", record.intent_seq)
            object.string("time", record.time)
            object.string("action", record.action.rawValue)
            object.string("user_email", record.user_email)
            object.string("user_fold", UserIdentity.folded(record.user_email))
            object.string("key_name", record.key_name)
            object.string("caller", record.caller)
            object.string("client", record.client)
            object.string("request_id", record.request_id)
            object.number("upstream_status", record.upstream_status.map(Int64.init))
            object.string("outcome", record.outcome?.rawValue)
            if let duration = record.duration_ms, duration.isFinite { object.raw("duration_ms", "\(duration)") }
            object.string("key_id", record.key_id)
            object.string("key_prefix", record.key_prefix)
            object.string("key_hash", record.key_hash)
            if placed {
                object.string("prev_hash", record.prev_hash)
                object.string("hash", record.hash)
            }
            out = object.close()
        }
        out.append(UInt8(ascii: "]"))
        return String(decoding: out, as: UTF8.self)
    }

    private struct Object {
        var out: [UInt8]
        var first = true

        init(out: [UInt8]) {
            self.out = out
            self.out.append(UInt8(ascii: "{"))
        }

        mutating func close() -> [UInt8] {
            out.append(UInt8(ascii: "}"))
            return out
        }

        private mutating func key(_ name: StaticString) {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
            out.append(contentsOf: "\":".utf8)
        }

        mutating func raw(_ name: StaticString, _ value: String) {
            key(name)
            out.append(contentsOf: value.utf8)
        }

        mutating func number(_ name: StaticString, _ value: Int64?) {
            guard let value else { return }
            raw(name, String(value))
        }

        mutating func string(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            key(name)
            out.append(UInt8(ascii: "\""))
            for byte in value.utf8 {
                switch byte {
                case UInt8(ascii: "\""): out.append(contentsOf: "\\\"".utf8)
                case UInt8(ascii: "\\"): out.append(contentsOf: "\\\\".utf8)
                case 0..<0x20:
                    out.append(contentsOf: "\\u00".utf8)
                    out.append(Self.hexDigits[Int(byte >> 4)])
                    out.append(Self.hexDigits[Int(byte & 0xF)])
                default: out.append(byte)
                }
            }
            out.append(UInt8(ascii: "\""))
        }

        private static let hexDigits = Array("0123456789abcdef".utf8)
    }
}
