import AsyncHTTPClient
import Foundation
import MixpeekAPI
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Why the upstream's audit log could not be read. No case carries the token.
public enum UpstreamAuditError: Error, CustomStringConvertible, Equatable {
    /// 401 or 403: the token is not an admin key of the organisation.
    case notAdmin(status: Int)
    /// Any other answer that is not a page, after the retries.
    case failed(String)

    public var description: String {
        switch self {
        case .notAdmin(let status):
            "the upstream refused the audit log (\(status)): GET /v1/organizations/audit/logs needs a key with the ADMIN permission in MIXPEEK_PROXY_RECONCILE_TOKEN"
        case .failed(let why):
            "could not read the upstream's audit log: \(why)"
        }
    }
}

/// Reads the upstream's organisation audit log (`GET /v1/organizations/audit/logs`) page by
/// page, retrying failures with backoff and waiting out a 429's `Retry-After`. Its description
/// leaves the token out: a default one would print every stored property.
public struct UpstreamAuditLog: Sendable, CustomStringConvertible, CustomReflectable {
    public var baseURL: String
    public var pageSize: Int
    public var attempts: Int
    /// The longest a `Retry-After` is waited for, in seconds.
    public var longestWait: Double

    private let token: String

    public init(baseURL: String, token: String, pageSize: Int = 200, attempts: Int = 5, longestWait: Double = 120) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.token = token
        self.pageSize = pageSize
        self.attempts = attempts
        self.longestWait = longestWait
    }

    public var description: String { "UpstreamAuditLog(\(baseURL), page size \(pageSize))" }

    public var customMirror: Mirror { Mirror(self, children: ["baseURL": baseURL, "pageSize": pageSize]) }

    private struct Page: Decodable {
        var results: [UpstreamAuditEvent]
        var total: Int
    }

    /// Every `api_key` event from `start` (inclusive) to `end`, deduplicated by `audit_id` (a
    /// page boundary shifts when events arrive while it reads); `progress` is told the count
    /// read and the upstream's total after each page.
    public func events(start: Date, end: Date, progress: (Int, Int) -> Void = { _, _ in }) async throws -> [UpstreamAuditEvent] {
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(redirectConfiguration: .disallow))
        do {
            var seen = Set<String>()
            var events: [UpstreamAuditEvent] = []
            var skip = 0
            while true {
                let page = try await fetch(client, start: start, end: end, skip: skip)
                for event in page.results where seen.insert(event.audit_id).inserted { events.append(event) }
                skip += page.results.count
                progress(events.count, page.total)
                if page.results.isEmpty || skip >= page.total { break }
            }
            try await client.shutdown()
            return events
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    private func fetch(_ client: HTTPClient, start: Date, end: Date, skip: Int) async throws -> Page {
        let query = [
            ("resource_type", "api_key"), ("start", Timestamp.string(start)), ("end", Timestamp.string(end)),
            ("skip", String(skip)), ("limit", String(pageSize)),
        ].map { "\($0)=\(Self.escaped($1))" }.joined(separator: "&")
        var request = HTTPClientRequest(url: "\(baseURL)/v1/organizations/audit/logs?\(query)")
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Accept", value: "application/json")
        var lastProblem = ""
        for attempt in 0..<attempts {
            var wait = 0.5 * Double(1 << attempt)
            do {
                let response = try await client.execute(request, timeout: .seconds(30))
                let body = try await response.body.collect(upTo: 32 << 20)
                switch response.status.code {
                case 200:
                    do {
                        return try JSONDecoder().decode(Page.self, from: Data(buffer: body))
                    } catch {
                        throw UpstreamAuditError.failed("the answer is not an AuditEventListResponse (\(error))")
                    }
                case 401, 403:
                    throw UpstreamAuditError.notAdmin(status: Int(response.status.code))
                case 429:
                    lastProblem = "429 Too Many Requests"
                    if let seconds = response.headers.first(name: "retry-after").flatMap(Double.init) { wait = seconds }
                case 500...599:
                    lastProblem = "\(response.status.code) \(response.status.reasonPhrase)"
                default:
                    throw UpstreamAuditError.failed("\(response.status.code) \(response.status.reasonPhrase)")
                }
            } catch let error as UpstreamAuditError {
                throw error
            } catch {
                lastProblem = "\(error)"
            }
            if attempt + 1 < attempts {
                try await Task.sleep(nanoseconds: UInt64(min(wait, longestWait) * 1_000_000_000))
            }
        }
        throw UpstreamAuditError.failed("\(lastProblem), \(attempts) attempts")
    }

    private static func escaped(_ value: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
    }
}
