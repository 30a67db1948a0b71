import Foundation
import MixpeekProxy
import NIOConcurrencyHelpers
import NIOCore

/// A request-log sink that keeps what it is given in memory; `hold()` makes its writes wait
/// until `release()`, to play a disk that cannot keep up.
final class LineSink: AccessLogSink {
    private let bytes = NIOLockedValueBox([UInt8]())
    private let gate = NIOLockedValueBox(false)
    private let opened = NIOLockedValueBox(0)

    var text: String { String(decoding: bytes.withLockedValue { $0 }, as: UTF8.self) }
    var lines: [String] { text.split(separator: "\n").map(String.init) }
    var reopens: Int { opened.withLockedValue { $0 } }

    func hold() { gate.withLockedValue { $0 = true } }
    func release() { gate.withLockedValue { $0 = false } }

    func write(_ lines: ByteBuffer) throws {
        while gate.withLockedValue({ $0 }) { usleep(1000) }
        bytes.withLockedValue { $0.append(contentsOf: lines.readableBytesView) }
    }

    func reopen() throws {
        opened.withLockedValue { $0 += 1 }
    }
}
