/*
 * Prints JSON reports of groups in known states, one document per line,
 * for tests/check_report_json.py, which parses them with Python's json
 * module and checks every field. Runs on the manual clock, so times and
 * stragglers are exact.
 *
 *   A  group "alpha" on a one-thread pool: a completed task, a running one,
 *      a pending one; not cancelled.
 *   B  the same group after cancel_group_cancel: the pending task ended
 *      CANCELED unrun, the running one stopped on request 5 ms later.
 *   C  group "beta" (a name full of characters to escape): the first
 *      failure cancelled it; one task ignores the request (a straggler);
 *      a group nested in a task, whose task stopped; a task name that is
 *      not valid UTF-8.
 */
#include "check.h"

#include <cancel.h>
#include <cancel/task.h>
#include <errno.h>

#define MS (1000 * 1000LL)

static int complete(void *arg, cancel_token tok)
{
    (void)arg;
    (void)tok;
    return 0;
}

struct busy {
    test_gate started;
    int64_t advance; /* manual time to let pass before returning */
};
static int until_cancelled(void *arg, cancel_token tok)
{
    struct busy *b = arg;
    test_gate_open(&b->started);
    CHECK(cancel_token_wait(tok, CANCEL_INFINITE));
    if (b->advance)
        cancel_clock_advance(b->advance);
    return ECANCELED;
}

static int must_not_run(void *arg, cancel_token tok)
{
    (void)arg;
    (void)tok;
    abort();
}

static void print_report(cancel_group *g)
{
    CHECK_EQ(cancel_group_report(g, stdout, CANCEL_REPORT_JSON), 0);
    fflush(stdout);
}

static void wait_stats(cancel_group *g, size_t pending, size_t running, size_t ended)
{
    cancel_group_stats st;
    do {
        CHECK_EQ(cancel_group_stats_get(g, &st), 0);
        if (st.pending != pending || st.running != running ||
            st.completed + st.canceled + st.failed != ended)
            test_sleep_ns(100 * 1000);
    } while (st.pending != pending || st.running != running || st.completed + st.canceled + st.failed != ended);
}

static void scenario_alpha(void)
{
    cancel_pool *p = cancel_pool_new(1, "one");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "alpha");
    CHECK_EQ(cancel_group_spawn(g, complete, NULL, "done"), 0);
    wait_stats(g, 0, 0, 1);
    cancel_clock_advance(1 * MS);
    struct busy b = {TEST_GATE_INIT, 5 * MS};
    CHECK_EQ(cancel_group_spawn(g, until_cancelled, &b, "busy"), 0);
    test_gate_wait(&b.started);
    cancel_clock_advance(1 * MS);
    CHECK_EQ(cancel_group_spawn(g, must_not_run, NULL, "late"), 0);
    print_report(g); /* A */
    cancel_clock_advance(1 * MS);
    CHECK(cancel_group_cancel(g));
    CHECK_EQ(cancel_group_wait(g), ECANCELED);
    print_report(g); /* B */
    cancel_group_free(g);
    cancel_pool_free(p);
}

/* Makes a nested group whose task ignores the request until released, and
 * waits for it: in cancel_group_wait when the request comes. */
struct deaf {
    test_gate started, release;
};
static int deaf_task(void *arg, cancel_token tok)
{
    (void)tok;
    struct deaf *d = arg;
    test_gate_open(&d->started);
    test_gate_wait(&d->release);
    return 0;
}
struct hog {
    cancel_pool *pool;
    struct deaf inner;
    test_gate nested_ready;
};
static int hog_task(void *arg, cancel_token tok)
{
    struct hog *h = arg;
    cancel_group *inner = cancel_group_new(h->pool, tok, "inner");
    CHECK_EQ(cancel_group_spawn(inner, deaf_task, &h->inner, "inner-task"), 0);
    test_gate_open(&h->nested_ready);
    CHECK_EQ(cancel_group_wait(inner), 0);
    cancel_group_free(inner);
    return 0;
}

struct failer {
    test_gate started, go;
};
static int fail_task(void *arg, cancel_token tok)
{
    (void)tok;
    struct failer *f = arg;
    test_gate_open(&f->started);
    test_gate_wait(&f->go);
    return EIO;
}

static bool report_has(cancel_group *g, const char *what)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK_EQ(cancel_group_report(g, f, CANCEL_REPORT_TEXT), 0);
    fclose(f);
    bool has = strstr(text, what) != NULL;
    free(text);
    return has;
}

static void scenario_beta(void)
{
    cancel_pool *p = cancel_pool_new(3, "three");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "beta \"q\" \\ caf\xc3\xa9 \x01\n\t end");
    cancel_group_set_grace(g, 50 * MS);
    struct hog h = {p, {TEST_GATE_INIT, TEST_GATE_INIT}, TEST_GATE_INIT};
    CHECK_EQ(cancel_group_spawn(g, hog_task, &h, "hog\xff\xfe"), 0);
    test_gate_wait(&h.nested_ready);
    test_gate_wait(&h.inner.started);
    /* The hog enters its wait on its own schedule: look until it is there. */
    for (int tries = 0; !report_has(g, "in cancel_group_wait"); tries++) {
        CHECK(tries < 10000); /* 10 s: it never showed */
        test_sleep_ns(1 * MS);
    }
    struct failer f = {TEST_GATE_INIT, TEST_GATE_INIT};
    CHECK_EQ(cancel_group_spawn(g, fail_task, &f, "failer"), 0);
    test_gate_wait(&f.started);
    cancel_clock_advance(2 * MS);
    test_gate_open(&f.go);
    /* The failure cancels the group; the hog and the inner task go on. */
    CHECK(cancel_token_wait(cancel_group_token(g), CANCEL_INFINITE));
    wait_stats(g, 0, 1, 1);
    cancel_clock_advance(60 * MS); /* past the grace of beta, not of inner */
    print_report(g);                /* C */
    test_gate_open(&h.inner.release);
    CHECK_EQ(cancel_group_wait(g), EIO);
    cancel_group_free(g);
    cancel_pool_free(p);
}

int main(void)
{
    cancel_clock_use_manual(true);
    scenario_alpha();
    scenario_beta();
    cancel_clock_use_manual(false);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    return 0;
}
