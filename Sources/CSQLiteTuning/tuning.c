#include <sqlite3.h>
#include "CSQLiteTuning.h"

int parley_sqlite_configure_single_user_connections(void) {
    int threading = sqlite3_config(SQLITE_CONFIG_MULTITHREAD);
    int statistics = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    return threading != SQLITE_OK ? threading : statistics;
}
