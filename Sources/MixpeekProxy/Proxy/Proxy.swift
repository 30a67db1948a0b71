import Foundation
import Logging
import MixpeekAPI
import MixpeekHTTP
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// The proxy itself: every request's way reads top to bottom here.
///
/// parse the route → look up its policy → answer from the cache or forward → audit → respond.
public final class Proxy: HTTPResponder {
    public struct Settings: Sendable {
        /// What `Policy.decide` reads.
        public var policy = Policy.Settings()
        /// Shown in the 504 message.
        public var upstreamTimeoutSeconds: Double = 30
        /// The upstream's URL: redirects to its origin are rewritten to the proxy's own.
        public var upstream: String?
        /// Who may see the status page (`status_page`).
        public var statusPage = StatusPageAccess.loopback
        /// Seconds a mutation's answer waits for its outcome record (`audit_outcome_wait`).
        public var auditOutcomeWait: Double = 10
        public init() {}
    }

    let upstream: any Upstream
    let cache: ProxyListCache
    /// How a mutation drops its user's cached lists: the cache itself, in process.
    let invalidation: any Invalidation
    /// Nil when the audit file could not be opened: every mutation is then refused (503).
    let audit: (any AuditSink)?
    let settings: Settings
    /// `settings.upstream`'s origin, parsed once (`Headers.rewriteRedirects`).
    private let upstreamOrigin: Origin?
    /// The request log; nil when `access_log` is `off`.
    public let accessLog: AccessLog?
    let logger: Logger
    let metrics: ProxyMetrics
    private let callers = CallerFingerprints()
    /// Makes each mutation's outcome durable before its answer is sent.
    let outcomes: OutcomeWriter
    /// The status page's figures; nil serves no status page.
    let status: StatusBoard?
    /// The group this proxy is in (`/_proxy/health` reports on it); nil for a lone proxy.
    let group: GroupMember?
    /// A read-only connection to the audit file that serves the verifiable log's checkpoint
    /// and tiles (`LogEndpoints`); nil serves none.
    let log: AuditLog?
    /// The full tiles of the log served so far (`LogEndpoints`).
    let fullTiles = FullTiles()
    /// A hit's `Cache-Status` for each second of freshness left, formatted once.
    private let hitStatus: CacheStatus.Hits

    /// `invalidation` defaults to `cache`, which then drops lists in this process only.
    public init(upstream: any Upstream, cache: ProxyListCache, invalidation: (any Invalidation)? = nil, audit: (any AuditSink)?,
                settings: Settings, metrics: ProxyMetrics, accessLog: AccessLog?, logger: Logger, status: StatusBoard? = nil,
                group: GroupMember? = nil, log: AuditLog? = nil) {
        self.upstream = upstream
        self.log = log
        self.group = group
        self.status = status
        self.cache = cache
        hitStatus = CacheStatus.Hits(ttl: cache.settings.ttl)
        self.invalidation = invalidation ?? cache
        self.audit = audit
        self.settings = settings
        upstreamOrigin = settings.upstream.flatMap(Origin.init(url:))
        self.metrics = metrics
        self.accessLog = accessLog
        self.logger = logger
        outcomes = OutcomeWriter(pending: cache.gate, wait: settings.auditOutcomeWait, invalidation: invalidation ?? cache, logger: logger)
    }

