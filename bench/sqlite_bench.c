/*
 * sqlite_bench: how long an interrupted query takes to return, measured
 * from the cancel call on another thread to the step's return, on a query
 * that never ends by itself (a recursive CTE):
 *   - cancel_sqlite_step, cancelled with cancel_source_cancel;
 *   - the raw mechanism: sqlite3_step, and sqlite3_interrupt called
 *     directly by the other thread.
 * The kinds alternate sample by sample. Two figures: to the step's return,
 * and to the statement being reset for reuse (sqlite3_reset after the
 * return; cancel_sqlite_step has reset it already, and cleared SQLite's
 * interrupt flag, which the raw way leaves set). Then what the token costs a step
 * that is not cancelled: cancel_sqlite_step beside sqlite3_step on a
 * one-row statement (ns per step, medians of alternating runs).
 *
 *   sqlite_bench [samples]      (default 300)
 */
#define _GNU_SOURCE
#include "latency.h"

#include <cancel/sqlite.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

static const char FOREVER[] =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

struct sample {
    int ours;
    sqlite3 *db;
    cancel_source *src;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running; /* the query runs (the progress handler was called) */
    int64_t delay_us;
    int64_t cancelled_at;
};

static int on_progress(void *arg)
{
    struct sample *s = arg;
    pthread_mutex_lock(&s->mu);
    s->running = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void *canceller(void *arg)
{
    struct sample *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->running)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    lat_sleep_us(s->delay_us);
    s->cancelled_at = lat_now();
    if (s->ours)
        cancel_source_cancel(s->src);
    else
        sqlite3_interrupt(s->db);
    return NULL;
}

static uint64_t rng = 0x2545f4914f6cdd1du;

static int64_t one(sqlite3 *db, sqlite3_stmt *st, int ours, int64_t *to_reset)
{
    struct sample s;
    memset(&s, 0, sizeof s);
    s.ours = ours;
    s.db = db;
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    s.delay_us = 200 + (int64_t)(rng % 800);
    sqlite3_progress_handler(db, 100000, on_progress, &s);
    if (ours)
        s.src = cancel_source_new();
    pthread_t t;
    pthread_create(&t, NULL, canceller, &s);
    int rc = ours ? cancel_sqlite_step(cancel_source_token(s.src), st) : sqlite3_step(st);
    int64_t back = lat_now();
    sqlite3_reset(st);
    int64_t reset = lat_now();
    pthread_join(t, NULL);
    if (rc != SQLITE_INTERRUPT) {
        fprintf(stderr, "unexpected result %d\n", rc);
        exit(1);
    }
    cancel_source_free(s.src);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    *to_reset = reset - s.cancelled_at;
    return back - s.cancelled_at;
}

static double per_step(sqlite3_stmt *st, cancel_token tok, int ours, int n)
{
    int64_t t0 = lat_now();
    for (int i = 0; i < n; i++) {
        int rc = ours ? cancel_sqlite_step(tok, st) : sqlite3_step(st);
        if (rc != SQLITE_ROW)
            exit(1);
        sqlite3_reset(st);
    }
    return (double)(lat_now() - t0) / n;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 300;
    sqlite3 *db;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK)
        return 1;
    sqlite3_stmt *st;
    sqlite3_prepare_v2(db, FOREVER, -1, &st, NULL);
    lat ours = {0}, raw = {0}, ours_reset = {0}, raw_reset = {0};
    for (int i = 0; i < n; i++) {
        int64_t r;
        lat_add(&ours, one(db, st, 1, &r));
        lat_add(&ours_reset, r);
        lat_add(&raw, one(db, st, 0, &r));
        lat_add(&raw_reset, r);
    }
    sqlite3_progress_handler(db, 0, NULL, NULL);
    sqlite3_finalize(st);
    printf("SQLite %s, %d samples\n", sqlite3_libversion(), n);
    lat_header("cancel to return, long query");
    lat_row("cancel_sqlite_step", &ours, "sqlite3_interrupt directly", &raw);
    lat_row("  ... to the statement reset", &ours_reset, "  ... and sqlite3_reset", &raw_reset);

    /* The cost of the token on a step that is not cancelled. */
    sqlite3_prepare_v2(db, "SELECT 1", -1, &st, NULL);
    cancel_source *src = cancel_source_new();
    double a[9], b[9];
    for (int r = 0; r < 9; r++) {
        a[r] = per_step(st, cancel_source_token(src), 1, 200000);
        b[r] = per_step(st, CANCEL_TOKEN_NONE, 0, 200000);
    }
    qsort(a, 9, sizeof *a, cmp);
    qsort(b, 9, sizeof *b, cmp);
    printf("%-34s %8.1f ns   %-34s %8.1f ns   %6.2fx\n", "cancel_sqlite_step, SELECT 1", a[4],
           "sqlite3_step", b[4], a[4] / b[4]);
    cancel_source_free(src);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}
