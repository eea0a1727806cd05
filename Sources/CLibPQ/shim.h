#ifndef WARREN_CLIBPQ_SHIM_H
#define WARREN_CLIBPQ_SHIM_H

#include <libpq-fe.h>

// libpq prints server NOTICEs ("relation ... already exists, skipping") to stderr by default,
// which breaks the services' one-JSON-object-per-line logs. Warren's SQL raises notices only
// for expected no-ops, so they are dropped.
static void warren_pq_ignore_notice(void *arg, const char *message) {
    (void)arg;
    (void)message;
}

static inline void warren_pq_quiet(PGconn *conn) {
    PQsetNoticeProcessor(conn, warren_pq_ignore_notice, NULL);
}

#endif