    public func respond(to incoming: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        let started = NIODeadline.now()
        if Self.isInternal(incoming.target) {
            return internalEndpoint(incoming, on: eventLoop)
        }
        let requestID = Self.requestID(incoming.headers)
        // A hit goes nowhere and starts no trace; anything forwarded carries one.
        let clientTrace = TraceContext(incoming.headers)
        let request: HTTPRequest
        if incoming.method != .CONNECT, Self.isOriginForm(incoming.target) {
            // The usual case: nothing to bring to origin form, nothing copied.
            request = incoming
        } else {
            var incoming = incoming
            if let refusal = Self.originForm(&incoming) {
                return finish(.now(refusal.response(requestID: requestID)), incoming, route: "refused", cache: nil, trace: clientTrace,
                              started: started, on: eventLoop)
            }
            request = incoming
        }
        let decision = Policy.decide(
            Route(method: request.method, target: request.target), target: request.target, headers: request.headers, settings: settings.policy)
        switch decision {
        case .refuse(let error):
            return finish(.now(error.response(requestID: requestID)), request, route: decision.label, cache: nil, trace: clientTrace,
                          started: started, on: eventLoop)
        case .serveList(let user, let includeRevoked, let refresh):
            let lookup = cache.lookup(
                authorization: request.headers.first(name: "authorization"), user: user, includeRevoked: includeRevoked, refresh: refresh)
            if let remembered = lookup.remembered {
                if let group, group.settings.hitCheck == .read {
                    // The alternative the benchmark compares: one PostgreSQL read per hit.
                    let trace = clientTrace ?? .started()
                    let confirmed = group.confirmHit(user: user, on: eventLoop)
                    return later(request, route: decision.label, trace: trace, started: started, confirmed.flatMap { current in
                        current
                            ? eventLoop.makeSucceededFuture((self.cachedResponse(
                                remembered.entry, prepared: remembered.prepared, to: request, as: .hit, requestID: requestID), .hit))
                            : self.list(request, lookup, refresh: true, requestID: requestID, trace: trace, on: eventLoop)
                    })
                }
                let response = cachedResponse(remembered.entry, prepared: remembered.prepared, to: request, as: .hit, requestID: requestID)
                // Its request id is known: the request log need not look for it among the fields.
                observe(request, route: decision.label, status: response.status, cache: .hit, requestID: requestID,
                        traceID: clientTrace?.traceID, started: started, on: eventLoop)
                return .now(response)
            }
            let trace = clientTrace ?? .started()
            return later(request, route: decision.label, trace: trace, started: started,
                         list(request, lookup, refresh: refresh, requestID: requestID, trace: trace, on: eventLoop))
        case .bypassCache:
            cache.noteBypass()
            let trace = clientTrace ?? .started()
            return forward(request, route: decision.label, requestID: requestID, trace: trace, result: .bypass, cacheStatus: CacheStatus.bypass,
                           started: started, on: eventLoop)
        case .passThrough:
            let trace = clientTrace ?? .started()
            return forward(request, route: decision.label, requestID: requestID, trace: trace, result: nil, cacheStatus: nil,
                           started: started, on: eventLoop)
        case .mutate(let action, let user, let key):
            let trace = clientTrace ?? .started()
            return later(on: eventLoop, request, route: decision.label, trace: trace, started: started) {
                await self.mutate(request, action: action, user: user, key: key, requestID: requestID, trace: trace, on: eventLoop)
            }
        }
    }

    public func refusal(_ reason: HTTPRefusal) -> HTTPResponse {
        ProxyError.refused(reason).response()
    }

    // MARK: Lists

    /// A list the cache could not answer on the spot: on the event loop throughout, unless the
    /// cache file must be read.
    private func list(_ request: HTTPRequest, _ lookup: ProxyListCache.Lookup, refresh: Bool, requestID: String, trace: TraceContext,
                      on eventLoop: any EventLoop) -> EventLoopFuture<(HTTPResponse, CacheResult?)> {
        cache.answer(lookup.key, credential: lookup.credential, refresh: refresh, on: eventLoop) {
            // A failure becomes `.failure` in the cache, which knows what to serve instead.
            let started = NIODeadline.now()
            return self.upstream.send(self.listFetch(request, requestID: requestID, trace: trace), on: eventLoop)
                .always { result in self.noteUpstream(.list, result.map { Int($0.status.code) }, since: started) }
                .map { .response($0) }
        }.map { answer in self.listResponse(answer, to: request, requestID: requestID) }
    }

