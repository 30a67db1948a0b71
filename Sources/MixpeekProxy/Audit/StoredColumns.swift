import GRDB
import MixpeekAPI
import PostgresNIO

/// A value as both audit backends store it: their columns are text, integers and doubles.
enum StoredValue: Sendable, Equatable {
    case null
    case text(String)
    case integer(Int64)
    case real(Double)

    var text: String? { if case .text(let text) = self { text } else { nil } }
    var integer: Int64? { if case .integer(let integer) = self { integer } else { nil } }
    /// SQLite keeps a whole REAL as an integer when it can.
    var real: Double? {
        switch self {
        case .real(let real): real
        case .integer(let integer): Double(integer)
        default: nil
        }
    }

    /// As `audit query --format csv` and the table print it (durations with three decimals,
    /// as the chain hashes them).
    var printed: String? {
        switch self {
        case .null: nil
        case .text(let text): text
        case .integer(let integer): String(integer)
        case .real(let real): AuditRecord.threeDecimals(real)
        }
    }
}

/// One stored field of `Record`: its column's name and type, and where the value lives in the
/// record. A record's table of these (`AuditRecord.columns`, `AuditEntry.storedColumns`,
/// `ReconcileFinding.storedColumns`) is the one place its columns are declared: audit.sqlite's
/// insert, the group chain's select list and row decoding, the group append's JSON and the CSV
/// are made from it. The schemas' migrations keep their own spelling: they are history, and
/// the SQL each one runs never changes.
struct StoredColumn<Record>: Sendable {
    enum Kind: Sendable { case text, integer, real }

    let name: StaticString
    /// `name` as a `String`, for row lookups and SQL.
    let label: String
    let kind: Kind
    let read: @Sendable (Record) -> StoredValue
    /// Sets the field from a stored value; throws for NULL in a required field, a value of
    /// another type, or an unknown code.
    let write: @Sendable (inout Record, StoredValue) throws -> Void

    private init(_ name: StaticString, _ kind: Kind, read: @escaping @Sendable (Record) -> StoredValue,
                 write: @escaping @Sendable (inout Record, StoredValue) throws -> Void) {
        self.name = name
        label = name.description
        self.kind = kind
        self.read = read
        self.write = write
    }

    /// A required field: `stored` is its value as stored, `value` the field's of a stored value
    /// (nil when it is not one).
    private static func required<Value>(_ name: StaticString, _ kind: Kind, _ path: WritableKeyPath<Record, Value> & Sendable,
                                        _ stored: @escaping @Sendable (Value) -> StoredValue,
                                        _ value: @escaping @Sendable (StoredValue) -> Value?) -> Self {
        Self(name, kind, read: { stored($0[keyPath: path]) }) { record, stored in
            guard let field = value(stored) else { throw StoredColumnError(column: name, value: stored) }
            record[keyPath: path] = field
        }
    }

    /// A field that may be NULL.
    private static func nullable<Value>(_ name: StaticString, _ kind: Kind, _ path: WritableKeyPath<Record, Value?> & Sendable,
                                        _ stored: @escaping @Sendable (Value) -> StoredValue,
                                        _ value: @escaping @Sendable (StoredValue) -> Value?) -> Self {
        Self(name, kind, read: { $0[keyPath: path].map(stored) ?? .null }) { record, stored in
            if stored == .null { return record[keyPath: path] = nil }
            guard let field = value(stored) else { throw StoredColumnError(column: name, value: stored) }
            record[keyPath: path] = field
        }
    }

    static func text(_ name: StaticString, _ path: WritableKeyPath<Record, String> & Sendable) -> Self {
        required(name, .text, path, StoredValue.text, \.text)
    }

    static func maybeText(_ name: StaticString, _ path: WritableKeyPath<Record, String?> & Sendable) -> Self {
        nullable(name, .text, path, StoredValue.text, \.text)
    }

