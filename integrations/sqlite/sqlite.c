/*
 * cancel_sqlite_step and cancel_sqlite_exec: sqlite3_interrupt from a
 * callback on the token, and the books that keep it from outliving the call.
 *
 * Locking and lifetime. A call registers one callback on the caller's token
 * for its duration; the callback's state (the connection and a "fired"
 * flag) lives on the calling thread's stack. The callback runs on the
 * cancelling thread (or the library thread), sets the flag and calls
 * sqlite3_interrupt, which SQLite allows from any thread while the
 * connection is open and which takes no lock. Before returning, the call
 * removes the registration with cancel_unregister, which waits for a
 * callback under way; after that nothing of ours touches the connection,
 * so the caller may close it. That wait is never refused with EDEADLK: the
 * callback blocks on nothing, so its thread cannot be part of a cycle of
 * waits. No lock of ours exists; cancel_sqlite_exec holds the connection's
 * mutex, as sqlite3_exec does, which sqlite3_interrupt never takes.
 *
 * The interrupt is a flag of the connection. SQLite clears it when a
 * statement is prepared or starts while no statement of the connection is
 * active, and tests it while statements run (and during
 * sqlite3_wal_checkpoint_v2, which does not clear it first). Our callback may
 * set it after the step it was meant for has returned (the cancellation
 * raced the end of the step). So once the callback fired during a call:
 *  - a statement still running (it produced a row, or SQLITE_BUSY left it
 *    inside its transaction) would fail its next step and keeps the flag
 *    from being cleared: it is reset (step) or finalized (exec) and the
 *    call reports SQLITE_INTERRUPT;
 *  - then, if no statement of the connection is active, the flag is cleared
 *    by preparing an empty string (the parser clears it on entry when no
 *    statement is active; an empty string makes no statement). That
 *    overwrites the connection's error state, so a statement that failed is
 *    reset (step) or finalized (exec) only afterwards, which copies its
 *    error back into sqlite3_errcode and sqlite3_errmsg;
 *  - if other statements are active the flag is theirs too (SQLite's rule,
 *    stated in the header) and is left for them.
 * Whether the callback ran is read from its flag, not from unregister's
 * result: unregister also returns false for a registration made inert by a
 * source freed uncancelled, which fired nothing.
 */
#include <cancel/sqlite.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>

struct interrupter {
    sqlite3 *db;
    /* Written by the callback, read by the calling thread once
     * cancel_unregister returned (which orders them already): relaxed. */
    atomic_bool fired;
};

static void interrupt_cb(void *arg)
{
    struct interrupter *it = arg;
    atomic_store_explicit(&it->fired, true, memory_order_relaxed);
    sqlite3_interrupt(it->db);
}

/* Registers; false if the token is already cancelled (nothing registered). */
static bool arm(struct interrupter *it, cancel_registration *reg, cancel_token tok, sqlite3 *db)
{
    it->db = db;
    atomic_init(&it->fired, false);
    return cancel_register_noinvoke(tok, reg, interrupt_cb, it) != ECANCELED;
}

/* Unregisters (waiting for a callback under way); returns whether it ran. */
static bool disarm(struct interrupter *it, cancel_registration *reg)
{
    int saved = errno;
    (void)cancel_unregister(reg);
    errno = saved;
    return atomic_load_explicit(&it->fired, memory_order_relaxed);
}

/* Clears the interrupt flag if no statement of db is active; returns
 * whether it did. Overwrites the connection's error state when it does.
 * Holds the connection's mutex (recursive) throughout: another thread
 * sharing the connection could otherwise finalize the statement the walk
 * is on, or start one between the walk and the clearing. */
static bool clear_if_idle(sqlite3 *db)
{
    sqlite3_mutex *mu = sqlite3_db_mutex(db);
    sqlite3_mutex_enter(mu);
    bool idle = true;
    for (sqlite3_stmt *s = sqlite3_next_stmt(db, NULL); s != NULL && idle; s = sqlite3_next_stmt(db, s))
        idle = !sqlite3_stmt_busy(s);
    if (idle) {
        sqlite3_stmt *none = NULL;
        (void)sqlite3_prepare_v2(db, "", 0, &none, NULL);
        sqlite3_finalize(none); /* NULL: an empty string makes no statement */
    }
    sqlite3_mutex_leave(mu);
    return idle;
}

int cancel_sqlite_step(cancel_token tok, sqlite3_stmt *stmt)
{
    if (stmt == NULL)
        return SQLITE_MISUSE;
    if (cancel_token_is_requested(tok))
        return SQLITE_INTERRUPT;
    sqlite3 *db = sqlite3_db_handle(stmt);
    struct interrupter it;
    cancel_registration reg;
    if (!arm(&it, &reg, tok, db))
        return SQLITE_INTERRUPT;
    /* From the registration on, a cancellation interrupts the step, except
     * in the instant between this check and SQLite's start of a fresh
     * statement, which clears the flag (header). */
    bool stepped = !cancel_token_is_requested(tok);
    int rc = stepped ? sqlite3_step(stmt) : SQLITE_INTERRUPT;
    if (!disarm(&it, &reg))
        return rc;
    bool failed = stepped && rc != SQLITE_ROW && rc != SQLITE_DONE;
    if (sqlite3_stmt_busy(stmt)) {
        (void)sqlite3_reset(stmt);
        rc = SQLITE_INTERRUPT;
        failed = false; /* a row or SQLITE_BUSY: no error of the statement's to keep */
    }
    if (clear_if_idle(db) && failed)
        (void)sqlite3_reset(stmt); /* the statement's error back into sqlite3_errmsg */
    return rc;
}