    private func listResponse(_ answer: ProxyListCache.Answer, to request: HTTPRequest, requestID: String) -> (HTTPResponse, CacheResult?) {
        switch answer {
        case .hit(let entry):
            return (cachedResponse(entry, to: request, as: .hit, requestID: requestID), .hit)
        case .stale(let entry, let forward):
            return (cachedResponse(entry, to: request, as: .stale(forward), requestID: requestID), .stale)
        case .fetched(let fetched, let forward):
            let cacheStatus = CacheStatus.forwarded(forward, stored: fetched.notStored == nil, detail: fetched.notStored)
            let response: UpstreamResponse
            switch fetched.outcome {
            case .response(let fetched):
                response = fetched
            case .failure(let error):
                var failure = upstreamFailure(error).response(requestID: requestID)
                failure.headers.add(name: CacheStatus.name, value: cacheStatus)
                return (failure, .miss)
            }
            // A request that waited on another's fetch says so, in its X-Cache as in the log.
            let cacheResult: CacheResult = forward.coalesced ? .coalesced : .miss
            let xCache = cacheResult.rawValue
            // The fetched list is what the cache holds now: a client whose copy it is gets a 304.
            if let entry = fetched.entry, let etag = entry.etag, Validators.ifNoneMatch(request.headers, matches: etag) {
                var headers = CachedListResponse.notModifiedFields(of: entry)
                headers.add(contentsOf: [("Age", "0"), (CacheStatus.name, cacheStatus), ("X-Cache", xCache), ("X-Request-Id", requestID)])
                return (HTTPResponse(status: .notModified, headers: headers), cacheResult)
            }
            var answer = clientResponse(response, to: request, requestID: requestID, xCache: xCache, cacheStatus: cacheStatus)
            if let etag = fetched.entry?.etag, !answer.headers.contains(name: "etag") {
                answer.headers.add(name: "ETag", value: etag)
            }
            return (answer, cacheResult)
        }
    }

    /// How a list from the cache is served: fresh, or stale because the upstream failed.
    private enum Served {
        case hit
        case stale(ListForward)
    }

    /// A list from the cache, or a `304` when the client's `If-None-Match` names its tag. A hit
    /// from memory brings its fixed fields already encoded (`prepared`).
    private func cachedResponse(_ entry: CachedList, prepared: CachedListResponse? = nil, to request: HTTPRequest, as served: Served,
                                requestID: String) -> HTTPResponse {
        let (age, ttl) = cache.timing(of: entry)
        let xCache: String
        let cacheStatus: String
        switch served {
        case .hit:
            xCache = "HIT"
            cacheStatus = hitStatus.field(ttl: ttl)
        case .stale(let forward):
            xCache = "STALE"
            cacheStatus = CacheStatus.forwarded(forward, ttl: ttl, stored: false, detail: "stale-if-error")
        }
        let notModified = entry.etag.map { Validators.ifNoneMatch(request.headers, matches: $0) } ?? false
        // Made in one piece: one array of fields, not one grown by each `add`.
        let fields = [("Age", String(age)), (CacheStatus.name, cacheStatus), ("X-Cache", xCache), ("X-Request-Id", requestID)]
        let headerBlock = notModified ? prepared?.notModifiedFields : prepared?.fixedFields
        var headers: HTTPHeaders
        if headerBlock == nil {
            headers = notModified ? CachedListResponse.notModifiedFields(of: entry) : CachedListResponse.fixedFields(of: entry)
            headers.add(contentsOf: fields)
        } else {
            headers = HTTPHeaders(fields)
        }
        return notModified
            ? HTTPResponse(status: .notModified, headerBlock: headerBlock, headers: headers)
            : HTTPResponse(status: HTTPResponseStatus(statusCode: entry.status), headerBlock: headerBlock, headers: headers, body: entry.body)
    }

    // MARK: Mutations

