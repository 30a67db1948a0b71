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
            for column in placed ? AuditRecord.columns : AuditRecord.contentColumns {
                json.field(column.name, column.read(record))
            }
            json.field("user_fold", UserIdentity.folded(record.user_email))
            json.field("actor_user_fold", record.actor_user.map(UserIdentity.folded))
            // The entry between its `seq` and `prev_hash`, which `mixpeek_log_append` hashes.
            json.field("log_middle", String(decoding: record.logEntryMiddle, as: UTF8.self))
            json.endObject()
        }
        json.endArray()
        return json.text
    }
}
