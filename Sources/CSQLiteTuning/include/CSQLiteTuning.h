#ifndef PARLEY_CSQLITE_TUNING_H
#define PARLEY_CSQLITE_TUNING_H

/// Process-wide SQLite settings for a program whose connections are each used by one thread at
/// a time (GRDB serializes every connection): no mutex around each API call, and no global
/// memory statistics (kept under a global mutex on every allocation). Must run before SQLite
/// is first used; later calls change nothing and return SQLITE_MISUSE.
/// sqlite3_config is variadic, which Swift cannot call: hence this C function.
int parley_sqlite_configure_single_user_connections(void);

#endif
