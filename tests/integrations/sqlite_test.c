/* libcancel-sqlite against the real SQLite. */
#include "check.h"

#include <cancel/sqlite.h>
#include <stdbool.h>
#include <unistd.h>

/* SQLite's own configuration hooks, installed before SQLite starts: its
 * mutex methods, wrapped so that a test can act at exact points of a call
 * (each time the calling thread takes the connection's mutex, or releases
 * it for good), as another thread sharing the connection could; and its
 * allocator, wrapped to poison freed memory (lookaside off), so that a use
 * after free fails in every build, not only under AddressSanitizer. */
static sqlite3_mutex_methods real_mutex;
static sqlite3_mem_methods real_mem;

struct mutex_hook {
    sqlite3_mutex *mu; /* the connection's mutex */
    int depth;         /* how deep this thread holds it */
    int entered;       /* how many times this thread entered it */
    bool acting;       /* inside on_enter/on_release: no recursion */
    void (*on_enter)(struct mutex_hook *);   /* before each enter */
    void (*on_release)(struct mutex_hook *); /* after each full release */
    void *arg;
};
static _Thread_local struct mutex_hook *hook; /* the calling thread's, during one call */

static void hooked_enter(sqlite3_mutex *m)
{
    struct mutex_hook *h = hook;
    if (h != NULL && m == h->mu && !h->acting) {
        h->entered++;
        if (h->on_enter != NULL) {
            h->acting = true;
            h->on_enter(h);
            h->acting = false;
        }
    }
    real_mutex.xMutexEnter(m);
    if (h != NULL && m == h->mu)
        h->depth++;
}

static int hooked_try(sqlite3_mutex *m)
{
    int rc = real_mutex.xMutexTry(m);
    if (rc == SQLITE_OK && hook != NULL && m == hook->mu)
        hook->depth++;
    return rc;
}

static void hooked_leave(sqlite3_mutex *m)
{
    struct mutex_hook *h = hook;
    real_mutex.xMutexLeave(m);
    if (h != NULL && m == h->mu && --h->depth == 0 && !h->acting && h->on_release != NULL) {
        h->acting = true;
        h->on_release(h);
        h->acting = false;
    }
}

static void poisoned_free(void *p)
{
    if (p != NULL)
        memset(p, 0xA5, (size_t)real_mem.xSize(p));
    real_mem.xFree(p);
}

static void install_sqlite_hooks(void)
{
    /* SQLite fills in its default methods when it starts; they can be
     * replaced once it has shut down again. */
    CHECK_EQ(sqlite3_initialize(), SQLITE_OK);
    CHECK_EQ(sqlite3_shutdown(), SQLITE_OK);
    CHECK_EQ(sqlite3_config(SQLITE_CONFIG_GETMUTEX, &real_mutex), SQLITE_OK);
    CHECK_EQ(sqlite3_config(SQLITE_CONFIG_GETMALLOC, &real_mem), SQLITE_OK);
    CHECK(real_mutex.xMutexEnter != NULL && real_mem.xFree != NULL);
    sqlite3_mutex_methods m = real_mutex;
    m.xMutexEnter = hooked_enter;
    m.xMutexTry = hooked_try;
    m.xMutexLeave = hooked_leave;
    CHECK_EQ(sqlite3_config(SQLITE_CONFIG_MUTEX, &m), SQLITE_OK);
    sqlite3_mem_methods mem = real_mem;
    mem.xFree = poisoned_free;
    CHECK_EQ(sqlite3_config(SQLITE_CONFIG_MALLOC, &mem), SQLITE_OK);
    CHECK_EQ(sqlite3_config(SQLITE_CONFIG_LOOKASIDE, 0, 0), SQLITE_OK);
}

/* A query that never ends by itself: if the call returns, the token did it. */
static const char FOREVER[] =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

static char db_path[256];

/* A WAL database: a checkpoint that has frames to copy tests SQLite's
 * interrupt flag without clearing it first, which makes it the observer of
 * a pending interrupt (a statement would clear the flag when it starts). */
static sqlite3 *open_db(void)
{
    sqlite3 *db;
    unlink(db_path);
    char wal[300];
    snprintf(wal, sizeof wal, "%s-wal", db_path);
    unlink(wal);
    CHECK_EQ(sqlite3_open(db_path, &db), SQLITE_OK);
    CHECK_EQ(sqlite3_exec(db,
                          "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=OFF;"
                          "CREATE TABLE t(x INTEGER UNIQUE); INSERT INTO t VALUES (1), (2), (3);",
                          NULL, NULL, NULL),
             SQLITE_OK);
    return db;
}

