/// JSON written by hand, for the few bodies written per request where Foundation's
/// `JSONEncoder` cost a tenth of a process's CPU: the group's chain rows (`ChainRows`) and the
/// fake upstream's key records. Optional fields are left out when nil, as a synthesized
/// `Encodable` conformance leaves them out; strings are escaped as RFC 8259 requires.
public struct JSONWriter {
    public private(set) var bytes: [UInt8] = []
    /// Per open object or array: whether the next member needs a comma before it.
    private var separated: [Bool] = []

    public init(capacity: Int = 512) {
        bytes.reserveCapacity(capacity)
    }

    /// What was written, as text.
    public var text: String { String(decoding: bytes, as: UTF8.self) }

    // MARK: Structure

    public mutating func beginObject() { value(); bytes.append(UInt8(ascii: "{")); separated.append(false) }
    public mutating func endObject() { separated.removeLast(); bytes.append(UInt8(ascii: "}")) }
    public mutating func beginArray() { value(); bytes.append(UInt8(ascii: "[")); separated.append(false) }
    public mutating func endArray() { separated.removeLast(); bytes.append(UInt8(ascii: "]")) }

    /// A member's name; its value follows.
    public mutating func key(_ name: StaticString) {
        comma()
        bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: "\":".utf8)
        pendingValue = true
    }

    /// A member's name that is not known ahead (a map's keys), escaped as a string is.
    public mutating func key(_ name: String) {
        comma()
        quoted(name)
        bytes.append(UInt8(ascii: ":"))
        pendingValue = true
    }

    // MARK: Values

    public mutating func string(_ text: String) {
        value()
        quoted(text)
    }

    private mutating func quoted(_ text: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: "\\\"".utf8)
            case UInt8(ascii: "\\"): bytes.append(contentsOf: "\\\\".utf8)
            case 0..<0x20:
                bytes.append(contentsOf: "\\u00".utf8)
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0xF)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    public mutating func number(_ value: Int64) { raw(String(value)) }

    /// A finite number as Swift prints it (the shortest form that reads back the same); JSON
    /// has no other, so a non-finite one is written as null.
    public mutating func number(_ value: Double) { raw(value.isFinite ? "\(value)" : "null") }

    public mutating func bool(_ value: Bool) { raw(value ? "true" : "false") }

    public mutating func strings(_ values: [String]) {
        beginArray()
        for value in values { string(value) }
        endArray()
    }

    // MARK: Members, left out when nil

    public mutating func field(_ name: StaticString, _ value: String?) {
        guard let value else { return }
        key(name)
        string(value)
    }

    public mutating func field(_ name: StaticString, _ value: Int64?) {
        guard let value else { return }
        key(name)
        number(value)
    }

    public mutating func field(_ name: StaticString, _ value: Int?) { field(name, value.map(Int64.init)) }

    public mutating func field(_ name: StaticString, _ value: Double?) {
        guard let value else { return }
        key(name)
        number(value)
    }

    public mutating func field(_ name: StaticString, _ value: Bool) {
        key(name)
        bool(value)
    }

    public mutating func field(_ name: StaticString, _ values: [String]?) {
        guard let values else { return }
        key(name)
        strings(values)
    }

    // MARK: Internals

    /// True right after a member's name: its value takes no comma.
    private var pendingValue = false

    private mutating func raw(_ text: String) {
        value()
        bytes.append(contentsOf: text.utf8)
    }

    /// Before any value: a comma if it is not the first in its array.
    private mutating func value() {
        if pendingValue {
            pendingValue = false
        } else {
            comma()
        }
    }

    private mutating func comma() {
        guard let last = separated.indices.last else { return }
        if separated[last] { bytes.append(UInt8(ascii: ",")) }
        separated[last] = true
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)
}
