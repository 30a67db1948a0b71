import GRDB
import MixpeekAPI
import PostgresNIO

/// A value as both audit backends store it: their columns are text, integers and doubles.
enum StoredValue: Sendable, Equatable {
    case null
    case text(String)
    case integer(Int64)
    case real(Double)

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
/// record. A record's table of these (`AuditRecord.columns`, `AuditEntry.columns`) is the one
/// place its columns are declared: audit.sqlite's insert, the group chain's select list and row
/// decoding, the group append's JSON and the CSV header are made from it. The schemas'
/// migrations keep their own spelling: they are history, applied once and never edited.
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

    static func text(_ name: StaticString, _ path: WritableKeyPath<Record, String> & Sendable) -> Self {
        Self(name, .text, read: { .text($0[keyPath: path]) }) { record, value in
            guard case .text(let text) = value else { throw StoredColumnError(column: name, value: value) }
            record[keyPath: path] = text
        }
    }

    static func maybeText(_ name: StaticString, _ path: WritableKeyPath<Record, String?> & Sendable) -> Self {
        Self(name, .text, read: { $0[keyPath: path].map(StoredValue.text) ?? .null }) { record, value in
            switch value {
            case .null: record[keyPath: path] = nil
            case .text(let text): record[keyPath: path] = text
            default: throw StoredColumnError(column: name, value: value)
            }
        }
    }

    /// A code (`kind`, `action`) stored as its raw value.
    static func code<Code: RawRepresentable<String> & Sendable>(_ name: StaticString, _ path: WritableKeyPath<Record, Code> & Sendable) -> Self {
        Self(name, .text, read: { .text($0[keyPath: path].rawValue) }) { record, value in
            guard case .text(let text) = value, let code = Code(rawValue: text) else { throw StoredColumnError(column: name, value: value) }
            record[keyPath: path] = code
        }
    }

    static func maybeCode<Code: RawRepresentable<String> & Sendable>(_ name: StaticString, _ path: WritableKeyPath<Record, Code?> & Sendable) -> Self {
        Self(name, .text, read: { $0[keyPath: path].map { .text($0.rawValue) } ?? .null }) { record, value in
            switch value {
            case .null: record[keyPath: path] = nil
            case .text(let text):
                guard let code = Code(rawValue: text) else { throw StoredColumnError(column: name, value: value) }
                record[keyPath: path] = code
            default: throw StoredColumnError(column: name, value: value)
            }
        }
    }

    static func integer(_ name: StaticString, _ path: WritableKeyPath<Record, Int64> & Sendable) -> Self {
        Self(name, .integer, read: { .integer($0[keyPath: path]) }) { record, value in
            guard case .integer(let integer) = value else { throw StoredColumnError(column: name, value: value) }
            record[keyPath: path] = integer
        }
    }

    static func maybeInteger(_ name: StaticString, _ path: WritableKeyPath<Record, Int64?> & Sendable) -> Self {
        Self(name, .integer, read: { $0[keyPath: path].map(StoredValue.integer) ?? .null }) { record, value in
            switch value {
            case .null: record[keyPath: path] = nil
            case .integer(let integer): record[keyPath: path] = integer
            default: throw StoredColumnError(column: name, value: value)
            }
        }
    }

    static func maybeInt(_ name: StaticString, _ path: WritableKeyPath<Record, Int?> & Sendable) -> Self {
        Self(name, .integer, read: { $0[keyPath: path].map { .integer(Int64($0)) } ?? .null }) { record, value in
            switch value {
            case .null: record[keyPath: path] = nil
            case .integer(let integer): record[keyPath: path] = Int(integer)
            default: throw StoredColumnError(column: name, value: value)
            }
        }
    }

    static func maybeReal(_ name: StaticString, _ path: WritableKeyPath<Record, Double?> & Sendable) -> Self {
        Self(name, .real, read: { $0[keyPath: path].map(StoredValue.real) ?? .null }) { record, value in
            switch value {
            case .null: record[keyPath: path] = nil
            case .real(let real): record[keyPath: path] = real
            // SQLite keeps a whole REAL as an integer when it can.
            case .integer(let integer): record[keyPath: path] = Double(integer)
            default: throw StoredColumnError(column: name, value: value)
            }
        }
    }
}

struct StoredColumnError: Error, CustomStringConvertible {
    var column: StaticString
    var value: StoredValue
    var description: String { "audit column \(column) holds \(value == .null ? "NULL" : "\(value)"), which its record cannot hold" }
}

extension Array {
    /// `blank` with every field of these columns set from `value`.
    func decode<Record>(into blank: Record, _ value: (StoredColumn<Record>) throws -> StoredValue) throws -> Record
    where Element == StoredColumn<Record> {
        var record = blank
        for column in self { try column.write(&record, try value(column)) }
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
