import Foundation
import NIOCore
import ParleyWeb

/// The web client as served: its files read once at start-up, each with its content type and
/// caching rule, so a request costs no file system access.
///
/// Caching: `index.html` (at `/`) is revalidated on every load (`no-cache` with an ETag, answered
/// 304 when unchanged), so a new server version is seen at the next load. Every other file lives
/// under `/assets/VERSION/`, where VERSION is a hash of all of them together: those URLs never
/// change content, so browsers keep them for a year without asking. Relative imports between the
/// ES modules stay inside one version, so a page never mixes files of two versions.
struct WebClientFiles: Sendable {
    struct File: Sendable {
        let body: ByteBuffer
        let contentType: String
        let cacheControl: String
        let etag: String
    }

    /// The hash that names this set of assets in their URLs.
    let version: String
    private let files: [String: File]

    var isEmpty: Bool { files.isEmpty }

    static let indexCacheControl = "no-cache"
    static let assetCacheControl = "public, max-age=31536000, immutable"

    /// Content types by file extension; anything else is served as bytes.
    static let contentTypes: [String: String] = [
        "html": "text/html; charset=utf-8",
        "js": "text/javascript; charset=utf-8",
        "css": "text/css; charset=utf-8",
        "svg": "image/svg+xml",
        "png": "image/png",
        "ico": "image/x-icon",
        "json": "application/json",
        "webmanifest": "application/manifest+json",
        "txt": "text/plain; charset=utf-8",
    ]

    /// The files shipped with the server.
    static func bundled() throws -> WebClientFiles {
        WebClientFiles(sources: try ParleyWeb.files())
    }

    /// - Parameter sources: file contents by path relative to the site root; `index.html` has
    ///   every `ASSET_VERSION` replaced by the assets' version.
    init(sources: [String: Data]) {
        let assets = sources.filter { $0.key != "index.html" }
        var versionHash = FNV1a()
        for path in assets.keys.sorted() {
            versionHash.add(Array(path.utf8))
            versionHash.add([0])
            versionHash.add(Array(assets[path]!))
            versionHash.add([0])
        }
        let version = versionHash.hex
        self.version = version

        func file(_ bytes: [UInt8], path: String, cacheControl: String) -> File {
            var hash = FNV1a()
            hash.add(bytes)
            let ext = path.split(separator: ".").last.map { String($0).lowercased() } ?? ""
            return File(
                body: ByteBuffer(bytes: bytes), contentType: Self.contentTypes[ext] ?? "application/octet-stream",
                cacheControl: cacheControl, etag: "\"\(hash.hex)\"")
        }
        var files: [String: File] = [:]
        for (path, data) in assets {
            files["/assets/\(version)/\(path)"] = file(Array(data), path: path, cacheControl: Self.assetCacheControl)
        }
        if let index = sources["index.html"] {
            let text = String(decoding: index, as: UTF8.self).replacingOccurrences(of: "ASSET_VERSION", with: version)
            let page = file(Array(text.utf8), path: "index.html", cacheControl: Self.indexCacheControl)
            files["/"] = page
            files["/index.html"] = page
        }
        self.files = files
    }

    /// The file at a request path (without its query), if there is one.
    func file(at path: String) -> File? {
        files[path]
    }
}

/// FNV-1a, 64 bits: names versions and ETags. Not a security measure; only a change detector.
private struct FNV1a {
    private var value: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ bytes: [UInt8]) {
        for byte in bytes {
            value ^= UInt64(byte)
            value = value &* 0x0000_0100_0000_01b3
        }
    }

    var hex: String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
