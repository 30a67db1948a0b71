import Foundation

/// Walks a chain record by record, in `seq` order, and names the first one that was altered,
/// inserted, removed or reordered: the one check behind `audit verify`, for `audit.sqlite`
/// and for a group's chain in PostgreSQL.
struct AuditChainCheck {
    let key: Data?
    private var expectedSeq: Int64 = 1
    private var previousHash = AuditRecord.genesis
    private(set) var count = 0
    private var open = Set<Int64>()
    private var unknown: [Int64] = []
    private(set) var problem: (seq: Int64, why: String)?

    init(key: Data?) {
        self.key = key
    }

    /// Checks the next record; false once the chain is broken (the rest need not be read).
    mutating func next(_ record: AuditRecord) -> Bool {
        guard problem == nil else { return false }
        count += 1
        if record.seq != expectedSeq {
            problem = (expectedSeq, "record \(expectedSeq) is missing (records \(expectedSeq)...\(record.seq - 1) were removed)")
        } else if record.prev_hash != previousHash {
            problem = (record.seq, "record \(record.seq) does not follow record \(record.seq - 1): a record was inserted, removed or reordered before it")
        } else if record.hash != record.computeHash(key: key) {
            problem = (record.seq, "record \(record.seq) was altered: its hash does not match its contents")
        }
        guard problem == nil else { return false }
        switch record.kind {
        case .intent:
            open.insert(record.seq)
        case .outcome:
            if let intent = record.intent_seq { open.remove(intent) }
            if record.outcome == .unknown, let intent = record.intent_seq { unknown.append(intent) }
        case .resolution:
            if let intent = record.intent_seq { unknown.removeAll { $0 == intent } }
        }
        expectedSeq += 1
        previousHash = record.hash
        return true
    }

    /// The last good record's `seq`.
    var lastSeq: Int64 { expectedSeq - 1 }

    var verification: AuditVerification {
        if let problem {
            return AuditVerification(records: count, problem: problem.why, problemSeq: problem.seq, unknownOutcomes: unknown, head: "")
        }
        return AuditVerification(
            records: count, problem: nil, problemSeq: nil, unknownOutcomes: (unknown + open).sorted(),
            head: "\(expectedSeq - 1):\(previousHash)")
    }
}
