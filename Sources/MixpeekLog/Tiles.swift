/// C2SP tlog-tiles: the tree served as static tiles of height 8 (256 hashes a full tile).
///
/// A hash tile at level L and index N holds the tree's level-8·L subtree hashes
/// N·256 … N·256+W−1, concatenated (W = 256 for a full tile); an entry bundle N holds entries
/// N·256 … N·256+W−1, each a big-endian uint16 length and then its bytes.
public enum Tiles {
    public static let height = 8
    public static let width = 1 << height

    /// A tile's place: `level` nil for an entry bundle; `width` below 256 for a partial tile.
    public struct Tile: Equatable, Sendable, CustomStringConvertible {
        public var level: Int?
        public var index: Int64
        public var width: Int

        public init(level: Int?, index: Int64, width: Int = Tiles.width) {
            self.level = level
            self.index = index
            self.width = width
        }

        public var isFull: Bool { width == Tiles.width }

        /// `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`.
        public var path: String {
            "tile/" + (level.map(String.init) ?? "entries") + "/" + Tiles.encodeIndex(index) + (isFull ? "" : ".p/\(width)")
        }

        public var description: String { path }
    }

    /// N in path form: three-digit groups, every one but the last prefixed `x`
    /// (1234067 → `x001/x234/067`).
    public static func encodeIndex(_ n: Int64) -> String {
        var groups: [String] = []
        var rest = n
        repeat {
            let group = String(rest % 1000)
            groups.insert(String(repeating: "0", count: 3 - group.count) + group, at: 0)
            rest /= 1000
        } while rest > 0
        return groups.dropLast().map { "x" + $0 }.joined(separator: "/") + (groups.count > 1 ? "/" : "") + groups.last!
    }

    /// The tile named by `path` (what follows `tile/`), or nil when it is not one exactly as
    /// `Tile.path` writes it (so each tile has one name).
    public static func parse(_ path: Substring) -> Tile? {
        var parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count >= 2 else { return nil }
        let levelPart = parts.removeFirst()
        let level: Int?
        if levelPart == "entries" {
            level = nil
        } else {
            guard let parsed = Int(levelPart), String(parsed) == levelPart, (0...63).contains(parsed) else { return nil }
            level = parsed
        }
        var width = Tiles.width
        if parts.count >= 2, parts[parts.count - 2].hasSuffix(".p") {
            guard let w = Int(parts[parts.count - 1]), String(w) == parts[parts.count - 1], (1..<Tiles.width).contains(w) else { return nil }
            width = w
            parts.removeLast()
            parts[parts.count - 1] = parts[parts.count - 1].dropLast(2)
        }
        var index: Int64 = 0
        for (position, part) in parts.enumerated() {
            let last = position == parts.count - 1
            let digits = last ? part : (part.first == "x" ? part.dropFirst() : "")
            guard digits.count == 3, digits.allSatisfy(\.isASCII), let value = Int64(digits), value >= 0 else { return nil }
            let (product, overflow) = index.multipliedReportingOverflow(by: 1000)
            guard !overflow else { return nil }
            index = product + value
        }
        let tile = Tile(level: level, index: index, width: width)
        return tile.path == "tile/" + path ? tile : nil
    }

    /// The hashes of hash tile `tile` in a tree of `size` entries, read from the log's
    /// subtree hashes; nil when the tree has no such tile (past its end, or a partial tile
    /// other than its last one's width).
    public static func hashTile(_ tile: Tile, size: Int64, read: SubtreeReader) throws -> [UInt8]? {
        guard let level = tile.level else { return nil }
        let subtreeLevel = level * height
        // How many level-`subtreeLevel` subtrees the tree has complete.
        let complete = size >> subtreeLevel
        let start = tile.index * Int64(width)
        guard start < complete else { return nil }
        let available = min(Int64(width), complete - start)
        guard tile.isFull ? available == Int64(width) : Int64(tile.width) <= available else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(tile.width * TreeHash.size)
        for n in start..<(start + Int64(tile.width)) {
            bytes += try read(subtreeLevel, n).bytes
        }
        return bytes
    }

    /// An entry bundle: each entry as a big-endian uint16 length, then its bytes.
    public static func entryBundle(_ entries: [[UInt8]]) -> [UInt8] {
        var bytes: [UInt8] = []
        for entry in entries {
            precondition(entry.count <= 0xFFFF, "an entry is at most 65,535 bytes")
            bytes += [UInt8(entry.count >> 8), UInt8(entry.count & 0xFF)] + entry
        }
        return bytes
    }
}