/* Writes a frame to the WAL, so that the next checkpoint has work. */
static int next_row = 1000;
static void prime(sqlite3 *db)
{
    char sql[64];
    snprintf(sql, sizeof sql, "INSERT INTO t VALUES (%d)", next_row++);
    CHECK_EQ(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
}

/* No interrupt is pending: the checkpoint (primed) is not interrupted. */
static void check_no_pending(sqlite3 *db)
{
    CHECK_EQ(sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL), SQLITE_OK);
}

/* And the connection runs the next statement. */
static void check_usable(sqlite3 *db)
{
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &st, NULL), SQLITE_OK);
    CHECK_EQ(sqlite3_step(st), SQLITE_ROW);
    CHECK_EQ(sqlite3_finalize(st), SQLITE_OK);
}

static void observer_sees_a_pending_interrupt(void)
{
    sqlite3 *db = open_db();
    prime(db);
    sqlite3_interrupt(db);
    CHECK_EQ(sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL),
             SQLITE_INTERRUPT);
    sqlite3_close(db);
}

static void steps_like_sqlite3_step(void)
{
    sqlite3 *db = open_db();
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "SELECT x FROM t ORDER BY x", -1, &st, NULL), SQLITE_OK);
    cancel_source *src = cancel_source_new();
    int n = 0, rc;
    while ((rc = cancel_sqlite_step(cancel_source_token(src), st)) == SQLITE_ROW)
        CHECK_EQ(sqlite3_column_int(st, 0), ++n);
    CHECK_EQ(rc, SQLITE_DONE);
    CHECK_EQ(n, 3);
    CHECK_EQ(sqlite3_reset(st), SQLITE_OK);
    CHECK_EQ(cancel_sqlite_step(CANCEL_TOKEN_NONE, st), SQLITE_ROW);
    sqlite3_finalize(st);
    CHECK_EQ(cancel_sqlite_step(CANCEL_TOKEN_NONE, NULL), SQLITE_MISUSE);
    cancel_source_info info;
    cancel_source_get_info(src, &info);
    CHECK_EQ(info.registrations, 0); /* nothing left on the token */
    cancel_source_free(src);
    sqlite3_close(db);
}

static int count_rows(sqlite3 *db, const char *where)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM t WHERE %s", where);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    CHECK_EQ(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n;
}

static void already_cancelled_runs_nothing(void)
{
    sqlite3 *db = open_db();
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    cancel_token tok = cancel_source_token(src);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "INSERT INTO t VALUES (42)", -1, &st, NULL), SQLITE_OK);
    CHECK_EQ(cancel_sqlite_step(tok, st), SQLITE_INTERRUPT);
    CHECK(!sqlite3_stmt_busy(st));
    CHECK_EQ(sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 0), 0);
    sqlite3_finalize(st);
    char *msg = NULL;
    CHECK_EQ(cancel_sqlite_exec(tok, db, "INSERT INTO t VALUES (43)", NULL, NULL, &msg),
             SQLITE_INTERRUPT);
    CHECK_STR(msg, "interrupted");
    sqlite3_free(msg);
    CHECK_EQ(count_rows(db, "x IN (42, 43)"), 0);
    cancel_source_free(src);
    sqlite3_close(db);
}

/* The test's own progress handler (user state, which the calls never
 * touch) tells when the query is running. */
struct running {
    test_gate started;
};
static int on_progress(void *arg)
{
    test_gate_open(&((struct running *)arg)->started);
    return 0;
}

struct canceller {
    cancel_source *src;
    test_gate *when;
    int async;
    int64_t at;
};
static void *cancel_when(void *arg)
{
    struct canceller *c = arg;
    test_gate_wait(c->when);
    c->at = test_now_ns();
    if (c->async)
        cancel_source_cancel_async(c->src);
    else
        cancel_source_cancel(c->src);
    return NULL;
}

/* A recursive CTE that never ends, interrupted from another thread; the
 * next statement on the same connection succeeds. */
static void long_query_interrupted(int async)
{
    sqlite3 *db = open_db();
    prime(db);
    struct running r = {TEST_GATE_INIT};
    sqlite3_progress_handler(db, 1000, on_progress, &r);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, FOREVER, -1, &st, NULL), SQLITE_OK);
    cancel_source *src = cancel_source_new();
    struct canceller c = {src, &r.started, async, 0};
    pthread_t t = test_spawn(cancel_when, &c);
    CHECK_EQ(cancel_sqlite_step(cancel_source_token(src), st), SQLITE_INTERRUPT);
    int64_t back = test_now_ns();
    test_join(t);
    fprintf(stderr, "   %s: cancel to return %.1f us\n", async ? "async" : "sync",
            (double)(back - c.at) / 1e3);
    CHECK_EQ(sqlite3_errcode(db), SQLITE_INTERRUPT);
    CHECK_STR(sqlite3_errmsg(db), "interrupted");
    check_no_pending(db);
    CHECK_EQ(sqlite3_reset(st), SQLITE_OK); /* reset by the call already (header) */
    sqlite3_finalize(st);
    sqlite3_progress_handler(db, 0, NULL, NULL);
    check_usable(db);
    cancel_source_free(src);
    sqlite3_close(db);
}

