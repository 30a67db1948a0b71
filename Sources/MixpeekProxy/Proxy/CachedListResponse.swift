import Foundation
import Logging
import MixpeekHTTP
import NIOHTTP1

/// What the proxy prepares from a cached list once, when it enters the memory tier: the
/// response fields every answer with it carries, already encoded, so that a hit encodes only
/// its own `Age`, `X-Cache` and request id.
public struct CachedListResponse: Sendable {
    /// Nil when a field could not be sent as is; the fields are then built per response.
    let fixedFields: HTTPHeaderBlock?
    /// The same for a `304 Not Modified` with it: the validators and `Via`, no content fields.
    let notModifiedFields: HTTPHeaderBlock?

    public init(_ entry: CachedList) {
        fixedFields = HTTPHeaderBlock(Self.fixedFields(of: entry))
        notModifiedFields = HTTPHeaderBlock(Self.notModifiedFields(of: entry))
    }

    /// The response fields a cached list always answers with (its age, X-Cache and request id
    /// are added per response).
    static func fixedFields(of entry: CachedList) -> HTTPHeaders {
        var fields = HTTPHeaders()
        if let contentType = entry.contentType { fields.add(name: "Content-Type", value: contentType) }
        if let etag = entry.etag { fields.add(name: "ETag", value: etag) }
        if let lastModified = entry.lastModified { fields.add(name: "Last-Modified", value: lastModified) }
        fields.add(name: "Via", value: Headers.via)
        return fields
    }

    /// The fields of a 304 for a cached list (RFC 9110 §15.4.5: the validators a 200 would
    /// carry; its age, Cache-Status, X-Cache and request id are added per response).
    static func notModifiedFields(of entry: CachedList) -> HTTPHeaders {
        var fields = HTTPHeaders()
        if let etag = entry.etag { fields.add(name: "ETag", value: etag) }
        if let lastModified = entry.lastModified { fields.add(name: "Last-Modified", value: lastModified) }
        fields.add(name: "Via", value: Headers.via)
        return fields
    }
}

/// The list cache the proxy uses: its memory tier keeps each entry's prepared response fields.
public typealias ProxyListCache = ListCache<CachedListResponse>

extension ListCache where Prepared == CachedListResponse {
    public convenience init(settings: Settings, store: (any ListStore)?, gate: (any ListGate)? = nil, logger: Logger,
                            clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.init(settings: settings, store: store, gate: gate, logger: logger, clock: clock, prepare: CachedListResponse.init)
    }
}
