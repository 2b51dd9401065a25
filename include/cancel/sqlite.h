/*
 * <cancel/sqlite.h>: SQLite statements that a cancellation interrupts
 * (libcancel-sqlite, pkg-config cancel-sqlite, CMake cancel::sqlite).
 *
 * cancel_sqlite_step and cancel_sqlite_exec are sqlite3_step and
 * sqlite3_exec with a token. While one runs, a cancellation calls
 * sqlite3_interrupt on its connection, so a long query stops at once with
 * SQLITE_INTERRUPT (a few microseconds behind sqlite3_interrupt itself, the
 * price of the books below: docs/integrations.md), and the connection stays
 * usable.
 *
 *     sqlite3_stmt *st;
 *     sqlite3_prepare_v2(db, "SELECT ... FROM big ...", -1, &st, NULL);
 *     int rc;
 *     while ((rc = cancel_sqlite_step(tok, st)) == SQLITE_ROW)
 *         use_row(st);
 *     if (rc == SQLITE_INTERRUPT && cancel_token_is_requested(tok))
 *         ...stopped by the token (cancel_token_cause(tok) says why)...
 *     sqlite3_finalize(st);
 *
 * The interrupt belongs to the connection, not to a statement, and SQLite
 * keeps it set until its running statements are done. Calling
 * sqlite3_interrupt by hand therefore risks an interrupt that arrives just
 * after the step it was meant for and then fails the next statement. These
 * calls keep their books so that it does not happen:
 *  - the interrupt can be requested only while the call runs: it registers
 *    on the token when it starts and unregisters (waiting for a callback
 *    under way) before it returns;
 *  - if the interrupt was requested during the call, then before returning:
 *    a statement still running (it produced a row, or SQLITE_BUSY left it
 *    inside its transaction) is reset and the call returns SQLITE_INTERRUPT;
 *    and if no statement of the connection is active, the interrupt is
 *    cleared (by preparing an empty string), so that nothing later sees it,
 *    not even sqlite3_wal_checkpoint_v2, which SQLite does not clear it for.
 * So once no other statement of the connection is active, no interrupt is
 * pending when a call returns, whichever of the step and the cancellation
 * came first; a cancellation racing the end of a step yields either that
 * step's result or SQLITE_INTERRUPT.
 *
 * SQLite also clears the interrupt flag when a statement starts while no
 * other statement of the connection is active, which would lose a
 * cancellation landing between the call's last look at the token and that
 * start (the statement would then run to its end). So when the statement is
 * about to start on an idle connection, with a token that can be
 * cancelled, the call first starts a guard: a statement of its own, one row
 * of PRAGMA busy_timeout (no transaction, no lock; SELECT 1 if an
 * authorizer refuses the pragma), kept active until the step returns, then
 * finalized. With it active SQLite leaves the flag alone, and the
 * cancellation stops the statement as it starts. The guard costs a
 * statement start about a microsecond (docs/integrations.md), and you may
 * notice it: a trace callback sees it (its SQL begins with
 * CANCEL_SQLITE_GUARD_SQL), an authorizer is asked for it, a progress
 * handler counts its few VM steps, and sqlite3_next_stmt lists it during
 * the call. There is none for VACUUM (SQLite refuses VACUUM while another
 * statement is active) nor when neither guard can be prepared: there, a
 * cancellation landing in that instant (a few dozen nanoseconds, more if
 * the thread is preempted there) is seen only when the step returns.
 *
 * What this does to the connection's error state, when the interrupt was
 * requested during the call or a guard was used: sqlite3_errcode and
 * sqlite3_errmsg describe the statement's error as usual
 * (cancel_sqlite_step resets a failed statement to put them back after the
 * clearing or the guard, so your own sqlite3_reset of it then returns
 * SQLITE_OK; cancel_sqlite_exec finalizes it after the clearing). When the
 * call itself chose the result (SQLITE_INTERRUPT for a row given up, or
 * exec's SQLITE_INTERRUPT between steps, SQLITE_ABORT and SQLITE_NOMEM),
 * sqlite3_errmsg does not describe it; exec's *errmsg always does. After a
 * successful step with a guard, sqlite3_errcode is SQLITE_OK rather than
 * SQLITE_ROW or SQLITE_DONE.
 *
 * SQLite's own rule about other statements: while other statements of the
 * same connection are active (stepped, not yet reset or finished: an outer
 * loop over a query, or statements of other threads sharing the
 * connection), a cancellation interrupts them too, and any statement
 * prepared or started until they are all done, exactly as sqlite3_interrupt
 * does. Use a connection per cancellable unit of work to keep
 * cancellations apart.
 *
 * Conventions: the error rule of <cancel.h> gives way to SQLite's here; each
 * function returns what its SQLite counterpart returns (the result code,
 * extended if the connection asks for extended codes), plus SQLITE_INTERRUPT
 * for a cancellation. A token already cancelled returns SQLITE_INTERRUPT at
 * once: no step runs, nothing is prepared, the connection is not touched.
 * Threading follows SQLite's: no lock of ours is held; both calls hold the
 * connection's own mutex throughout (as sqlite3_exec does, and as
 * sqlite3_step does for the step), so other threads sharing the connection
 * wait for the call. The token's callback, which only calls
 * sqlite3_interrupt, runs on the cancelling thread (or the library thread
 * for asynchronous cancels and deadlines). A source freed uncancelled
 * during a call stops counting. Neither function may be called
 * from a cancellation callback (they block for the statement's duration).
 * They change errno only as SQLite's own calls do.
 */
#ifndef CANCEL_SQLITE_H
#define CANCEL_SQLITE_H

#include <cancel.h>

#include <sqlite3.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The SQL of a guard statement (see above) begins with this comment, so
 * that a trace callback can tell guards apart. */
#define CANCEL_SQLITE_GUARD_SQL "/* cancel_sqlite guard */ "

/* sqlite3_step(stmt) that a cancellation of `tok` interrupts. Returns
 * sqlite3_step's result, or SQLITE_INTERRUPT when the token ended the step
 * (or ended it as it returned: see above). SQLITE_INTERRUPT at once for a
 * token already cancelled, without stepping (sqlite3_errmsg then reports
 * whatever came before). SQLITE_MISUSE for a NULL statement. */
CANCEL_API int cancel_sqlite_step(cancel_token tok, sqlite3_stmt *stmt);

/* sqlite3_exec(db, sql, callback, arg, errmsg) that a cancellation of `tok`
 * interrupts: each statement of `sql` in turn is prepared, stepped (the
 * callback is called for each row, as sqlite3_exec calls it) and finalized;
 * the token is checked before each statement and each step, and a
 * cancellation interrupts the step under way. Returns SQLITE_OK, the first
 * error (SQLITE_ABORT if the callback returned non-zero), or
 * SQLITE_INTERRUPT when the token ended it; the statements already run stay
 * done (wrap them in a transaction to make them all-or-nothing). On error,
 * *errmsg (if errmsg is not NULL) is a message to free with sqlite3_free;
 * on success it is set to NULL. Like sqlite3_exec it holds the connection's
 * mutex throughout. The one behaviour of sqlite3_exec not reproduced is the
 * deprecated PRAGMA empty_result_callbacks. SQLITE_MISUSE for a NULL
 * connection; a NULL `sql` is an empty script. */
CANCEL_API int cancel_sqlite_exec(cancel_token tok, sqlite3 *db, const char *sql,
                                  int (*callback)(void *, int, char **, char **), void *arg,
                                  char **errmsg);

#ifdef __cplusplus
}
#endif

#endif /* CANCEL_SQLITE_H */
