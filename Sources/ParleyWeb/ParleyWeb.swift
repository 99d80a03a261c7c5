import Foundation

/// The web client's static files (`site/`: hand-written HTML, CSS and ES modules, no build step),
/// shipped as package resources. This module only finds them; the server decides how to serve them.
public enum ParleyWeb {
    /// Every file under `site/`, keyed by its path relative to it (`index.html`, `app.js`, ...).
    public static func files() throws -> [String: Data] {
        guard let root = Bundle.module.url(forResource: "site", withExtension: nil) else { return [:] }
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
}