    /// A code (`kind`, `action`) stored as its raw value.
    static func code<Code: RawRepresentable<String> & Sendable>(_ name: StaticString, _ path: WritableKeyPath<Record, Code> & Sendable) -> Self {
        required(name, .text, path, { .text($0.rawValue) }) { $0.text.flatMap(Code.init(rawValue:)) }
    }

    static func maybeCode<Code: RawRepresentable<String> & Sendable>(_ name: StaticString, _ path: WritableKeyPath<Record, Code?> & Sendable) -> Self {
        nullable(name, .text, path, { .text($0.rawValue) }) { $0.text.flatMap(Code.init(rawValue:)) }
    }

    static func integer(_ name: StaticString, _ path: WritableKeyPath<Record, Int64> & Sendable) -> Self {
        required(name, .integer, path, StoredValue.integer, \.integer)
    }

    static func maybeInteger(_ name: StaticString, _ path: WritableKeyPath<Record, Int64?> & Sendable) -> Self {
        nullable(name, .integer, path, StoredValue.integer, \.integer)
    }

    static func maybeInt(_ name: StaticString, _ path: WritableKeyPath<Record, Int?> & Sendable) -> Self {
        nullable(name, .integer, path, { .integer(Int64($0)) }) { $0.integer.map(Int.init) }
    }

    static func maybeReal(_ name: StaticString, _ path: WritableKeyPath<Record, Double?> & Sendable) -> Self {
        nullable(name, .real, path, StoredValue.real, \.real)
    }
}

/// A column's name as a coding key.
struct ColumnKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

struct StoredColumnError: Error, CustomStringConvertible {
    var column: StaticString
    var value: StoredValue
    /// The record's `seq`, when it was read before the column that failed.
    var seq: Int64? = nil

    var description: String {
        let held = value.printed.map { "'\($0)'" } ?? "NULL"
        return "\(seq.map { "record \($0): " } ?? "")audit column \(column) holds \(held), which its record cannot hold"
    }
}

extension Array {
    /// `blank` with every field of these columns set from `value`.
    func decode<Record>(into blank: Record, _ value: (StoredColumn<Record>) throws -> StoredValue) throws -> Record
    where Element == StoredColumn<Record> {
        var record = blank
        var seq: Int64?
        for column in self {
            let stored = try value(column)
            do {
                try column.write(&record, stored)
            } catch var error as StoredColumnError {
                error.seq = seq
                throw error
            }
            if column.label == "seq" { seq = stored.integer }
        }
        return record
    }

    /// A SQLite row's values for these columns, found by name.
    func decode<Record>(into blank: Record, row: Row) throws -> Record where Element == StoredColumn<Record> {
        try decode(into: blank) { column in StoredValue(row[column.label] as DatabaseValue) }
    }

    /// A PostgreSQL row's values for these columns, found by name.
    func decode<Record>(into blank: Record, row: PostgresRow) throws -> Record where Element == StoredColumn<Record> {
        let row = row.makeRandomAccess()
        return try decode(into: blank) { column in
            let cell = row[column.label]
            switch column.kind {
            case .text: return try cell.decode(String?.self).map(StoredValue.text) ?? .null
            case .integer: return try cell.decode(Int64?.self).map(StoredValue.integer) ?? .null
            case .real: return try cell.decode(Double?.self).map(StoredValue.real) ?? .null
            }
        }
    }

    /// `record` as a JSON object of every column, `null` where it has no value, so that each
    /// line of an export has the same keys.
    func encode<Record>(_ record: Record, to encoder: any Encoder) throws where Element == StoredColumn<Record> {
        var container = encoder.container(keyedBy: ColumnKey.self)
        for column in self {
            let key = ColumnKey(stringValue: column.label)
            switch column.read(record) {
            case .null: try container.encodeNil(forKey: key)
            case .text(let text): try container.encode(text, forKey: key)
            case .integer(let integer): try container.encode(integer, forKey: key)
            case .real(let real): try container.encode(real, forKey: key)
            }
        }
    }

    /// The column names, comma-separated, for a select or insert list.
    func names<Record>(prefix: String = "") -> String where Element == StoredColumn<Record> {
        map { prefix + $0.label }.joined(separator: ", ")
    }
}

