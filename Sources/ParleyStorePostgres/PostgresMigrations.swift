/// The PostgreSQL schema as an ordered list of migrations, tracked in `parley_schema_migrations`
/// (one row per applied version). Later issues append, never edit: a database carries the
/// versions it has, and a binary refuses a database with versions it does not know.
///
/// Each migration is a list of single statements: the extended query protocol, which binds
/// parameters, runs one statement per query.
enum PostgresMigrations {
    struct Migration: Sendable {
        let version: Int
        let name: String
        let statements: [String]
    }

    /// Serialises migrations between nodes that start at the same moment (a session-level
    /// advisory lock, released when the migrating connection ends even if it dies): any
    /// 64-bit constant that no other application on the database uses.
    static let advisoryLockKey: Int64 = 0x7061_726C_6579_0001 // "parley" 1

    static let all: [Migration] = [
        Migration(version: 1, name: "stable-identities", statements: [
            // The same shape as the SQLite store's v5 schema: rows refer to accounts and groups by
            // stable ids; guests by a text identity. Times are milliseconds since 1970.
            """
            CREATE TABLE accounts (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                key TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                salt BYTEA NOT NULL,
                iterations BIGINT NOT NULL,
                stored_key BYTEA NOT NULL,
                server_key BYTEA NOT NULL,
                created_at BIGINT NOT NULL,
                last_seen BIGINT,
                email TEXT,
                settings TEXT NOT NULL DEFAULT '{}'
            )
            """,
            """
            CREATE TABLE groups (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                key TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                owner_id BIGINT NOT NULL REFERENCES accounts(id),
                topic TEXT NOT NULL DEFAULT '',
                topic_set_by TEXT NOT NULL DEFAULT '',
                topic_set_at BIGINT,
                modes TEXT NOT NULL,
                password TEXT,
                user_limit BIGINT
            )
            """,
            """
            CREATE TABLE group_members (
                group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
                account_id BIGINT NOT NULL REFERENCES accounts(id),
                role BIGINT NOT NULL,
                PRIMARY KEY (group_id, account_id)
            )
            """,
            "CREATE INDEX group_members_by_account ON group_members(account_id)",
            """
            CREATE TABLE group_bans (
                position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
                mask TEXT NOT NULL,
                set_by TEXT NOT NULL,
                set_at BIGINT NOT NULL
            )
            """,
            "CREATE INDEX group_bans_by_group ON group_bans(group_id)",
            // `position` is the insertion order (SQLite's rowid): ties in time are broken by it,
            // and pruning walks it.
            """
            CREATE TABLE messages (
                id TEXT PRIMARY KEY,
                position BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
                time BIGINT NOT NULL,
                sender_id BIGINT,
                sender_guest TEXT,
                sender_nick TEXT NOT NULL,
                sender_prefix TEXT NOT NULL,
                target_kind TEXT NOT NULL,
                target_id BIGINT,
                target_guest TEXT,
                target_name TEXT,
                command TEXT NOT NULL,
                text TEXT NOT NULL,
                client_tags TEXT NOT NULL DEFAULT ''
            )
            """,
            "CREATE INDEX messages_by_target ON messages(target_kind, target_id, time)",
            "CREATE INDEX messages_by_sender ON messages(target_kind, sender_id, time)",
            """
            CREATE TABLE message_recipients (
                message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
                recipient_id BIGINT NOT NULL REFERENCES accounts(id),
                delivered_at BIGINT,
                read_at BIGINT,
                delivered_notified BOOLEAN NOT NULL DEFAULT FALSE,
                read_notified BOOLEAN NOT NULL DEFAULT FALSE,
                PRIMARY KEY (message_id, recipient_id)
            )
            """,
            // The start-up load finds what is still waiting without reading every recipient row.
            "CREATE INDEX message_recipients_waiting ON message_recipients(message_id) WHERE delivered_at IS NULL",
            """
            CREATE TABLE read_markers (
                account_id BIGINT NOT NULL REFERENCES accounts(id),
                target_kind TEXT NOT NULL,
                target_id BIGINT NOT NULL,
                time BIGINT NOT NULL,
                PRIMARY KEY (account_id, target_kind, target_id)
            )
            """,
        ]),
        Migration(version: 2, name: "cluster", statements: [
            // Nodes by name; a node's number is the top bits of its connection ids, so it stays
            // the same for a name (and at most 4095 names are ever used: checked at start).
            """
            CREATE TABLE cluster_nodes (
                number INT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                started_at BIGINT NOT NULL
            )
            """,
            // What nodes send each other, until the receiver takes it. Unlogged: it is worthless
            // after a database crash (every node then starts over), and WAL for it would cost
            // a write per batch.
            """
            CREATE UNLOGGED TABLE cluster_events (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                source INT NOT NULL,
                target INT NOT NULL,
                payload BYTEA NOT NULL
            )
            """,
            "CREATE INDEX cluster_events_by_target ON cluster_events(target, id)",
        ]),
        Migration(version: 3, name: "voice-apart", statements: [
            // Voice became a mark beside the role (an operator can be voiced): role 1 was voice.
            "ALTER TABLE group_members ADD COLUMN voiced BOOLEAN NOT NULL DEFAULT FALSE",
            "UPDATE group_members SET voiced = TRUE, role = 0 WHERE role = 1",
        ]),
        Migration(version: 4, name: "lighter-message-rows", statements: [
            // Checking these foreign keys ran a query per recipient row: a quarter of the
            // database's time on the message path. The store checks ids itself before writing,
            // accounts are never deleted, and the deletes of messages take their recipients' rows.
            "ALTER TABLE message_recipients DROP CONSTRAINT IF EXISTS message_recipients_message_id_fkey",
            "ALTER TABLE message_recipients DROP CONSTRAINT IF EXISTS message_recipients_recipient_id_fkey",
            // Message ids are compared byte by byte: a locale's collation made every index
            // insertion call strcoll for nothing (ids are ASCII and only tested for equality).
            #"ALTER TABLE messages ALTER COLUMN id TYPE TEXT COLLATE "C""#,
            #"ALTER TABLE message_recipients ALTER COLUMN message_id TYPE TEXT COLLATE "C""#,
        ]),
        Migration(version: 5, name: "node-failover", statements: [
            // Which node holds an undelivered recipient row in memory, to hand it over at the
            // recipient's next login; NULL: the node whose name starts the message id. When a
            // node dies, one survivor takes its rows over by setting this.
            "ALTER TABLE message_recipients ADD COLUMN holder TEXT",
            // A payload for a node that died before taking it goes back to its sender, which
            // learns which messages did not reach their recipients.
            "ALTER TABLE cluster_events ADD COLUMN returned_from INT",
            // Counts the times others took the node for dead: a node that was only cut off
            // finds out when it is back.
            "ALTER TABLE cluster_nodes ADD COLUMN declared_dead INT NOT NULL DEFAULT 0",
        ]),
        Migration(version: 6, name: "group-positions", statements: [
            // A group message became one row: members who get it as it is sent have no recipient
            // row, their state follows from when they joined (`since`, a message position) and
            // how far they have read. Messages stored before this migration have a row for each
            // of their recipients, so today's members count as joined after all of them. Their
            // receipts to an author who has no receipts client wait from `receipts_pending_since`.
            "ALTER TABLE accounts ADD COLUMN receipts_pending_since BIGINT",
            "ALTER TABLE group_members ADD COLUMN since BIGINT NOT NULL DEFAULT 0",
            "UPDATE group_members SET since = (SELECT COALESCE(MAX(position), 0) FROM messages)",
            """
            CREATE TABLE group_read_positions (
                group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
                account_id BIGINT NOT NULL REFERENCES accounts(id),
                read_until BIGINT NOT NULL,
                PRIMARY KEY (group_id, account_id)
            )
            """,
        ]),
        Migration(version: 7, name: "followed-receipts", statements: [
            // The node that follows the receipts of a dead node's messages (one of the nodes that
            // declare it dead: the first); NULL again when that node starts a new run.
            "ALTER TABLE cluster_nodes ADD COLUMN followed_by TEXT",
        ]),
        Migration(version: 8, name: "cluster-row-sequences", statements: [
            // A row written again after its INSERT timed out (which may have committed after
            // all) carries the same sender run and sequence: its receiver applies it once.
            "ALTER TABLE cluster_events ADD COLUMN sender_run BIGINT",
            "ALTER TABLE cluster_events ADD COLUMN sequence BIGINT",
        ]),
        Migration(version: 9, name: "conversations", statements: [
            // One index by conversation instead of two (by target and by sender, whose keys began
            // with a text compared under the database's collation at every step of every
            // insert). The key (`ConversationKey`) is computed by the database from the row, so
            // rows written by a node of an earlier version during an upgrade get it too.
            """
            ALTER TABLE messages ADD COLUMN conversation TEXT COLLATE "C" GENERATED ALWAYS AS (
                CASE WHEN target_kind = 'group' THEN 'g' || target_id::text
                     ELSE LEAST(COALESCE('a' || sender_id::text, sender_guest) COLLATE "C", COALESCE('a' || target_id::text, target_guest) COLLATE "C")
                          || ' ' ||
                          GREATEST(COALESCE('a' || sender_id::text, sender_guest) COLLATE "C", COALESCE('a' || target_id::text, target_guest) COLLATE "C")
                END) STORED
            """,
            // An account's direct conversations, for CHATHISTORY TARGETS.
            """
            CREATE TABLE conversation_parties (
                account_id BIGINT NOT NULL,
                conversation TEXT COLLATE "C" NOT NULL,
                PRIMARY KEY (account_id, conversation)
            )
            """,
            """
            INSERT INTO conversation_parties (account_id, conversation)
                SELECT sender_id, conversation FROM messages WHERE target_kind = 'direct' AND sender_id IS NOT NULL
                UNION SELECT target_id, conversation FROM messages WHERE target_kind = 'direct' AND target_id IS NOT NULL
            """,
            "DROP INDEX messages_by_target",
            "DROP INDEX messages_by_sender",
            "CREATE INDEX messages_by_conversation ON messages(conversation, time)",
        ]),
        Migration(version: 10, name: "conversation-parties-through", statements: [
            // How far `conversation_parties` is known complete (a message position): a node of a
            // version before 9 writes none, so what such nodes stored during a rolling upgrade
            // is recorded afterwards (`PostgresChatStore.recordConversationParties`), from here.
            "CREATE TABLE conversation_parties_through (position BIGINT NOT NULL)",
            "INSERT INTO conversation_parties_through VALUES (0)",
        ]),
    ]

    static var latestVersion: Int { all.last?.version ?? 0 }
}