static void long_query_interrupted_sync(void)
{
    long_query_interrupted(0);
}
static void long_query_interrupted_async(void)
{
    long_query_interrupted(1);
}

static void long_exec_interrupted(void)
{
    sqlite3 *db = open_db();
    prime(db);
    struct running r = {TEST_GATE_INIT};
    sqlite3_progress_handler(db, 1000, on_progress, &r);
    cancel_source *src = cancel_source_new();
    struct canceller c = {src, &r.started, 0, 0};
    pthread_t t = test_spawn(cancel_when, &c);
    char *msg = NULL;
    CHECK_EQ(cancel_sqlite_exec(cancel_source_token(src), db, FOREVER, NULL, NULL, &msg),
             SQLITE_INTERRUPT);
    test_join(t);
    CHECK_STR(msg, "interrupted");
    CHECK_STR(sqlite3_errmsg(db), "interrupted");
    sqlite3_free(msg);
    check_no_pending(db);
    sqlite3_progress_handler(db, 0, NULL, NULL);
    check_usable(db);
    CHECK_EQ(cancel_sqlite_exec(CANCEL_TOKEN_NONE, db, "SELECT 1", NULL, NULL, NULL), SQLITE_OK);
    cancel_source_free(src);
    sqlite3_close(db);
}

/* A deadline on the token (the library thread cancels). */
static void deadline_interrupts(void)
{
    sqlite3 *db = open_db();
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, FOREVER, -1, &st, NULL), SQLITE_OK);
    cancel_source *src = cancel_source_new_child(CANCEL_TOKEN_NONE, 20 * 1000 * 1000, "query");
    CHECK_EQ(cancel_sqlite_step(cancel_source_token(src), st), SQLITE_INTERRUPT);
    CHECK_EQ(cancel_token_cause(cancel_source_token(src)).reason, CANCEL_REASON_TIMEOUT);
    sqlite3_finalize(st);
    check_usable(db);
    cancel_source_free(src);
    sqlite3_close(db);
}

/* cancel_now(): an SQL function that cancels (or frees) the test's source
 * in the middle of a step, on the stepping thread: the callback then runs
 * inline, inside the step, at a known point. */
struct fn_ctx {
    cancel_source *src;
    int free_it;
    int value;
};
static void cancel_now_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc, (void)argv;
    struct fn_ctx *f = sqlite3_user_data(ctx);
    if (f->src != NULL) {
        if (f->free_it)
            cancel_source_free(f->src);
        else
            cancel_source_cancel(f->src);
        f->src = NULL;
    }
    sqlite3_result_int(ctx, f->value);
}

static sqlite3 *open_db_fn(struct fn_ctx *f)
{
    sqlite3 *db = open_db();
    CHECK_EQ(sqlite3_create_function(db, "cancel_now", 0, SQLITE_UTF8, f, cancel_now_fn, NULL, NULL),
             SQLITE_OK);
    return db;
}

/* The interrupt lands after the VM's last check: the step still produces a
 * row. The call gives the row up (resets the statement, SQLITE_INTERRUPT)
 * so that the late interrupt cannot fail the statement's next step. */
static void late_interrupt_on_a_row(void)
{
    struct fn_ctx f = {NULL, 0, 7};
    sqlite3 *db = open_db_fn(&f);
    prime(db);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "SELECT cancel_now()", -1, &st, NULL), SQLITE_OK);
    f.src = cancel_source_new();
    cancel_source *src = f.src;
    CHECK_EQ(cancel_sqlite_step(cancel_source_token(src), st), SQLITE_INTERRUPT);
    CHECK(!sqlite3_stmt_busy(st));
    check_no_pending(db);
    /* without the books, this step would fail with SQLITE_INTERRUPT */
    CHECK_EQ(sqlite3_step(st), SQLITE_ROW);
    CHECK_EQ(sqlite3_column_int(st, 0), 7);
    sqlite3_finalize(st);
    cancel_source_free(src);
    sqlite3_close(db);
}

/* The same on a statement that then finishes: SQLITE_DONE or
 * SQLITE_INTERRUPT, and nothing pending either way. */
