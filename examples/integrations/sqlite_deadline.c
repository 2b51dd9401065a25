/* A query that would never end, stopped by a 100 ms deadline; the
 * connection then runs the next statement as if nothing happened. */
#include <cancel/sqlite.h>
#include <stdio.h>

static const char *forever =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

static int print_row(void *arg, int ncol, char **vals, char **names) {
    (void)arg;
    for (int i = 0; i < ncol; i++)
        printf("%s = %s\n", names[i], vals[i] ? vals[i] : "NULL");
    return 0;
}

int main(void) {
    sqlite3 *db;
    sqlite3_open(":memory:", &db);
    cancel_source *src = cancel_source_new_child(CANCEL_TOKEN_NONE, 100 * 1000 * 1000, "query");
    cancel_token tok = cancel_source_token(src);

    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, forever, -1, &st, NULL);
    int64_t t0 = cancel_now();
    int rc = cancel_sqlite_step(tok, st);
    printf("step: %s after %.1f ms (%s)\n", sqlite3_errstr(rc), (cancel_now() - t0) / 1e6,
           cancel_reason_name(cancel_token_cause(tok).reason));
    sqlite3_finalize(st);

    /* No interrupt is left pending: the connection goes on. */
    char *err = NULL;
    rc = cancel_sqlite_exec(CANCEL_TOKEN_NONE, db, "SELECT 6 * 7 AS answer", print_row, NULL, &err);
    if (rc != SQLITE_OK)
        fprintf(stderr, "exec: %s\n", err);
    sqlite3_free(err);
    cancel_source_free(src);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : 1;
}
