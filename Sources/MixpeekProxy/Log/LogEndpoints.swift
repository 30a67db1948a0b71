import Foundation
import MixpeekHTTP
import MixpeekLog
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// `GET /_proxy/log/checkpoint`, `/_proxy/log/tile/<L>/<N>[.p/<W>]` and
/// `/_proxy/log/tile/entries/<N>[.p/<W>]`: the verifiable log as C2SP tlog-tiles serves it,
/// read-only, under the status page's access rule. Read on a connection of the status page's
/// reader, off the event loop.
extension Proxy {
    static let logPrefix = "/_proxy/log/"

    func logEndpoint(_ request: HTTPRequest, on eventLoop: any EventLoop) -> HTTPReply {
        guard settings.statusPage != .off else {
            return .now(ProxyError.notFound("the log is served with the status page, which is off (status_page = off)").response())
        }
        if let refusal = Self.statusRefusal(request, access: settings.statusPage) {
            return .now(refusal.response())
        }
        guard request.method == .GET || request.method == .HEAD else {
            return .now(ProxyError.methodNotAllowed(allowed: "GET, HEAD").response())
        }
        let path = request.path.dropFirst(Self.logPrefix.count)
        // A full tile never changes: once read, it is answered from memory, on the loop.
        if let bytes = fullTiles.bytes(of: path) { return .now(Self.tileResponse(bytes, full: true)) }
        let promise = eventLoop.makePromise(of: HTTPResponse.self)
        if let log {
            DispatchQueue.global(qos: .userInitiated).async {
                promise.succeed(Self.logResponse(path, checkpoint: log.latestCheckpoint, tile: self.fullTiles.keeping(path, log.tile)))
            }
        } else if let cosigner = (audit as? GroupAuditLog)?.cosigner {
            // The group's log, read from PostgreSQL.
            promise.completeWithTask {
                var note: String?
                var bytes: [UInt8]?
                var failure: (any Error)?
                do {
                    if path == "checkpoint" {
                        note = try await cosigner.servedCheckpoint()
                    } else if path.hasPrefix("tile/"), let tile = Tiles.parse(path.dropFirst("tile/".count)) {
                        bytes = try await cosigner.tile(tile)
                        if tile.isFull, let bytes { self.fullTiles.keep(bytes, for: path) }
                    }
                } catch {
                    failure = error
                }
                func read<T>(_ value: T?) throws -> T? {
                    if let failure { throw failure }
                    return value
                }
                return Self.logResponse(path, checkpoint: { try read(note) }, tile: { _ in try read(bytes) })
            }
        } else {
            return .now(ProxyError.notFound("this proxy serves no verifiable log (its audit log is not open)").response())
        }
        return .later(promise.futureResult)
    }

    /// A full tile never changes; a partial one is replaced by a wider one as the log grows.
    static func tileResponse(_ bytes: [UInt8], full: Bool) -> HTTPResponse {
        HTTPResponse(
            status: .ok,
            headers: ["Content-Type": "application/octet-stream",
                      "Cache-Control": full ? "public, max-age=31536000, immutable" : "no-cache"],
            body: ByteBuffer(bytes: bytes))
    }

    /// A lone proxy's log, from its audit file.
    static func logResponse(_ path: Substring, from log: AuditLog) -> HTTPResponse {
        logResponse(path, checkpoint: log.latestCheckpoint, tile: log.tile)
    }

    static func logResponse(_ path: Substring, checkpoint: () throws -> String?, tile read: (Tiles.Tile) throws -> [UInt8]?) -> HTTPResponse {
        do {
            if path == "checkpoint" {
                guard let note = try checkpoint() else { return ProxyError.notFound("the log has no checkpoint yet").response() }
                return HTTPResponse(
                    status: .ok, headers: ["Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"],
                    body: ByteBuffer(string: note))
            }
            guard path.hasPrefix("tile/"), let tile = Tiles.parse(path.dropFirst("tile/".count)) else {
                return ProxyError.notFound("no such log path; try /_proxy/log/checkpoint, /_proxy/log/tile/<L>/<N>[.p/<W>], /_proxy/log/tile/entries/<N>[.p/<W>]").response()
            }
            guard let bytes = try read(tile) else {
                return ProxyError.notFound("\(tile.path) is beyond the tree of the latest checkpoint").response()
            }
            return tileResponse(bytes, full: tile.isFull)
        } catch {
            return ProxyError.logUnreadable.response()
        }
    }
}

/// The full tiles served so far, in memory up to `capacity` bytes (the oldest dropped first):
/// they never change, so a mirror or an auditor fetching the log costs a lookup, not a read of
/// the audit file.
final class FullTiles: Sendable {
    private struct Store {
        var bytes: [String: [UInt8]] = [:]
        var order: [String] = []
        var total = 0
    }
    private let store = NIOLockedValueBox(Store())
    let capacity: Int

    init(capacity: Int = 16 << 20) { self.capacity = capacity }

    func bytes(of path: Substring) -> [UInt8]? {
        store.withLockedValue { $0.bytes[String(path)] }
    }

    func keep(_ bytes: [UInt8], for path: Substring) {
        store.withLockedValue { store in
            let key = String(path)
            guard store.bytes[key] == nil, bytes.count <= capacity else { return }
            while store.total + bytes.count > capacity, !store.order.isEmpty {
                let oldest = store.order.removeFirst()
                store.total -= store.bytes.removeValue(forKey: oldest)?.count ?? 0
            }
            store.bytes[key] = bytes
            store.order.append(key)
            store.total += bytes.count
        }
    }

    /// `read`, keeping what it gives for a full tile.
    func keeping(_ path: Substring, _ read: @escaping (Tiles.Tile) throws -> [UInt8]?) -> (Tiles.Tile) throws -> [UInt8]? {
        { tile in
            let bytes = try read(tile)
            if tile.isFull, let bytes { self.keep(bytes, for: path) }
            return bytes
        }
    }
}