static void late_interrupt_on_done(void)
{
    struct fn_ctx f = {NULL, 0, 50};
    sqlite3 *db = open_db_fn(&f);
    prime(db);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "INSERT INTO t VALUES (cancel_now())", -1, &st, NULL), SQLITE_OK);
    f.src = cancel_source_new();
    cancel_source *src = f.src;
    int rc = cancel_sqlite_step(cancel_source_token(src), st);
    CHECK(rc == SQLITE_DONE || rc == SQLITE_INTERRUPT);
    fprintf(stderr, "   result %s\n", rc == SQLITE_DONE ? "SQLITE_DONE" : "SQLITE_INTERRUPT");
    check_no_pending(db);
    sqlite3_finalize(st);
    check_usable(db);
    cancel_source_free(src);
    sqlite3_close(db);
}

/* A step that fails (constraint) while the interrupt lands: the error is
 * reported with its message, and nothing is pending. */
static void late_interrupt_on_error(void)
{
    struct fn_ctx f = {NULL, 0, 1}; /* 1 is already in t: UNIQUE fails */
    sqlite3 *db = open_db_fn(&f);
    sqlite3_extended_result_codes(db, 1);
    prime(db);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "INSERT INTO t VALUES (cancel_now())", -1, &st, NULL), SQLITE_OK);
    f.src = cancel_source_new();
    cancel_source *src = f.src;
    int rc = cancel_sqlite_step(cancel_source_token(src), st);
    fprintf(stderr, "   result %d\n", rc);
    if (rc != SQLITE_INTERRUPT) {
        CHECK_EQ(rc, SQLITE_CONSTRAINT_UNIQUE);
        CHECK_EQ(sqlite3_extended_errcode(db), SQLITE_CONSTRAINT_UNIQUE);
        CHECK_STR(sqlite3_errmsg(db), "UNIQUE constraint failed: t.x");
    }
    check_no_pending(db);
    sqlite3_finalize(st);
    check_usable(db);
    cancel_source_free(src);
    sqlite3_close(db);
}

/* A source freed uncancelled mid-step: the step goes on. */
static void freed_source_lets_step_finish(void)
{
    struct fn_ctx f = {NULL, 1, 9};
    sqlite3 *db = open_db_fn(&f);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "SELECT cancel_now()", -1, &st, NULL), SQLITE_OK);
    f.src = cancel_source_new();
    cancel_token tok = cancel_token_retain(cancel_source_token(f.src));
    CHECK_EQ(cancel_sqlite_step(tok, st), SQLITE_ROW);
    CHECK_EQ(sqlite3_column_int(st, 0), 9);
    CHECK_EQ(cancel_sqlite_step(tok, st), SQLITE_DONE);
    sqlite3_finalize(st);
    cancel_token_release(tok);
    sqlite3_close(db);
}

/* A statement waiting for a lock another connection holds: the busy handler
 * cancels the token and gives up, so SQLite returns SQLITE_BUSY with the
 * statement still active (inside its transaction) and the interrupt set.
 * The call gives the statement up (SQLITE_INTERRUPT) and clears the
 * interrupt: nothing is pending, nothing was written. */
static int busy_cancels(void *arg, int tries)
{
    (void)tries;
    cancel_source_cancel(arg);
    return 0;
}

static void cancelled_while_waiting_for_a_lock(int use_exec)
{
    sqlite3 *a = open_db(), *b;
    CHECK_EQ(sqlite3_open(db_path, &b), SQLITE_OK);
    CHECK_EQ(sqlite3_exec(a, "BEGIN IMMEDIATE; INSERT INTO t VALUES (60)", NULL, NULL, NULL), SQLITE_OK);
    cancel_source *src = cancel_source_new();
    cancel_token tok = cancel_source_token(src);
    sqlite3_busy_handler(b, busy_cancels, src);
    int rc;
    char *msg = NULL;
    if (use_exec) {
        rc = cancel_sqlite_exec(tok, b, "INSERT INTO t VALUES (61)", NULL, NULL, &msg);
    } else {
        sqlite3_stmt *st;
        CHECK_EQ(sqlite3_prepare_v2(b, "INSERT INTO t VALUES (61)", -1, &st, NULL), SQLITE_OK);
        rc = cancel_sqlite_step(tok, st);
        CHECK(!sqlite3_stmt_busy(st));
        sqlite3_finalize(st);
    }
    CHECK(cancel_token_is_requested(tok)); /* the busy handler did run */
    CHECK_EQ(rc, SQLITE_INTERRUPT);
    if (use_exec)
        CHECK_STR(msg, "interrupted");
    sqlite3_free(msg);
    sqlite3_busy_handler(b, NULL, NULL);
    CHECK_EQ(sqlite3_exec(a, "COMMIT", NULL, NULL, NULL), SQLITE_OK); /* frames for b to checkpoint */
    check_no_pending(b);
    CHECK_EQ(count_rows(b, "x = 61"), 0);
    CHECK_EQ(count_rows(b, "x = 60"), 1);
    cancel_source_free(src);
    sqlite3_close(b);
    sqlite3_close(a);
}

