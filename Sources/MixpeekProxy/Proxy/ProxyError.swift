import MixpeekAPI
import MixpeekHTTP
import NIOHTTP1

/// The proxy's own errors. Each maps, here and only here, to a status and to the upstream's
/// error shape, so SDK clients raise their usual exceptions.
public enum ProxyError: Error, Sendable, Equatable {
    case upstreamUnreachable(String)
    case upstreamTimeout(seconds: Double)
    case auditUnavailable
    /// The mutation was forwarded (the upstream answered `upstreamStatus`, nil when it did
    /// not answer) but its outcome record could not be written within `audit_outcome_wait`.
    case auditIncomplete(upstreamStatus: Int?, intentSeq: Int64)
    /// The mutation's audit record would be larger than a log entry may be: refused, not forwarded.
    case auditRecordTooLarge(bytes: Int)
    /// The verifiable log could not be read (`/_proxy/log/...`).
    case logUnreadable
    case malformed(String)
    /// An API-keys path spelled other than canonically: refused, never forwarded (the message
    /// says what to send instead).
    case nonCanonicalPath(String)
    case methodNotAllowed(allowed: String)
    case notAnOpenProxy(String)
    case notFound(String)
    case forbidden(String)
    case refused(HTTPRefusal)

    /// The refusal of an API-keys path the proxy will not forward.
    init(_ rejection: RouteRejection) {
        self = switch rejection {
        case .methodNotAllowed(let allowed): .methodNotAllowed(allowed: allowed)
        case .nonCanonical: .nonCanonicalPath(rejection.message)
        case .invalidSegment, .unknownPath: .malformed(rejection.message)
        }
    }

    var status: HTTPResponseStatus {
        switch self {
        case .upstreamUnreachable: .badGateway
        case .upstreamTimeout: .gatewayTimeout
        case .auditUnavailable, .auditIncomplete, .logUnreadable: .serviceUnavailable
        case .auditRecordTooLarge: .payloadTooLarge
        case .malformed, .nonCanonicalPath: .badRequest
        case .methodNotAllowed: .methodNotAllowed
        case .notAnOpenProxy: .forbidden
        case .notFound: .notFound
        case .forbidden: .forbidden
        case .refused(let refusal): refusal.status
        }
    }

    var type: String {
        switch self {
        case .upstreamUnreachable: "upstream_unreachable"
        case .upstreamTimeout: "upstream_timeout"
        case .auditUnavailable: "audit_unavailable"
        case .auditIncomplete: "audit_incomplete"
        case .auditRecordTooLarge: "audit_record_too_large"
        case .logUnreadable: "log_unavailable"
        case .malformed: "bad_request"
        case .nonCanonicalPath: "non_canonical_path"
        case .methodNotAllowed: "method_not_allowed"
        case .notAnOpenProxy: "forbidden"
        case .notFound: "not_found"
        case .forbidden: "forbidden"
        case .refused(let refusal):
            switch refusal {
            case .bodyTooLarge: "payload_too_large"
            case .headersTooLarge, .tooManyHeaders: "headers_too_large"
            case .malformed: "bad_request"
            case .expectationFailed: "expectation_failed"
            case .internalError: "internal_error"
            }
        }
    }

    var message: String {
        switch self {
        case .upstreamUnreachable(let why): "mixpeek-proxy could not reach the upstream: \(why)"
        case .upstreamTimeout(let seconds): "the upstream did not answer within \(seconds) s (--upstream-timeout)"
        case .auditUnavailable: "the audit log cannot be written, so this mutation was refused and not forwarded"
        case .auditIncomplete(let status, let seq):
            "this mutation was forwarded and the upstream \(status.map { "answered \($0)" } ?? "did not answer"), so it may have been applied, but its outcome could not be recorded in time (audit intent seq \(seq)); the proxy records it as soon as it can"
        case .auditRecordTooLarge(let bytes):
            "this mutation's audit record would be about \(bytes) bytes, more than an audit log entry may hold (65,535), so it was refused and not forwarded; use a shorter user, key name or request id"
        case .logUnreadable: "the audit log could not be read"
        case .malformed(let why): "malformed request: \(why)"
        case .nonCanonicalPath(let why): why
        case .methodNotAllowed(let allowed): "method not allowed; allowed: \(allowed)"
        case .notAnOpenProxy(let why): "mixpeek-proxy is not an open proxy: \(why)"
        case .notFound(let what), .forbidden(let what): what
        case .refused(let refusal): refusal.message
        }
    }

    /// The response for this error, in the API's error shape, with `code` naming it as ours.
    func response(requestID: String? = nil) -> HTTPResponse {
        var headers: HTTPHeaders = ["Content-Type": "application/json", "Via": Headers.via]
        if let requestID { headers.add(name: "X-Request-Id", value: requestID) }
        if case .methodNotAllowed(let allowed) = self { headers.add(name: "Allow", value: allowed) }
        var body = ErrorBody(status: status, message: message, type: type, code: "mixpeek_proxy." + type)
        if case .auditIncomplete(let upstreamStatus, let seq) = self {
            body.error.details = ["upstream_status": upstreamStatus.map(String.init) ?? "none", "intent_seq": String(seq)]
        }
        return HTTPResponse(status: status, headers: headers, body: body.buffer)
    }
}
