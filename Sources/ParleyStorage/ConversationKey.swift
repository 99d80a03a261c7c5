/// The text that names a conversation in the stores: `g<group id>` for a group; for a direct
/// conversation its two parties (`a<account id>`, or a guest's identity) in byte order,
/// separated by a space, so that both directions of a conversation name the same one.
public enum ConversationKey {
    public static func group(_ id: Int64) -> String { "g\(id)" }

    public static func account(_ id: Int64) -> String { "a\(id)" }

    public static func direct(_ first: String, _ second: String) -> String {
        // Byte order, as the stores' SQL (SQLite's min and max, PostgreSQL's LEAST and GREATEST
        // under the "C" collation) compares text when it computes the same key.
        first.utf8.lexicographicallyPrecedes(second.utf8) ? first + " " + second : second + " " + first
    }
}