    /// Intent (durable, or 503 and nothing forwarded) → invalidate → forward → invalidate →
    /// outcome → respond. Invalidating on both sides means no list stored or served after the
    /// response can predate the mutation, whatever the upstream answered.
    private func mutate(_ request: HTTPRequest, action: AuditAction, user: String, key: String?, requestID: String,
                        trace: TraceContext, on eventLoop: any EventLoop) async -> (HTTPResponse, CacheResult?) {
        guard let audit else { return (ProxyError.auditUnavailable.response(requestID: requestID), nil) }
        let authorization = request.headers.first(name: "authorization")
        let credential = cache.credential(for: authorization)
        let intent: AuditRecord
        do {
            intent = try await metrics.timeAuditAppend {
                try await audit.recordIntent(AuditIntent(
                    action: action, user: user, key: key ?? Self.createdName(request.body),
                    caller: callers.of(authorization: authorization), client: request.clientAddress,
                    requestID: requestID, traceID: trace.traceID, actor: cache.identity(of: credential)))
            }
        } catch LogTreeError.entryTooLarge(let bytes) {
            return (ProxyError.auditRecordTooLarge(bytes: bytes).response(requestID: requestID), nil)
        } catch {
            logger.error("audit intent could not be written; mutation refused", metadata: ["request_id": "\(requestID)", "error": "\(error)"])
            return (ProxyError.auditUnavailable.response(requestID: requestID), nil)
        }
        await invalidation.invalidate(user: user)
        let started = NIODeadline.now()
        let response: HTTPResponse
        let result: AuditResult
        do {
            let upstreamResponse = try await upstream.send(upstreamRequest(request, requestID: requestID, trace: trace), on: eventLoop).get()
            let elapsed = Self.milliseconds(since: started)
            let code = Int(upstreamResponse.status.code)
            noteUpstream(.mutation, .success(code), since: started)
            let outcome: AuditOutcome = switch code {
            case 200..<300: .ok
            case 400..<500: .rejected
            default: .error
            }
            // Before the answer is sent: a key revoked by it reads nothing from the cache from
            // the moment its client learns of it (`ListCache.noteMutation`).
            cache.noteAnswer(.response(upstreamResponse), to: credential, listOf: nil)
            // A 2xx answer's body, parsed once for the cache and the outcome record.
            let answer = outcome == .ok ? ProxyListCache.jsonObject(upstreamResponse.body) : nil
            if outcome == .ok { cache.noteMutation(action, user: user, name: key, answer: answer) }
            let ids = action == .create || action == .rotate ? Self.newKeyIdentifiers(answer) : (nil, nil, nil)
            result = AuditResult(outcome: outcome, upstreamStatus: code, durationMS: elapsed, keyID: ids.0, keyPrefix: ids.1, keyHash: ids.2)
            response = clientResponse(upstreamResponse, to: request, requestID: requestID, xCache: nil, cacheStatus: nil)
        } catch {
            let failure = error as? UpstreamError ?? .unreachable("\(error)")
            noteUpstream(.mutation, .failure(failure), since: started)
            result = AuditResult(outcome: failure == .timeout ? .timeout : .error, upstreamStatus: nil, durationMS: Self.milliseconds(since: started))
            response = upstreamFailure(failure).response(requestID: requestID)
        }
        await invalidation.invalidate(user: user)
        let metrics = metrics
        switch await outcomes.deliver(user: user, intentSeq: intent.seq, requestID: requestID, {
            try await metrics.timeAuditAppend { try await audit.recordOutcome(of: intent, result) }
        }) {
        case .written(let outcome):
            // A checkpoint covers it (a lone proxy's batch signed one; a member signs one for
            // it): its index can be proved now.
            guard audit.isVerifiableLog, await audit.covers(outcome) else { return (response, nil) }
            var answer = response
            answer.headers.add(name: Self.auditIndexHeader, value: String(outcome.seq - 1))
            return (answer, nil)
        case .incomplete:
            // The upstream may have applied it: the client is told so, never that it succeeded.
            return (ProxyError.auditIncomplete(upstreamStatus: result.upstreamStatus, intentSeq: intent.seq).response(requestID: requestID), nil)
        }
    }

    /// The `name` of a create request's JSON body: the key the create is about.
    static func createdName(_ body: ByteBuffer?) -> String? {
        guard let body, let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else { return nil }
        return object["name"] as? String
    }

    /// `Mixpeek-Proxy-Audit-Index`: a mutation's outcome entry in the verifiable log.
    static let auditIndexHeader = "Mixpeek-Proxy-Audit-Index"

    /// The longest identifier of a new key the outcome keeps (Mixpeek's are a few dozen
    /// characters): what `AuditLog.outcomeEntryGrowth` allows for, so an outcome always fits.
    static let maximumIdentifierSize = 256

    /// The non-secret identifiers of a new key (`key_id`, `key_prefix`, `key_hash`); the
    /// plaintext `key` beside them is never read into anything that is kept.
    static func newKeyIdentifiers(_ answer: [String: Any]?) -> (String?, String?, String?) {
        guard let object = answer else { return (nil, nil, nil) }
        func identifier(_ name: String) -> String? {
            (object[name] as? String).flatMap { $0.utf8.count <= maximumIdentifierSize ? $0 : nil }
        }
        return (identifier("key_id"), identifier("key_prefix"), identifier("key_hash"))
    }

    // MARK: Forwarding

