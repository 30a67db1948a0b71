import Foundation
import MixpeekAPI
import MixpeekHTTP
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// One event of the fake's audit trail, with the fields of the spec's `AuditEventResponse`.
/// `changes` (free-form in the spec) carries the key's user and name, so that a reader can
/// match an event to a mutation by user when it does not know the key's id.
public struct FakeAuditEvent: Codable, Sendable, Equatable {
    public var audit_id: String
    public var timestamp: String
    public var resource_type = "api_key"
    public var resource_id: String
    public var action: String
    public var actor_id: String
    public var actor_type = "user"
    public var status = "success"
    public var changes: [String: String]
    public var ip_address: String?
    public var user_agent: String?

    /// The `action` of each mutation, as the spec's `AuditAction` names them for keys.
    static func action(_ route: Route) -> String? {
        switch route {
        case .create: "api_key_created"
        case .rotate: "api_key_rotated"
        case .delete: "api_key_revoked"
        case .update: "api_key_scope_updated"
        case .list, .passThrough, .rejected: nil
        }
    }
}

/// `AuditEventListResponse`.
struct FakeAuditPage: Codable {
    var results: [FakeAuditEvent]
    var total: Int
    var skip: Int
    var limit: Int
}

/// The fake's organisation audit log (`GET /v1/organizations/audit/logs`): every create,
/// rotate, delete and update it applied, whoever sent it, newest first. One trail for the
/// whole fake (its organisations are per token, an auditor's admin token is another one).
public final class FakeAuditTrail: Sendable {
    public static let path = "/v1/organizations/audit/logs"

    private struct State {
        var events: [FakeAuditEvent] = []
        var rateLimitOnce: Int?
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Every event, oldest first.
    public var events: [FakeAuditEvent] {
        state.withLockedValue { $0.events }
    }

    /// The next audit request answers 429 with `Retry-After: seconds`, once.
    public func rateLimitOnce(retryAfter seconds: Int) {
        state.withLockedValue { $0.rateLimitOnce = seconds }
    }

    func note(_ route: Route, keyID: String, name: String, at time: Date) {
        guard let action = FakeAuditEvent.action(route), let user = route.user else { return }
        let event = FakeAuditEvent(
            audit_id: "aud_" + FakeMixpeek.randomHex(8), timestamp: Timestamp.string(time), resource_id: keyID,
            action: action, actor_id: "usr_" + FakeMixpeek.shortHash(user), changes: ["user_email": user, "name": name])
        state.withLockedValue { state in
            // Bounded for long runs (benchmarks, soak), as the history is.
            if state.events.count >= 100_000 { state.events.removeFirst(50_000) }
            state.events.append(event)
        }
    }

    /// Answers `GET /v1/organizations/audit/logs` with the spec's filters and paging.
    func answer(_ request: HTTPRequest) -> HTTPResponse {
        guard request.method == .GET else {
            return FakeMixpeek.error(.methodNotAllowed, "Method Not Allowed", type: "method_not_allowed")
        }
        if let seconds = state.withLockedValue({ state -> Int? in defer { state.rateLimitOnce = nil }; return state.rateLimitOnce }) {
            var response = FakeMixpeek.error(.tooManyRequests, "Rate limit exceeded", type: "rate_limited")
            response.headers.add(name: "retry-after", value: String(seconds))
            return response
        }
        guard FakeMixpeek.bearerToken(request.headers) != nil else {
            return FakeMixpeek.error(.unauthorized, "Missing or invalid API key. Use 'Authorization: Bearer sk_...'.", type: "unauthorized")
        }
        var query: [String: String] = [:]
        for pair in (request.query ?? "").split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map { String($0).removingPercentEncoding ?? String($0) }
            query[parts[0]] = parts.count == 2 ? parts[1] : ""
        }
        func invalid(_ field: String, _ message: String) -> HTTPResponse {
            FakeMixpeek.invalid(ValidationFailure(["query", field], message, type: "value_error"))
        }
        let skip = query["skip"].map { Int($0) ?? -1 } ?? 0
        let limit = query["limit"].map { Int($0) ?? 0 } ?? 50
        guard skip >= 0 else { return invalid("skip", "Input should be greater than or equal to 0") }
        guard (1...1000).contains(limit) else { return invalid("limit", "Input should be between 1 and 1000") }
        var bounds: [String: Date] = [:]
        for field in ["start", "end"] {
            guard let text = query[field] else { continue }
            guard let date = FakeValidation.dateTime(text) else { return invalid(field, "Input should be an ISO 8601 timestamp") }
            bounds[field] = date
        }
        let matching = events.reversed().filter { event in
            for field in ["resource_type", "resource_id", "actor_id", "action"] {
                guard let wanted = query[field] else { continue }
                let value = switch field {
                case "resource_type": event.resource_type
                case "resource_id": event.resource_id
                case "actor_id": event.actor_id
                default: event.action
                }
                if value != wanted { return false }
            }
            guard bounds["start"] != nil || bounds["end"] != nil else { return true }
            guard let time = FakeValidation.dateTime(event.timestamp) else { return false }
            if let start = bounds["start"], time < start { return false }
            if let end = bounds["end"], time >= end { return false }
            return true
        }
        let page = Array(matching.dropFirst(skip).prefix(limit))
        return FakeMixpeek.encoded(FakeAuditPage(results: page, total: matching.count, skip: skip, limit: limit))
    }
}