static void step_cancelled_while_waiting_for_a_lock(void)
{
    cancelled_while_waiting_for_a_lock(0);
}
static void exec_cancelled_while_waiting_for_a_lock(void)
{
    cancelled_while_waiting_for_a_lock(1);
}

/* Another thread shares the connection and finalizes its own statements
 * while a call looks at the connection's statements (to learn whether the
 * interrupt can be cleared). Played deterministically: each time the calling
 * thread releases the connection's mutex for good during the call, the
 * other thread (the hook, standing for it) finalizes its newest statement,
 * the first one the call would look at. The call must hold the mutex while
 * it walks the statements: a walk between two releases reads a finalized
 * statement (poisoned: a crash, or AddressSanitizer's report). */
struct finalizer {
    sqlite3_stmt *st[8];
    int n;
};
static void finalize_newest(struct mutex_hook *h)
{
    struct finalizer *f = h->arg;
    if (f->n > 0)
        CHECK_EQ(sqlite3_finalize(f->st[--f->n]), SQLITE_OK);
}

static void shared_connection_finalizes_meanwhile(void)
{
    struct fn_ctx f = {NULL, 0, 5};
    sqlite3 *db = open_db_fn(&f);
    if (sqlite3_db_mutex(db) == NULL) {
        fprintf(stderr, "   SQLite without mutexes: a connection cannot be shared\n");
        sqlite3_close(db);
        return;
    }
    prime(db);
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "SELECT cancel_now()", -1, &st, NULL), SQLITE_OK);
    struct finalizer fin = {{NULL}, 0};
    for (; fin.n < 8; fin.n++) /* prepared last: walked first */
        CHECK_EQ(sqlite3_prepare_v2(db, "SELECT x FROM t", -1, &fin.st[fin.n], NULL), SQLITE_OK);
    f.src = cancel_source_new();
    cancel_source *src = f.src;
    struct mutex_hook h = {sqlite3_db_mutex(db), 0, 0, false, NULL, finalize_newest, &fin};
    hook = &h;
    int rc = cancel_sqlite_step(cancel_source_token(src), st);
    hook = NULL;
    CHECK_EQ(rc, SQLITE_INTERRUPT);
    CHECK(fin.n < 8); /* the other thread did act during the call */
    fprintf(stderr, "   %d statements finalized meanwhile\n", 8 - fin.n);
    check_no_pending(db);
    while (fin.n > 0)
        sqlite3_finalize(fin.st[--fin.n]);
    sqlite3_finalize(st);
    check_usable(db);
    cancel_source_free(src);
    sqlite3_close(db);
}

/* A cancellation at every point where the call takes the connection's
 * mutex, one point per round: the k-th time, the hook (standing for another
 * thread) cancels. One of those points is SQLite's start of the statement,
 * right before it clears the interrupt flag (it does when no other
 * statement is active): a cancellation there, after the call's last look
 * at the token, must still stop the statement. The statement never ends by
 * itself; the test's own progress handler is the watchdog that stops it if
 * it runs on after the cancellation (and says so), or if the round's point
 * never came (the rounds are over). */
struct at_point {
    cancel_source *src;
    int k;          /* cancel at the k-th entry */
    bool cancelled; /* it did */
    int ticks;      /* progress calls since the cancellation (or the start) */
    bool ran_on;    /* the statement ran on long after the cancellation */
};
static void cancel_at_kth_entry(struct mutex_hook *h)
{
    struct at_point *a = h->arg;
    if (h->entered == a->k) {
        cancel_source_cancel(a->src);
        a->cancelled = true;
        a->ticks = 0;
    }
}
static int watchdog(void *arg)
{
    struct at_point *a = arg;
    if (!a->cancelled)
        return ++a->ticks > 2000; /* about 2 million VM steps: the point never came */
    if (++a->ticks > 100) { /* 100,000 VM steps after the cancellation */
        a->ran_on = true;
        return 1;
    }
    return 0;
}

static void cancelled_at_every_mutex_entry(int use_exec)
{
    sqlite3 *db = open_db();
    if (sqlite3_db_mutex(db) == NULL) {
        fprintf(stderr, "   SQLite without mutexes: no points to test\n");
        sqlite3_close(db);
        return;
    }
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, FOREVER, -1, &st, NULL), SQLITE_OK);
    int points = 0;
    for (int k = 1; k < 200; k++) {
        prime(db);
        struct at_point a = {cancel_source_new(), k, false, 0, false};
        cancel_token tok = cancel_source_token(a.src);
        sqlite3_progress_handler(db, 1000, watchdog, &a);
        struct mutex_hook h = {sqlite3_db_mutex(db), 0, 0, false, cancel_at_kth_entry, NULL, &a};
        hook = &h;
        int rc = use_exec ? cancel_sqlite_exec(tok, db, FOREVER, NULL, NULL, NULL) : cancel_sqlite_step(tok, st);
        hook = NULL;
        sqlite3_progress_handler(db, 0, NULL, NULL);
        CHECK_EQ(rc, SQLITE_INTERRUPT);
        CHECK(!sqlite3_stmt_busy(st));
        cancel_source_free(a.src);
        if (!a.cancelled)
            break; /* the call took the mutex fewer than k times */
        if (a.ran_on)
            fprintf(stderr, "   cancelled at entry %d of %d: the statement ran on\n", k, h.entered);
        CHECK(!a.ran_on);
        check_no_pending(db);
        points++;
    }
    fprintf(stderr, "   %d points\n", points);
    CHECK(points >= 2);
    sqlite3_finalize(st);
    check_usable(db);
    sqlite3_close(db);
}