    /// A pass-through or bypass call: sent from the connection's event loop and answered on it,
    /// with no task between (as list misses are), on a connection of that loop's own. Its
    /// answer is made, and observed, in the upstream's callback: one promise, the one the
    /// server waits on (no `map` then `recover`, no `later`'s `map`: two futures and their
    /// callbacks less a request).
    private func forward(_ request: HTTPRequest, route: String, requestID: String, trace: TraceContext, result: CacheResult?,
                         cacheStatus: String?, started: NIODeadline, on eventLoop: any EventLoop) -> HTTPReply {
        let answer = eventLoop.makePromise(of: HTTPResponse.self)
        upstream.send(upstreamRequest(request, requestID: requestID, trace: trace), on: eventLoop).whenComplete { sent in
            let response: HTTPResponse
            switch sent {
            case .success(let upstreamResponse):
                self.cache.noteAnswer(.response(upstreamResponse), to: self.cache.credential(for: request.headers.first(name: "authorization")), listOf: nil)
                response = self.clientResponse(upstreamResponse, to: request, requestID: requestID, xCache: result?.rawValue, cacheStatus: cacheStatus)
            case .failure(let error):
                var failure = self.upstreamFailure(error as? UpstreamError ?? .unreachable("\(error)")).response(requestID: requestID)
                if let cacheStatus { failure.headers.add(name: CacheStatus.name, value: cacheStatus) }
                response = failure
            }
            self.observe(response, to: request, route: route, cache: result, trace: trace, started: started, on: eventLoop)
            answer.succeed(response)
        }
        return .later(answer.futureResult)
    }

    /// A list fetched for the cache: a whole GET, whatever the client sent. Its answer is
    /// stored and shared with every request that joins the fetch, so the client's conditions
    /// (`If-None-Match`, `If-Modified-Since`, whose tags may be the proxy's own) are not
    /// forwarded; the proxy judges them against the answer, as nginx's cache does.
    private func listFetch(_ request: HTTPRequest, requestID: String, trace: TraceContext) -> UpstreamRequest {
        var fetch = upstreamRequest(request, requestID: requestID, trace: trace)
        fetch.method = .GET
        fetch.headers.remove(name: "if-none-match")
        fetch.headers.remove(name: "if-modified-since")
        return fetch
    }

    private func upstreamRequest(_ request: HTTPRequest, requestID: String, trace: TraceContext) -> UpstreamRequest {
        var headers = Headers.forwarded(request.headers)
        if !headers.contains(name: "x-request-id") { headers.add(name: "X-Request-Id", value: requestID) }
        trace.apply(to: &headers)
        return UpstreamRequest(method: request.method, target: request.target, headers: headers, body: request.body)
    }

    /// The upstream's answer for the client: its fields keep their spelling, ours are added in
    /// theirs (the SDK hands headers to users as a case-sensitive dict).
    private func clientResponse(_ response: UpstreamResponse, to request: HTTPRequest, requestID: String, xCache: String?,
                                cacheStatus: String?) -> HTTPResponse {
        // Without a body, `Content-Length` is the representation's length and passes unchanged.
        var headers = Headers.forwarded(response.headers, keepingLength: request.method == .HEAD || response.status == .notModified)
        if let upstream = upstreamOrigin, let local = request.localAddress, let ip = local.ipAddress, let port = local.port {
            Headers.rewriteRedirects(&headers, from: upstream, to: Origin(scheme: "http", host: ip, port: port))
        }
        if !headers.contains(name: "x-request-id") { headers.add(name: "X-Request-Id", value: requestID) }
        if let xCache {
            // A list answered straight from the upstream is zero seconds old, unless the upstream says otherwise.
            headers.replaceOrAdd(name: "X-Cache", value: xCache)
            if !headers.contains(name: "age") { headers.add(name: "Age", value: "0") }
        }
        if let cacheStatus { headers.add(name: CacheStatus.name, value: cacheStatus) }
        return HTTPResponse(status: response.status, headers: headers, body: response.body)
    }

    /// Tells the status page how an upstream call (a list miss or a mutation) went.
    private func noteUpstream(_ call: UpstreamHealth.Call, _ result: Result<Int, any Error>, since started: NIODeadline) {
        guard let health = status?.health else { return }
        let elapsed = Self.milliseconds(since: started)
        switch result {
        case .success(let code): health.answered(call, status: code, milliseconds: elapsed)
        case .failure(let error): health.failed(call, error as? UpstreamError ?? .unreachable("\(error)"), milliseconds: elapsed)
        }
    }

