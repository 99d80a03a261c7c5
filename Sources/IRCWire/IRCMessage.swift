/// One IRC protocol message, as described by modern.ircdocs.horse and the IRCv3 message-tags
/// specification: optional tags, an optional source, a command (verb or three-digit numeric)
/// and its parameters. Values are stored unescaped; the parser and serializer own escaping.
public struct IRCMessage: Sendable, Hashable {
    /// Tags in the order they were received or added. A tag sent without a value has value "".
    public var tags: [IRCTag]
    /// The `:source` prefix, without the colon, if any.
    public var source: String?
    /// The verb as received (not case-normalised) or a numeric such as "001".
    public var command: String
    /// Middle parameters followed by the trailing parameter, without the leading colon.
    public var parameters: [String]

    public init(tags: [IRCTag] = [], source: String? = nil, command: String, parameters: [String] = []) {
        self.tags = tags
        self.source = source
        self.command = command
        self.parameters = parameters
    }

    /// The value of the first tag named `key`: nil when absent, "" when present without a value.
    public func tagValue(_ key: String) -> String? {
        for tag in tags where tag.key == key { return tag.value }
        return nil
    }
}

/// One IRCv3 message tag. `key` includes any client-only `+` prefix and vendor part.
public struct IRCTag: Sendable, Hashable {
    public var key: String
    /// The unescaped value; "" when the tag had no value.
    public var value: String

    public init(_ key: String, _ value: String = "") {
        self.key = key
        self.value = value
    }
}
