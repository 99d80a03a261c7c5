import Foundation

/// The web client's static files (`site/`: hand-written HTML, CSS and ES modules, no build step),
/// shipped as package resources. This module only finds them; the server decides how to serve them.
public enum ParleyWeb {
    /// Every file under `site/`, keyed by its path relative to it (`index.html`, `app.js`, ...);
    /// empty when the resources are not installed beside the executable.
    public static func files() throws -> [String: Data] {
        guard let root = siteDirectory else { return [:] }
        var files: [String: Data] = [:]
        let enumerator = FileManager.default.enumerator(at: root, includingPropertiesForKeys: [.isRegularFileKey])
        let rootPath = root.standardizedFileURL.path
        while let url = enumerator?.nextObject() as? URL {
            guard (try url.resourceValues(forKeys: [.isRegularFileKey])).isRegularFile == true else { continue }
            let path = url.standardizedFileURL.path
            guard path.hasPrefix(rootPath + "/") else { continue }
            files[String(path.dropFirst(rootPath.count + 1))] = try Data(contentsOf: url)
        }
        return files
    }

    /// Where SwiftPM puts this module's resources: a bundle beside the executable (which is also
    /// where `swift run` and `swift test` find it). Looked up by hand rather than through
    /// `Bundle.module`, which stops the process with a fatal error when the bundle is missing (a
    /// binary copied elsewhere without it): a server without its web files should still serve IRC.
    static var siteDirectory: URL? {
        let bundleName = "Parley_ParleyWeb.resources"
        let executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath().deletingLastPathComponent()
        let candidates = [Bundle.main.bundleURL, executable].map {
            $0.appendingPathComponent(bundleName).appendingPathComponent("site")
        }
        return candidates.first { FileManager.default.fileExists(atPath: $0.path) }
    }
}