static void step_cancelled_at_every_point(void)
{
    cancelled_at_every_mutex_entry(0);
}
static void exec_cancelled_at_every_point(void)
{
    cancelled_at_every_mutex_entry(1);
}

/* What the guard against the lost cancellation (an extra statement active
 * while a statement starts) must not change, with a token that can be
 * cancelled: VACUUM still runs (SQLite refuses it beside another active
 * statement: no guard for it), the journal mode still changes, a failed
 * statement still reports its error, and a trace callback sees only the
 * caller's statements. */
struct traced {
    int mine;   /* the test's statements */
    int guards; /* the calls' guards, named by their SQL */
};
static int on_trace(unsigned type, void *arg, void *p, void *x)
{
    (void)type, (void)p;
    struct traced *t = arg;
    if (strncmp((const char *)x, CANCEL_SQLITE_GUARD_SQL, strlen(CANCEL_SQLITE_GUARD_SQL)) == 0)
        t->guards++;
    else
        t->mine++;
    return 0;
}

static void guard_changes_nothing_visible(void)
{
    sqlite3 *db = open_db();
    cancel_source *src = cancel_source_new();
    cancel_token tok = cancel_source_token(src);
    struct traced traced = {0, 0};
    sqlite3_trace_v2(db, SQLITE_TRACE_STMT, on_trace, &traced);
    sqlite3_stmt *st;
    const char *vacuums[] = {"VACUUM", " /* c */ -- c\n vacuum main", "Vacuum;"};
    for (int i = 0; i < 3; i++) {
        CHECK_EQ(sqlite3_prepare_v2(db, vacuums[i], -1, &st, NULL), SQLITE_OK);
        CHECK_EQ(cancel_sqlite_step(tok, st), SQLITE_DONE);
        sqlite3_finalize(st);
        CHECK_EQ(cancel_sqlite_exec(tok, db, vacuums[i], NULL, NULL, NULL), SQLITE_OK);
    }
    CHECK_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode=DELETE", -1, &st, NULL), SQLITE_OK);
    CHECK_EQ(cancel_sqlite_step(tok, st), SQLITE_ROW);
    CHECK_STR((const char *)sqlite3_column_text(st, 0), "delete");
    sqlite3_finalize(st);
    CHECK_EQ(cancel_sqlite_exec(tok, db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL), SQLITE_OK);
    CHECK_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    CHECK_EQ(cancel_sqlite_step(tok, st), SQLITE_ROW);
    CHECK_STR((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    /* an error, not cancelled */
    sqlite3_extended_result_codes(db, 1);
    CHECK_EQ(sqlite3_prepare_v2(db, "INSERT INTO t VALUES (1)", -1, &st, NULL), SQLITE_OK);
    CHECK_EQ(cancel_sqlite_step(tok, st), SQLITE_CONSTRAINT_UNIQUE);
    CHECK_EQ(sqlite3_extended_errcode(db), SQLITE_CONSTRAINT_UNIQUE);
    CHECK_STR(sqlite3_errmsg(db), "UNIQUE constraint failed: t.x");
    sqlite3_finalize(st);
    char *msg = NULL;
    CHECK_EQ(cancel_sqlite_exec(tok, db, "INSERT INTO t VALUES (2)", NULL, NULL, &msg),
             SQLITE_CONSTRAINT_UNIQUE);
    CHECK_STR(msg, "UNIQUE constraint failed: t.x");
    CHECK_STR(sqlite3_errmsg(db), "UNIQUE constraint failed: t.x");
    sqlite3_free(msg);
    /* rows, and a statement run to its end */
    CHECK_EQ(sqlite3_prepare_v2(db, "SELECT x FROM t ORDER BY x", -1, &st, NULL), SQLITE_OK);
    int n = 0, rc;
    while ((rc = cancel_sqlite_step(tok, st)) == SQLITE_ROW)
        CHECK_EQ(sqlite3_column_int(st, 0), ++n);
    CHECK_EQ(rc, SQLITE_DONE);
    sqlite3_finalize(st);
    /* statements traced: 3 x 2 VACUUMs, 2 journal_mode, 1 query, 2 inserts,
     * 1 select; a guard before each but the VACUUMs, and none for the
     * select's steps after its first */
    CHECK_EQ(traced.mine, 12);
    CHECK_EQ(traced.guards, 6);
    CHECK(!cancel_token_is_requested(tok));
    sqlite3_close(db);
    cancel_source_free(src);
}

/* SQLite's rule, as the header states it: another active statement of the
 * connection is interrupted too. */
static void other_active_statement_is_interrupted_too(void)
{
    sqlite3 *db = open_db();
    sqlite3_stmt *outer, *inner;
    CHECK_EQ(sqlite3_prepare_v2(db, "SELECT x FROM t", -1, &outer, NULL), SQLITE_OK);
    CHECK_EQ(sqlite3_step(outer), SQLITE_ROW);
    struct running r = {TEST_GATE_INIT};
    sqlite3_progress_handler(db, 1000, on_progress, &r);
    CHECK_EQ(sqlite3_prepare_v2(db, FOREVER, -1, &inner, NULL), SQLITE_OK);
    cancel_source *src = cancel_source_new();
    struct canceller c = {src, &r.started, 0, 0};
    pthread_t t = test_spawn(cancel_when, &c);
    CHECK_EQ(cancel_sqlite_step(cancel_source_token(src), inner), SQLITE_INTERRUPT);
    test_join(t);
    sqlite3_progress_handler(db, 0, NULL, NULL);
    CHECK_EQ(sqlite3_step(outer), SQLITE_INTERRUPT);
    sqlite3_finalize(inner);
    sqlite3_finalize(outer);
    check_usable(db); /* once none is active, the next statement runs */
    cancel_source_free(src);
    sqlite3_close(db);
}

struct rows {
    int n;
    int abort_at;
    cancel_source *cancel_at_first;
    char seen[128];
};
static int on_row(void *arg, int ncol, char **vals, char **names)
{
    struct rows *r = arg;
    CHECK_EQ(ncol, 2);
    CHECK_STR(names[0], "x");
    CHECK_STR(names[1], "y");
    CHECK(vals[2] == NULL);
    size_t len = strlen(r->seen);
    snprintf(r->seen + len, sizeof r->seen - len, "%s:%s;", vals[0], vals[1] ? vals[1] : "NULL");
    if (r->cancel_at_first != NULL)
        cancel_source_cancel(r->cancel_at_first);
    return ++r->n == r->abort_at;
}

static void exec_like_sqlite3_exec(void)
{
    sqlite3 *db = open_db();
    struct rows r = {0, 0, NULL, ""};
    char *msg = (char *)1;
    CHECK_EQ(cancel_sqlite_exec(CANCEL_TOKEN_NONE, db,
                                "  -- a comment\n CREATE TABLE u(x, y); INSERT INTO u VALUES (1, 'a'), (2, NULL);"
                                "SELECT x, y FROM u ORDER BY x;  ",
                                on_row, &r, &msg),
             SQLITE_OK);
    CHECK(msg == NULL);
    CHECK_STR(r.seen, "1:a;2:NULL;");
    /* the callback aborts */
    r = (struct rows){0, 1, NULL, ""};
    CHECK_EQ(cancel_sqlite_exec(CANCEL_TOKEN_NONE, db, "SELECT x, y FROM u ORDER BY x", on_row, &r, &msg),
             SQLITE_ABORT);
    CHECK_STR(msg, "query aborted");
    sqlite3_free(msg);
    CHECK_EQ(r.n, 1);
    /* an error */
    CHECK_EQ(cancel_sqlite_exec(CANCEL_TOKEN_NONE, db, "SELECT * FROM nowhere", NULL, NULL, &msg),
             SQLITE_ERROR);
    CHECK_STR(msg, "no such table: nowhere");
    sqlite3_free(msg);
    CHECK_EQ(cancel_sqlite_exec(CANCEL_TOKEN_NONE, db, "INSERT INTO t VALUES (1)", NULL, NULL, &msg),
             SQLITE_CONSTRAINT);
    CHECK_STR(msg, "UNIQUE constraint failed: t.x");
    sqlite3_free(msg);
    CHECK_EQ(cancel_sqlite_exec(CANCEL_TOKEN_NONE, db, NULL, NULL, NULL, NULL), SQLITE_OK);
    CHECK_EQ(cancel_sqlite_exec(CANCEL_TOKEN_NONE, NULL, "SELECT 1", NULL, NULL, NULL), SQLITE_MISUSE);
    sqlite3_close(db);
}

/* A cancellation from the row callback stops the statement and the script:
 * the statements after it do not run. */
static void exec_cancelled_from_callback(void)
{
    sqlite3 *db = open_db();
    prime(db);
    CHECK_EQ(sqlite3_exec(db, "CREATE TABLE u(x, y); INSERT INTO u VALUES (1, 'a'), (2, 'b');", NULL,
                          NULL, NULL),
             SQLITE_OK);
    prime(db);
    cancel_source *src = cancel_source_new();
    struct rows r = {0, 0, src, ""};
    char *msg = NULL;
    CHECK_EQ(cancel_sqlite_exec(cancel_source_token(src), db,
                                "SELECT x, y FROM u ORDER BY x; INSERT INTO t VALUES (77);", on_row,
                                &r, &msg),
             SQLITE_INTERRUPT);
    CHECK_EQ(r.n, 1);
    CHECK_STR(msg, "interrupted");
    sqlite3_free(msg);
    check_no_pending(db);
    CHECK_EQ(count_rows(db, "x = 77"), 0);
    cancel_source_free(src);
    sqlite3_close(db);
}

/* Cancellation racing the end of steps, many times: each result is the
 * step's or SQLITE_INTERRUPT, and no interrupt is ever left pending. */
static void race_with_end_of_steps(int use_exec)
{
    sqlite3 *db = open_db();
    sqlite3_stmt *st;
    CHECK_EQ(sqlite3_prepare_v2(db, "SELECT x FROM t WHERE x < 4", -1, &st, NULL), SQLITE_OK);
    test_racer r;
    test_racer_start(&r, 0x2545f4914f6cdd1du, 16);
    int n = TEST_SCALE(3000), interrupted = 0, completed = 0;
    for (int i = 0; i < n; i++) {
        prime(db);
        cancel_source *src = cancel_source_new();
        test_racer_go(&r, src);
        int rc;
        if (use_exec) {
            rc = cancel_sqlite_exec(cancel_source_token(src), db,
                                    "SELECT x FROM t WHERE x < 4; SELECT 1", NULL, NULL, NULL);
            CHECK(rc == SQLITE_OK || rc == SQLITE_INTERRUPT);
            rc = rc == SQLITE_OK ? SQLITE_DONE : rc;
        } else {
            int rows = 0;
            while ((rc = cancel_sqlite_step(cancel_source_token(src), st)) == SQLITE_ROW)
                rows++;
            CHECK(rc == SQLITE_DONE || rc == SQLITE_INTERRUPT);
            if (rc == SQLITE_DONE)
                CHECK_EQ(rows, 3);
            sqlite3_reset(st);
        }
        test_racer_wait(&r);
        if (rc == SQLITE_DONE)
            completed++;
        else
            interrupted++;
        /* the canceller is done: whatever it did is in */
        check_no_pending(db);
        cancel_source_free(src);
    }
    test_racer_stop(&r);
    fprintf(stderr, "   %d completed, %d interrupted\n", completed, interrupted);
    check_usable(db);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void race_steps(void)
{
    race_with_end_of_steps(0);
}
static void race_exec(void)
{
    race_with_end_of_steps(1);
}

int main(void)
{
    const char *dir = getenv("TMPDIR");
    snprintf(db_path, sizeof db_path, "%s/cancel-sqlite-test-%d.db", dir ? dir : "/tmp", (int)getpid());
    fprintf(stderr, "SQLite %s\n", sqlite3_libversion());
    install_sqlite_hooks();
    RUN(observer_sees_a_pending_interrupt);
    RUN(steps_like_sqlite3_step);
    RUN(already_cancelled_runs_nothing);
    RUN(long_query_interrupted_sync);
    RUN(long_query_interrupted_async);
    RUN(long_exec_interrupted);
    RUN(deadline_interrupts);
    RUN(late_interrupt_on_a_row);
    RUN(late_interrupt_on_done);
    RUN(late_interrupt_on_error);
    RUN(freed_source_lets_step_finish);
    RUN(step_cancelled_while_waiting_for_a_lock);
    RUN(exec_cancelled_while_waiting_for_a_lock);
    RUN(shared_connection_finalizes_meanwhile);
    RUN(step_cancelled_at_every_point);
    RUN(exec_cancelled_at_every_point);
    RUN(guard_changes_nothing_visible);
    RUN(other_active_statement_is_interrupted_too);
    RUN(exec_like_sqlite3_exec);
    RUN(exec_cancelled_from_callback);
    RUN(race_steps);
    RUN(race_exec);
    unlink(db_path);
    char wal[300];
    snprintf(wal, sizeof wal, "%s-wal", db_path);
    unlink(wal);
    snprintf(wal, sizeof wal, "%s-shm", db_path);
    unlink(wal);
    cancel_quiesce(CANCEL_INFINITE);
    return 0;
}