extension StoredValue {
    init(_ value: DatabaseValue) {
        switch value.storage {
        case .null: self = .null
        case .int64(let integer): self = .integer(integer)
        case .double(let real): self = .real(real)
        case .string(let text): self = .text(text)
        case .blob(let data): self = .text(String(decoding: data, as: UTF8.self))
        }
    }

    var databaseValue: DatabaseValue {
        switch self {
        case .null: .null
        case .text(let text): text.databaseValue
        case .integer(let integer): integer.databaseValue
        case .real(let real): real.databaseValue
        }
    }
}

extension JSONWriter {
    /// The member `name: value`, left out when the value is NULL.
    mutating func field(_ name: StaticString, _ value: StoredValue) {
        switch value {
        case .null: break
        case .text(let text): field(name, text)
        case .integer(let integer): field(name, integer)
        case .real(let real): field(name, real)
        }
    }
}

extension AuditRecord {
    /// Where a record sits in its chain: given by the chain, not by the mutation.
    static let placeColumns: [StoredColumn<AuditRecord>] = [
        .integer("seq", \.seq), .text("prev_hash", \.prev_hash), .text("hash", \.hash),
    ]

    /// What a record says, whatever its place.
    static let contentColumns: [StoredColumn<AuditRecord>] = [
        .code("kind", \.kind), .maybeInteger("intent_seq", \.intent_seq), .text("time", \.time),
        .code("action", \.action), .text("user_email", \.user_email), .maybeText("key_name", \.key_name),
        .text("caller", \.caller), .text("client", \.client), .text("request_id", \.request_id),
        .maybeInt("upstream_status", \.upstream_status), .maybeCode("outcome", \.outcome),
        .maybeReal("duration_ms", \.duration_ms), .maybeText("key_id", \.key_id),
        .maybeText("key_prefix", \.key_prefix), .maybeText("key_hash", \.key_hash),
        .maybeText("trace_id", \.trace_id), .maybeText("upstream_audit_id", \.upstream_audit_id),
        .maybeText("actor_key_id", \.actor_key_id), .maybeText("actor_key_prefix", \.actor_key_prefix),
        .maybeText("actor_key_name", \.actor_key_name), .maybeText("actor_user", \.actor_user),
    ]

    /// Every column of `audit_records` (audit.sqlite) and of `mixpeek_audit` (a group's chain,
    /// which adds its own `proxy_id` and folded users).
    static let columns = placeColumns + contentColumns

    /// A record with nothing in it, for decoding to fill.
    static let blank = AuditRecord(seq: 0, kind: .intent, time: "", action: .create, user_email: "", caller: "", client: "",
                                   request_id: "", prev_hash: "", hash: "")
}

extension AuditEntry {
    /// A mutation's columns as `audit query` reads them, in the order the CSV and the table
    /// print them.
    static let storedColumns: [StoredColumn<AuditEntry>] = [
        .integer("seq", \.seq), .text("time", \.time), .text("action", \.action), .text("user_email", \.user_email),
        .maybeText("key_name", \.key_name), .text("caller", \.caller), .text("client", \.client),
        .text("request_id", \.request_id), .text("outcome", \.outcome), .maybeInt("upstream_status", \.upstream_status),
        .maybeReal("duration_ms", \.duration_ms), .maybeText("key_id", \.key_id), .maybeText("key_prefix", \.key_prefix),
        .maybeText("key_hash", \.key_hash), .maybeText("finished_at", \.finished_at), .maybeText("trace_id", \.trace_id),
        .maybeText("actor_key_id", \.actor_key_id), .maybeText("actor_key_prefix", \.actor_key_prefix),
        .maybeText("actor_key_name", \.actor_key_name), .maybeText("actor_user", \.actor_user),
        .maybeInteger("resolution_seq", \.resolution_seq), .maybeText("upstream_audit_id", \.upstream_audit_id),
    ]

    static let blank = AuditEntry(seq: 0, time: "", action: "", user_email: "", caller: "", client: "", request_id: "", outcome: "")
}
