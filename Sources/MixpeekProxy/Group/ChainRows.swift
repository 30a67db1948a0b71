import MixpeekAPI

/// Records as the group's append functions read them (`json_to_recordset`): a JSON array of
/// objects, one per record, with its fields under their column names, `user_fold` and
/// `actor_user_fold`. Written
/// with `JSONWriter`: Foundation's `JSONEncoder` took a tenth of a proxy's CPU in a group's
/// mutation benchmark. A field without a value is left out (the column reads NULL).
enum ChainRows {
    /// `placed`: with `seq`, `prev_hash` and `hash` (records the proxy chained itself).
    static func json(_ records: [AuditRecord], placed: Bool) -> String {
        var json = JSONWriter(capacity: records.count * 640)
        json.beginArray()
        for record in records {
            json.beginObject()
            if placed { json.field("seq", record.seq) }
            json.field("kind", record.kind.rawValue)
            json.field("intent_seq", record.intent_seq)
            json.field("time", record.time)
            json.field("action", record.action.rawValue)
            json.field("user_email", record.user_email)
            json.field("user_fold", UserIdentity.folded(record.user_email))
            json.field("key_name", record.key_name)
            json.field("caller", record.caller)
            json.field("client", record.client)
            json.field("request_id", record.request_id)
            json.field("upstream_status", record.upstream_status)
            json.field("outcome", record.outcome?.rawValue)
            json.field("duration_ms", record.duration_ms)
            json.field("key_id", record.key_id)
            json.field("key_prefix", record.key_prefix)
            json.field("key_hash", record.key_hash)
            json.field("trace_id", record.trace_id)
            json.field("actor_key_id", record.actor_key_id)
            json.field("actor_key_prefix", record.actor_key_prefix)
            json.field("actor_key_name", record.actor_key_name)
            json.field("actor_user", record.actor_user)
            json.field("actor_user_fold", record.actor_user.map(UserIdentity.folded))
            json.field("upstream_audit_id", record.upstream_audit_id)
            // The entry between its `seq` and `prev_hash`, which `mixpeek_log_append` hashes.
            json.field("log_middle", String(decoding: record.logEntryMiddle, as: UTF8.self))
            if placed {
                json.field("prev_hash", record.prev_hash)
                json.field("hash", record.hash)
            }
            json.endObject()
        }
        json.endArray()
        return json.text
    }
}