/* Steps one statement to its end, calling back for each row. Returns
 * SQLITE_DONE, the step's error, or our own code with *own set (the token,
 * the callback's abort, no memory); leaves finalizing to the caller. */
static int exec_rows(cancel_token tok, sqlite3_stmt *st,
                     int (*callback)(void *, int, char **, char **), void *arg, bool *own)
{
    char **cols = NULL; /* ncol names, ncol values, NULL */
    int ncol = 0, rc;
    for (;;) {
        if (cancel_token_is_requested(tok)) {
            rc = SQLITE_INTERRUPT;
            *own = true;
            break;
        }
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
            break;
        if (callback == NULL)
            continue;
        if (cols == NULL) {
            ncol = sqlite3_column_count(st);
            cols = sqlite3_malloc64(sizeof(char *) * (2 * (size_t)ncol + 1));
            if (cols == NULL) {
                rc = SQLITE_NOMEM;
                *own = true;
                break;
            }
            for (int i = 0; i < ncol; i++)
                cols[i] = (char *)sqlite3_column_name(st, i);
        }
        char **vals = cols + ncol;
        for (int i = 0; i < ncol && rc == SQLITE_ROW; i++) {
            vals[i] = (char *)sqlite3_column_text(st, i);
            if (vals[i] == NULL && sqlite3_column_type(st, i) != SQLITE_NULL)
                rc = SQLITE_NOMEM;
        }
        if (rc == SQLITE_NOMEM) {
            *own = true;
            break;
        }
        vals[ncol] = NULL;
        if (callback(arg, ncol, vals, cols) != 0) {
            rc = SQLITE_ABORT;
            *own = true;
            break;
        }
    }
    sqlite3_free(cols);
    return rc;
}

/* A token cancelled before anything started. */
static int interrupted(char **errmsg)
{
    if (errmsg != NULL)
        *errmsg = sqlite3_mprintf("%s", sqlite3_errstr(SQLITE_INTERRUPT));
    return SQLITE_INTERRUPT;
}

int cancel_sqlite_exec(cancel_token tok, sqlite3 *db, const char *sql,
                       int (*callback)(void *, int, char **, char **), void *arg, char **errmsg)
{
    if (errmsg != NULL)
        *errmsg = NULL;
    if (db == NULL)
        return SQLITE_MISUSE;
    if (cancel_token_is_requested(tok))
        return interrupted(errmsg);
    sqlite3_mutex *mu = sqlite3_db_mutex(db); /* NULL, a no-op, without SQLite's mutexes */
    sqlite3_mutex_enter(mu);
    struct interrupter it;
    cancel_registration reg;
    if (!arm(&it, &reg, tok, db)) {
        sqlite3_mutex_leave(mu);
        return interrupted(errmsg);
    }
    if (sql == NULL)
        sql = "";
    int rc = SQLITE_OK;
    bool own = false;
    sqlite3_stmt *failed = NULL; /* kept until the flag is settled: see the top */
    while (sql[0] != '\0') {
        if (cancel_token_is_requested(tok)) {
            rc = SQLITE_INTERRUPT;
            own = true;
            break;
        }
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        rc = sqlite3_prepare_v2(db, sql, -1, &st, &tail);
        if (rc != SQLITE_OK)
            break;
        sql = tail;
        if (st == NULL) /* only white space or a comment */
            continue;
        rc = exec_rows(tok, st, callback, arg, &own);
        if (rc == SQLITE_DONE) {
            rc = sqlite3_finalize(st);
            if (rc != SQLITE_OK)
                break;
            continue;
        }
        if (own)
            sqlite3_finalize(st);
        else
            failed = st;
        break;
    }
    /* The message, before clearing the flag overwrites the connection's. */
    char *msg = NULL;
    if (rc != SQLITE_OK && failed == NULL && errmsg != NULL)
        msg = sqlite3_mprintf("%s", own ? sqlite3_errstr(rc) : sqlite3_errmsg(db));
    if (disarm(&it, &reg)) {
        if (failed != NULL && sqlite3_stmt_busy(failed)) {
            /* SQLITE_BUSY left it inside its transaction, still active, so
             * the flag could not be cleared: give it up, as step does. */
            sqlite3_finalize(failed);
            failed = NULL;
            rc = SQLITE_INTERRUPT;
            if (errmsg != NULL) {
                sqlite3_free(msg);
                msg = sqlite3_mprintf("%s", sqlite3_errstr(rc));
            }
        }
        (void)clear_if_idle(db);
    }
    if (failed != NULL) {
        rc = sqlite3_finalize(failed); /* its error, back into sqlite3_errmsg */
        if (errmsg != NULL)
            msg = sqlite3_mprintf("%s", sqlite3_errmsg(db));
    }
    if (errmsg != NULL)
        *errmsg = msg;
    sqlite3_mutex_leave(mu);
    return rc;
}
