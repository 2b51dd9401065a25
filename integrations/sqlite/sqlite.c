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
 * mutex, as sqlite3_exec does, which sqlite3_interrupt never takes;
 * cancel_sqlite_step holds it too, from before the guard (below) to the end
 * of its books, as sqlite3_step holds it for the whole step anyway. Holding
 * it keeps the list of statements still while the books walk it, and keeps
 * another thread sharing the connection from starting or ending a statement
 * between the guard's decision and the step.
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
 *
 * The guard. The clearing SQLite does when a statement starts with no other
 * active would also wipe an interrupt our callback set between the call's
 * last look at the token and that start: the cancellation would be lost and
 * the statement would run to its end, for ever for some. So before that
 * look, when the statement is about to start on an idle connection, the
 * call starts a statement of its own (a pragma that reads a setting: one
 * row, no transaction, no lock) and keeps it active until the step has
 * returned: with it active, SQLite leaves the flag alone. It is finalized
 * before the books, which overwrites the connection's error state, so a
 * statement that failed is then reset to copy its error back. Not for
 * VACUUM, which SQLite refuses to run beside another active statement.
 */
#include <cancel/sqlite.h>

#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

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

/* Whether a statement of db is active (stepped, neither reset nor done).
 * The caller holds the connection's mutex: another thread sharing the
 * connection could otherwise finalize the statement the walk is on. */
static bool any_active(sqlite3 *db)
{
    for (sqlite3_stmt *s = sqlite3_next_stmt(db, NULL); s != NULL; s = sqlite3_next_stmt(db, s))
        if (sqlite3_stmt_busy(s))
            return true;
    return false;
}

/* Clears the interrupt flag if no statement of db is active; returns
 * whether it did. Overwrites the connection's error state when it does.
 * The caller holds the connection's mutex, from the walk to the clearing,
 * so that no statement of another thread starts in between. */
static bool clear_if_idle(sqlite3 *db)
{
    if (any_active(db))
        return false;
    sqlite3_stmt *none = NULL;
    (void)sqlite3_prepare_v2(db, "", 0, &none, NULL);
    sqlite3_finalize(none); /* NULL: an empty string makes no statement */
    return true;
}

/* Whether the statement may be a VACUUM, judged by its first keyword after
 * white space and comments (no SQL text: it may be). */
static bool may_be_vacuum(sqlite3_stmt *stmt)
{
    const char *s = sqlite3_sql(stmt);
    if (s == NULL)
        return true;
    for (;;) {
        if (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\f' || *s == '\r') {
            s++;
        } else if (s[0] == '-' && s[1] == '-') {
            if ((s = strchr(s, '\n')) == NULL)
                return false;
        } else if (s[0] == '/' && s[1] == '*') {
            if ((s = strstr(s + 2, "*/")) == NULL)
                return false;
            s += 2;
        } else {
            break;
        }
    }
    if (sqlite3_strnicmp(s, "VACUUM", 6) != 0)
        return false;
    unsigned char next = (unsigned char)s[6]; /* the keyword ends there? */
    return !(isalnum(next) || next == '_' || next == '$' || next >= 0x80);
}

/* The guard (see the top): started before the token's last check when
 * `stmt` is about to start with no other statement of db active; NULL when
 * none is needed or none could be made. The caller holds the connection's
 * mutex until `stmt` has started, so that the "no other active" it was
 * judged on stays true. */
static sqlite3_stmt *guard_start(cancel_token tok, sqlite3 *db, sqlite3_stmt *stmt)
{
    if (!cancel_token_can_be_canceled(tok) || sqlite3_stmt_busy(stmt) || any_active(db) ||
        may_be_vacuum(stmt))
        return NULL;
    /* The pragma is the cheaper to prepare; SELECT 1 in case an authorizer
     * refuses pragmas. The comment names it in trace callbacks. */
    static const char *const sql[] = {CANCEL_SQLITE_GUARD_SQL "PRAGMA busy_timeout",
                                      CANCEL_SQLITE_GUARD_SQL "SELECT 1"};
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++) {
        sqlite3_stmt *g = NULL;
        if (sqlite3_prepare_v2(db, sql[i], -1, &g, NULL) == SQLITE_OK && g != NULL &&
            sqlite3_step(g) == SQLITE_ROW)
            return g;
        sqlite3_finalize(g);
    }
    return NULL;
}

int cancel_sqlite_step(cancel_token tok, sqlite3_stmt *stmt)
{
    if (stmt == NULL)
        return SQLITE_MISUSE;
    if (cancel_token_is_requested(tok))
        return SQLITE_INTERRUPT;
    sqlite3 *db = sqlite3_db_handle(stmt);
    /* Held throughout, as sqlite3_step holds it for the whole step anyway
     * (recursive; NULL, a no-op, without SQLite's mutexes). */
    sqlite3_mutex *mu = sqlite3_db_mutex(db);
    sqlite3_mutex_enter(mu);
    sqlite3_stmt *guard = guard_start(tok, db, stmt);
    struct interrupter it;
    cancel_registration reg;
    int rc = SQLITE_INTERRUPT;
    bool stepped = false, fired = false;
    if (arm(&it, &reg, tok, db)) {
        /* From the registration on, a cancellation interrupts the step: the
         * guard keeps SQLite from clearing the flag when the step starts. */
        stepped = !cancel_token_is_requested(tok);
        if (stepped)
            rc = sqlite3_step(stmt);
        fired = disarm(&it, &reg);
    }
    bool overwritten = guard != NULL; /* finalizing it overwrites the error state */
    sqlite3_finalize(guard);
    bool failed = stepped && rc != SQLITE_ROW && rc != SQLITE_DONE;
    if (fired) {
        if (sqlite3_stmt_busy(stmt)) {
            (void)sqlite3_reset(stmt);
            rc = SQLITE_INTERRUPT;
            failed = false; /* a row or SQLITE_BUSY: no error of the statement's to keep */
        }
        if (clear_if_idle(db))
            overwritten = true;
    }
    if (failed && overwritten)
        (void)sqlite3_reset(stmt); /* the statement's error back into sqlite3_errmsg */
    sqlite3_mutex_leave(mu);
    return rc;
}

/* Steps one statement to its end, calling back for each row. Returns
 * SQLITE_DONE, the step's error, or our own code with *own set (the token,
 * the callback's abort, no memory); leaves finalizing to the caller. */
static int exec_rows(cancel_token tok, sqlite3_stmt *st, sqlite3_stmt **guard,
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
        if (*guard != NULL) { /* the statement has started: the guard is done */
            sqlite3_finalize(*guard);
            *guard = NULL;
        }
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
        sqlite3_stmt *guard = guard_start(tok, db, st);
        rc = exec_rows(tok, st, &guard, callback, arg, &own);
        sqlite3_finalize(guard); /* the token stopped it before the first step */
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
