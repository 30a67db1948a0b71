import MixpeekAPI

/// A chain record as an entry of the verifiable log (CONTRACT §5 "Verifiable log"): one line
/// of JSON, every field in the table's order and absent ones left out, so that anyone holding
/// the record (or the entry bundle) can compute its leaf hash. Its index is `seq - 1`.
extension AuditRecord {
    /// C2SP tlog-tiles' limit: an entry bundle gives each entry a 16-bit length.
    static let maximumEntrySize = 0xFFFF

    var logEntry: [UInt8] {
        var json = JSONWriter(capacity: 640)
        json.beginObject()
        json.field("seq", seq)
        json.field("kind", kind.rawValue)
        json.field("intent_seq", intent_seq)
        json.field("time", time)
        json.field("action", action.rawValue)
        json.field("user_email", user_email)
        json.field("key_name", key_name)
        json.field("caller", caller)
        json.field("client", client)
        json.field("request_id", request_id)
        json.field("upstream_status", upstream_status)
        json.field("outcome", outcome?.rawValue)
        json.field("duration_ms", duration_ms)
        json.field("key_id", key_id)
        json.field("key_prefix", key_prefix)
        json.field("key_hash", key_hash)
        json.field("trace_id", trace_id)
        json.field("actor_key_id", actor_key_id)
        json.field("actor_key_prefix", actor_key_prefix)
        json.field("actor_key_name", actor_key_name)
        json.field("actor_user", actor_user)
        json.field("upstream_audit_id", upstream_audit_id)
        json.field("prev_hash", prev_hash)
        json.field("hash", hash)
        json.endObject()
        return json.bytes
    }

    /// The entry's fields after `seq` and before `prev_hash`, without the commas around them:
    /// what the group's `mixpeek_log_append` puts between the `seq`, `prev_hash` and `hash`
    /// PostgreSQL chains the record with (`GroupLogTree.entrySQL`).
    var logEntryMiddle: [UInt8] {
        var unplaced = self
        unplaced.seq = 0
        unplaced.prev_hash = ""
        unplaced.hash = ""
        let entry = unplaced.logEntry
        // `{"seq":0,` … `,"prev_hash":"","hash":""}`
        return Array(entry[9..<(entry.count - 26)])
    }

    /// The most an unchained draft's entry can grow once chained: its `seq` (up to 19 digits)
    /// and two 64-digit hashes in place of empty ones.
    var chainedEntrySizeBound: Int { logEntry.count + 19 + 2 * 64 }
}