    private func upstreamFailure(_ error: UpstreamError) -> ProxyError {
        metrics.upstreamError(error)
        return switch error {
        case .timeout: .upstreamTimeout(seconds: settings.upstreamTimeoutSeconds)
        case .unreachable(let why): .upstreamUnreachable(why)
        }
    }

    // MARK: Request checks

    /// Brings an absolute-form target for this proxy's own host to origin form; refuses
    /// CONNECT, other hosts, and targets that are not an RFC 3986 `absolute-path [ "?" query ]`.
    static func originForm(_ request: inout HTTPRequest) -> ProxyError? {
        if request.method == .CONNECT {
            return .notAnOpenProxy("CONNECT is refused")
        }
        var target = request.target
        if target.utf8.first != UInt8(ascii: "/"), let scheme = target.range(of: "://") {
            let afterScheme = target[scheme.upperBound...]
            let authority = afterScheme.prefix { $0 != "/" && $0 != "?" }
            guard isOwnAuthority(authority.lowercased(), local: request.localAddress) else {
                return .notAnOpenProxy("absolute-form target for another host")
            }
            let rest = afterScheme.dropFirst(authority.count)
            target = rest.hasPrefix("/") ? String(rest) : "/" + rest
        }
        if let problem = targetProblem(target) { return .malformed(problem) }
        request.target = target
        return nil
    }

    /// True for an origin-form target the proxy forwards as it is: the usual case, checked
    /// byte-wise without copying the request.
    static func isOriginForm(_ target: String) -> Bool {
        target.utf8.first == UInt8(ascii: "/") && targetProblem(target) == nil
    }

    /// Why `target` is not an RFC 3986 `absolute-path [ "?" query ]` the proxy can forward
    /// exactly as it classified it, or nil. Refused: a `#` (a target never carries a fragment,
    /// RFC 9112 §3.2, and a client that drops it sends another call than the one classified),
    /// any byte outside the grammar, a `%` not followed by two hex digits, and an escaped NUL,
    /// CR or LF (a front end or the upstream that decodes the path would see another line).
    static func targetProblem(_ target: String) -> String? {
        var target = target
        return target.withUTF8 { bytes -> String? in
            guard bytes.first == UInt8(ascii: "/") else { return "request target must be origin-form (start with /)" }
            var index = 0
            while index < bytes.count {
                let byte = bytes[index]
                guard isTargetByte(byte) else {
                    return byte == UInt8(ascii: "#")
                        ? "a request target never carries a fragment (#): send the path and query alone"
                        : "request target has a byte RFC 3986 does not allow in a path or query (0x\(String(byte, radix: 16, uppercase: true)))"
                }
                if byte == UInt8(ascii: "%") {
                    guard index + 2 < bytes.count, let high = PathSpelling.hexValue(bytes[index + 1]),
                          let low = PathSpelling.hexValue(bytes[index + 2]) else {
                        return "request target has a % not followed by two hex digits"
                    }
                    let decoded = high << 4 | low
                    if decoded == 0 || decoded == 0x0A || decoded == 0x0D {
                        return "request target has an escaped NUL, CR or LF"
                    }
                    index += 3
                    continue
                }
                index += 1
            }
            return nil
        }
    }

    /// Whether the target's path starts with `/_proxy/` (the proxy's own endpoints), as
    /// `request.path.hasPrefix("/_proxy/")` says, read as bytes. A byte after the prefix that
    /// is not ASCII could join its `/` into another Character: only then is it read as Characters.
    static func isInternal(_ target: String) -> Bool {
        var target = target
        let prefix: StaticString = "/_proxy/"
        let bytesSay = target.withUTF8 { bytes -> Bool? in
            prefix.withUTF8Buffer { prefix in
                guard bytes.count >= prefix.count, UnsafeBufferPointer(rebasing: bytes[..<prefix.count]).elementsEqual(prefix) else {
                    return false
                }
                return bytes.count == prefix.count || bytes[prefix.count] < 0x80 ? true : nil
            }
        }
        return bytesSay ?? HTTPRequest(method: .GET, target: target).path.hasPrefix("/_proxy/")
    }

    /// True when `authority` names the address the client connected to (or localhost on its port).
    private static func isOwnAuthority(_ authority: String, local: SocketAddress?) -> Bool {
        guard let local, let port = local.port, let ip = local.ipAddress else { return false }
        let names = [ip, "[\(ip)]", "localhost"]
        return names.contains { authority == "\($0):\(port)" || (port == 80 && authority == $0) }
    }

    /// The bytes of RFC 3986's `pchar`, `/` and `?` (what a path and a query are made of):
    /// letters, digits and `-._~!$&'()*+,;=:@/?%`, as two 64-bit masks over ASCII
    /// (`HotPathTests` checks them against that list). Not `#`, `[` or `]`.
    @inline(__always)
    static func isTargetByte(_ byte: UInt8) -> Bool {
        switch byte {
        case 0..<64: (0xAFFF_FFF2_0000_0000 as UInt64) >> byte & 1 == 1
        case 64..<128: (0x47FF_FFFE_87FF_FFFF as UInt64) >> (byte - 64) & 1 == 1
        default: false
        }
    }

    /// The client's `X-Request-Id` when it is a sane token, else a new UUID-shaped ID.
    static func requestID(_ headers: HTTPHeaders) -> String {
        if let given = headers.first(name: "x-request-id"), (1...128).contains(given.utf8.count),
           given.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) {
            return given
        }
        return RequestID.next()
    }

    static func milliseconds(since start: NIODeadline) -> Double {
        Double((NIODeadline.now() - start).nanoseconds) / 1_000_000
    }

    // MARK: Completion

    private func later(on eventLoop: any EventLoop, _ request: HTTPRequest, route: String, trace: TraceContext, started: NIODeadline,
                       _ work: @escaping @Sendable () async -> (HTTPResponse, CacheResult?)) -> HTTPReply {
        let promise = eventLoop.makePromise(of: (HTTPResponse, CacheResult?).self)
        // On the request's own loop, not the concurrency pool (`LoopTaskExecutor`).
        Task(executorPreference: LoopTaskExecutor(eventLoop)) { promise.succeed(await work()) }
        return later(request, route: route, trace: trace, started: started, promise.futureResult)
    }

    private func later(_ request: HTTPRequest, route: String, trace: TraceContext, started: NIODeadline,
                       _ answer: EventLoopFuture<(HTTPResponse, CacheResult?)>) -> HTTPReply {
        .later(answer.map { response, cacheResult in
            self.observe(response, to: request, route: route, cache: cacheResult, trace: trace, started: started, on: answer.eventLoop)
            return response
        })
    }

    /// `observe` for an answer made later: its request id is the response's.
    private func observe(_ response: HTTPResponse, to request: HTTPRequest, route: String, cache: CacheResult?, trace: TraceContext,
                         started: NIODeadline, on eventLoop: any EventLoop) {
        observe(request, route: route, status: response.status, cache: cache, requestID: response.headers.first(name: "x-request-id"),
                traceID: trace.traceID, started: started, on: eventLoop)
    }

    private func finish(_ reply: HTTPReply, _ request: HTTPRequest, route: String, cache: CacheResult?, trace: TraceContext?,
                        started: NIODeadline, on eventLoop: any EventLoop) -> HTTPReply {
        if case .now(let response) = reply {
            observe(request, route: route, status: response.status, cache: cache,
                    requestID: response.headers.first(name: "x-request-id"), traceID: trace?.traceID, started: started, on: eventLoop)
        }
        return reply
    }

    /// The request-log line and the request metrics, per request. Never logs headers or bodies.
    /// `requestID` is the response's `X-Request-Id` and `traceID` the request's trace id, read
    /// only when the request log is on.
    private func observe(_ request: HTTPRequest, route: String, status: HTTPResponseStatus, cache: CacheResult?,
                         requestID: @autoclosure () -> String?, traceID: @autoclosure () -> String?, started: NIODeadline,
                         on eventLoop: any EventLoop) {
        let elapsed = Self.milliseconds(since: started)
        metrics.request(route: route, status: Int(status.code), cache: cache, seconds: elapsed / 1000)
        guard let accessLog else { return }
        accessLog.record(AccessLogEntry(
            method: request.method, route: route, status: status.code, cache: cache, milliseconds: elapsed,
            requestID: requestID(), traceID: traceID()), on: eventLoop)
    }
}
