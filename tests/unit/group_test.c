/* Groups: waiting, fail fast, cancellation, spawning rules, nesting, pool
 * free, stragglers. */
#include "../check.h"
#include "sync_probe.h"

#include <cancel.h>
#include <cancel/task.h>
#include <errno.h>

#define MS (1000 * 1000LL)

static int ret_value(void *arg, cancel_token tok)
{
    (void)tok;
    return (int)(intptr_t)arg;
}

static int must_not_run(void *arg, cancel_token tok)
{
    (void)tok;
    fprintf(stderr, "a task that must not run ran (arg %p)\n", arg);
    abort();
}

/* Counts itself started, then stops when its token is cancelled. */
struct listener {
    _Atomic int started;
    test_gate all_started;
    int expect;
    cancel_cause cause;
    char message[64], origin[64];
    pthread_mutex_t mu;
};
#define LISTENER_INIT(n) {0, TEST_GATE_INIT, (n), {0, 0, NULL, NULL}, "", "", PTHREAD_MUTEX_INITIALIZER}
static int listener_task(void *arg, cancel_token tok)
{
    struct listener *l = arg;
    if (atomic_fetch_add(&l->started, 1) + 1 == l->expect)
        test_gate_open(&l->all_started);
    CHECK(cancel_token_wait(tok, CANCEL_INFINITE));
    cancel_cause c = cancel_token_cause(tok);
    pthread_mutex_lock(&l->mu);
    l->cause = c;
    snprintf(l->message, sizeof l->message, "%s", c.message ? c.message : "(null)");
    snprintf(l->origin, sizeof l->origin, "%s", c.origin ? c.origin : "(null)");
    pthread_mutex_unlock(&l->mu);
    return ECANCELED;
}

static void bad_input(void)
{
    errno = 0;
    CHECK(cancel_group_new(NULL, CANCEL_TOKEN_NONE, "x") == NULL);
    CHECK_EQ(errno, EINVAL);
    cancel_pool *p = cancel_pool_new(1, "bad");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, NULL);
    CHECK(g);
    CHECK_EQ(cancel_group_spawn(NULL, ret_value, NULL, NULL), EINVAL);
    CHECK_EQ(cancel_group_spawn(g, NULL, NULL, NULL), EINVAL);
    errno = 0;
    CHECK(!cancel_group_cancel(NULL));
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(cancel_group_wait(NULL), EINVAL);
    cancel_group_stats st;
    CHECK_EQ(cancel_group_stats_get(NULL, &st), EINVAL);
    CHECK_EQ(cancel_group_stats_get(g, NULL), EINVAL);
    CHECK_EQ(cancel_group_report(NULL, stderr, CANCEL_REPORT_TEXT), EINVAL);
    CHECK_EQ(cancel_group_report(g, NULL, CANCEL_REPORT_TEXT), EINVAL);
    CHECK_EQ(cancel_group_report(g, stderr, 7), EINVAL);
    CHECK(cancel_group_token(NULL).cancel__impl == NULL);
    cancel_group_set_grace(NULL, 5);
    cancel_group_free(NULL);
    cancel_group_free(g);
    cancel_pool_free(p);
}

static void empty_and_completed(void)
{
    cancel_pool *p = cancel_pool_new(2, "ok");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "empty");
    CHECK_EQ(cancel_group_wait(g), 0);
    CHECK_EQ(cancel_group_wait(g), 0); /* again: at once */
    CHECK_EQ(cancel_group_spawn(g, ret_value, NULL, NULL), ESHUTDOWN);
    cancel_group_free(g);

    g = cancel_group_new(p, CANCEL_TOKEN_NONE, "fine");
    for (int i = 0; i < 100; i++)
        CHECK_EQ(cancel_group_spawn(g, ret_value, NULL, "zero"), 0);
    CHECK_EQ(cancel_group_wait(g), 0);
    CHECK(!cancel_token_is_requested(cancel_group_token(g))); /* wait does not cancel */
    cancel_group_stats st;
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.completed, 100);
    CHECK_EQ(st.pending + st.running + st.canceled + st.failed + st.stragglers, 0);
    cancel_group_free(g);
    cancel_pool_free(p);
}

/* errgroup: the first failure cancels the siblings with its cause. */
struct failer {
    test_gate *go;
    int err;
    test_gate started;
};
static int fail_when_told(void *arg, cancel_token tok)
{
    (void)tok;
    struct failer *f = arg;
    test_gate_open(&f->started);
    test_gate_wait(f->go);
    return f->err;
}
static void fail_fast(void)
{
    cancel_pool *p = cancel_pool_new(4, "ff");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "the group");
    struct listener l = LISTENER_INIT(3);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(cancel_group_spawn(g, listener_task, &l, "listener"), 0);
    test_gate_wait(&l.all_started);
    test_gate go = TEST_GATE_INIT;
    struct failer f = {&go, EIO, TEST_GATE_INIT};
    CHECK_EQ(cancel_group_spawn(g, fail_when_told, &f, "checksum"), 0);
    test_gate_wait(&f.started);
    for (int i = 0; i < 20; i++) /* queued behind busy threads: cancelled unrun */
        CHECK_EQ(cancel_group_spawn(g, must_not_run, NULL, "queued"), 0);
    test_gate_open(&go);
    CHECK_EQ(cancel_group_wait(g), EIO);
    cancel_cause c = cancel_token_cause(cancel_group_token(g));
    CHECK_EQ(c.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(c.code, EIO);
    CHECK_STR(c.message, "checksum");
    CHECK_STR(c.origin, "the group");
    /* The siblings saw that cause through their own tokens. */
    CHECK_EQ(l.cause.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(l.cause.code, EIO);
    CHECK_STR(l.message, "checksum");
    CHECK_STR(l.origin, "the group");
    cancel_group_stats st;
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.failed, 1);
    CHECK_EQ(st.canceled, 23);
    CHECK_EQ(st.pending + st.running + st.completed, 0);
    cancel_group_free(g);
    cancel_pool_free(p);
}

/* The first failure in time wins, even when the group was already
 * cancelled: wait returns it; the cause stays the earlier cancel. */
static void first_failure_in_time(void)
{
    cancel_pool *p = cancel_pool_new(2, "first");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "g");
    test_gate go1 = TEST_GATE_INIT, go2 = TEST_GATE_INIT;
    struct failer a = {&go1, EPIPE, TEST_GATE_INIT}, b = {&go2, ENOSPC, TEST_GATE_INIT};
    CHECK_EQ(cancel_group_spawn(g, fail_when_told, &a, "a"), 0);
    CHECK_EQ(cancel_group_spawn(g, fail_when_told, &b, "b"), 0);
    test_gate_open(&go2); /* b fails first */
    while (!cancel_token_is_requested(cancel_group_token(g)))
        test_sleep_ns(100 * 1000);
    test_gate_open(&go1);
    CHECK_EQ(cancel_group_wait(g), ENOSPC);
    CHECK_STR(cancel_token_cause(cancel_group_token(g)).message, "b");
    cancel_group_free(g);

    g = cancel_group_new(p, CANCEL_TOKEN_NONE, "h");
    test_gate go3 = TEST_GATE_INIT;
    struct failer c = {&go3, EACCES, TEST_GATE_INIT};
    CHECK_EQ(cancel_group_spawn(g, fail_when_told, &c, "late failure"), 0);
    test_gate_wait(&c.started);
    CHECK(cancel_group_cancel(g));
    test_gate_open(&go3);
    CHECK_EQ(cancel_group_wait(g), EACCES);
    CHECK_EQ(cancel_token_cause(cancel_group_token(g)).reason, CANCEL_REASON_REQUESTED);
    cancel_group_free(g);
    cancel_pool_free(p);
}

static void cancel_and_spawn_into_cancelled(void)
{
    cancel_pool *p = cancel_pool_new(2, "c");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "cancelled");
    struct listener l = LISTENER_INIT(2);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(cancel_group_spawn(g, listener_task, &l, NULL), 0);
    test_gate_wait(&l.all_started);
    CHECK(cancel_group_cancel(g));
    CHECK(!cancel_group_cancel(g));
    CHECK_EQ(cancel_group_spawn(g, must_not_run, NULL, "too late"), 0); /* accepted, never runs */
    CHECK_EQ(cancel_group_wait(g), ECANCELED);
    CHECK_EQ(l.cause.reason, CANCEL_REASON_REQUESTED);
    CHECK_STR(l.origin, "cancelled");
    cancel_group_stats st;
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.canceled, 3);
    cancel_group_free(g);

    /* Cancelled, but every task still returned 0: wait returns 0. */
    g = cancel_group_new(p, CANCEL_TOKEN_NONE, "shrug");
    test_gate go = TEST_GATE_INIT;
    struct failer f = {&go, 0, TEST_GATE_INIT};
    CHECK_EQ(cancel_group_spawn(g, fail_when_told, &f, "ignores"), 0);
    test_gate_wait(&f.started);
    cancel_group_cancel(g);
    test_gate_open(&go);
    CHECK_EQ(cancel_group_wait(g), 0);
    cancel_group_free(g);

    /* The parent token cancels the group, with its cause. */
    cancel_source *parent = cancel_source_new_child(CANCEL_TOKEN_NONE, CANCEL_INFINITE, "parent");
    g = cancel_group_new(p, cancel_source_token(parent), "child");
    struct listener l2 = LISTENER_INIT(1);
    CHECK_EQ(cancel_group_spawn(g, listener_task, &l2, NULL), 0);
    test_gate_wait(&l2.all_started);
    cancel_source_cancel(parent);
    CHECK_EQ(cancel_group_wait(g), ECANCELED);
    CHECK_STR(l2.origin, "parent");
    CHECK(!cancel_group_cancel(g));
    cancel_group_free(g);
    cancel_source_free(parent);
    cancel_pool_free(p);
}

/* A queued task of a cancelled group ends CANCELED at once, even while
 * every pool thread is busy with a task that ignores its token: through
 * cancel_group_cancel, and through the parent's token. */
static void queued_tasks_end_promptly(void)
{
    for (int by_parent = 0; by_parent < 2; by_parent++) {
        cancel_pool *p = cancel_pool_new(1, "busy");
        cancel_source *parent = cancel_source_new();
        cancel_group *g = cancel_group_new(p, cancel_source_token(parent), "prompt");
        test_gate go = TEST_GATE_INIT;
        struct failer deaf = {&go, 0, TEST_GATE_INIT};
        CHECK_EQ(cancel_group_spawn(g, fail_when_told, &deaf, "deaf"), 0);
        test_gate_wait(&deaf.started);
        for (int i = 0; i < 10; i++)
            CHECK_EQ(cancel_group_spawn(g, must_not_run, NULL, "queued"), 0);
        cancel_group_stats st;
        CHECK_EQ(cancel_group_stats_get(g, &st), 0);
        CHECK_EQ(st.pending, 10);
        if (by_parent)
            cancel_source_cancel(parent);
        else
            cancel_group_cancel(g);
        CHECK_EQ(cancel_group_stats_get(g, &st), 0);
        CHECK_EQ(st.canceled, 10); /* the only thread is still busy */
        CHECK_EQ(st.running, 1);
        CHECK(!test_gate_is_open(&go));
        test_gate_open(&go);
        CHECK_EQ(cancel_group_wait(g), ECANCELED);
        cancel_group_free(g);
        cancel_source_free(parent);
        cancel_pool_free(p);
    }
}

/* Tasks spawn siblings while the group is waited. */
struct chain {
    cancel_group *g;
    _Atomic int left;
    _Atomic int ran;
};
static int spawn_next(void *arg, cancel_token tok)
{
    (void)tok;
    struct chain *c = arg;
    atomic_fetch_add(&c->ran, 1);
    if (atomic_fetch_sub(&c->left, 1) > 1)
        CHECK_EQ(cancel_group_spawn(c->g, spawn_next, c, "link"), 0);
    return 0;
}
static void siblings_spawned_while_waited(void)
{
    cancel_pool *p = cancel_pool_new(2, "chain");
    for (int round = 0; round < TEST_SCALE(50); round++) {
        cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "chain");
        struct chain c = {g, 100, 0};
        CHECK_EQ(cancel_group_spawn(g, spawn_next, &c, "link"), 0);
        CHECK_EQ(cancel_group_wait(g), 0);
        CHECK_EQ(atomic_load(&c.ran), 100); /* all ran before wait returned */
        cancel_group_free(g);
    }
    cancel_pool_free(p);
}

/* Waiting for a group inside a task of a one-thread pool. */
struct fan {
    cancel_pool *pool;
    _Atomic int ran;
    int result;
};
static int count_one(void *arg, cancel_token tok)
{
    (void)tok;
    atomic_fetch_add(&((struct fan *)arg)->ran, 1);
    return 0;
}
static int fan_out(void *arg, cancel_token tok)
{
    struct fan *f = arg;
    cancel_group *g = cancel_group_new(f->pool, tok, "inner");
    for (int i = 0; i < 50; i++)
        CHECK_EQ(cancel_group_spawn(g, count_one, f, NULL), 0);
    f->result = cancel_group_wait(g);
    cancel_group_free(g);
    return 0;
}
static void group_wait_inside_a_task(void)
{
    cancel_pool *p = cancel_pool_new(1, "single");
    struct fan f = {p, 0, -1};
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "outer");
    CHECK_EQ(cancel_group_spawn(g, fan_out, &f, "fan"), 0);
    CHECK_EQ(cancel_group_wait(g), 0);
    CHECK_EQ(f.result, 0);
    CHECK_EQ(atomic_load(&f.ran), 50);
    cancel_group_free(g);
    cancel_pool_free(p);
}

/* A spawn into a group whose count of running tasks touched zero while it
 * was waited: the waiter, woken for the zero, finds the new task and sleeps
 * again, and the end of that task must still wake it. The waiter is a task
 * of a one-thread pool, which runs a helper task inside its wait (waits
 * help their pool): the helper, on the waiter's own thread, lets the
 * group's last task end, waits until its end has been counted, and spawns
 * the late task, all before the waiter looks again. */
struct late {
    cancel_pool *waiter_pool, *group_pool;
    cancel_group *g;
    test_gate end_first, first_counted, end_late, helped, waited;
    probe waiter;
    int result;
};
static int late_first(void *arg, cancel_token tok)
{
    (void)tok;
    test_gate_wait(&((struct late *)arg)->end_first);
    return 0;
}
static int late_counted(void *arg, cancel_token tok)
{
    (void)tok;
    test_gate_open(&((struct late *)arg)->first_counted); /* runs after late_first's end, on the same thread */
    return 0;
}
static int late_last(void *arg, cancel_token tok)
{
    (void)tok;
    test_gate_wait(&((struct late *)arg)->end_late);
    return 0;
}
static int late_helper(void *arg, cancel_token tok)
{
    (void)tok;
    struct late *l = arg;
    test_gate_open(&l->end_first);
    test_gate_wait(&l->first_counted); /* the group's count met zero: its waiter was woken */
    CHECK_EQ(cancel_group_spawn(l->g, late_last, l, "late"), 0);
    test_gate_open(&l->helped);
    return 0;
}
static int late_waiter(void *arg, cancel_token tok)
{
    (void)tok;
    struct late *l = arg;
    probe_arm(&l->waiter);
    l->result = cancel_group_wait(l->g);
    test_gate_open(&l->waited);
    return 0;
}
static void late_spawn_while_waited(void)
{
    struct late l = {.end_first = TEST_GATE_INIT, .first_counted = TEST_GATE_INIT, .end_late = TEST_GATE_INIT,
                     .helped = TEST_GATE_INIT, .waited = TEST_GATE_INIT, .waiter = PROBE_INIT, .result = -1};
    l.waiter_pool = cancel_pool_new(1, "waiter");
    l.group_pool = cancel_pool_new(1, "group");
    l.g = cancel_group_new(l.group_pool, CANCEL_TOKEN_NONE, "late");
    CHECK_EQ(cancel_group_spawn(l.g, late_first, &l, "first"), 0);
    /* Queued behind late_first on the group's one thread: it runs once
     * late_first's end has been counted out of the group. */
    CHECK_EQ(cancel_task_run(l.group_pool, CANCEL_TOKEN_NONE, late_counted, &l, NULL, NULL), 0);
    CHECK_EQ(cancel_task_run(l.waiter_pool, CANCEL_TOKEN_NONE, late_waiter, &l, NULL, NULL), 0);
    probe_wait_blocked(&l.waiter, "cancel_group_wait"); /* subscribed, asleep */
    CHECK_EQ(cancel_task_run(l.waiter_pool, CANCEL_TOKEN_NONE, late_helper, &l, NULL, NULL), 0);
    test_gate_wait(&l.helped);
    /* The waiter is back from the helper: once it is about to sleep again,
     * let the late task end. */
    probe_wait_blocked(&l.waiter, "cancel_group_wait");
    test_gate_open(&l.end_late);
    if (!test_gate_wait_for(&l.waited, 10 * 1000 * MS)) {
        fprintf(stderr, "cancel_group_wait slept through the end of a task spawned while it was waited\n");
        abort();
    }
    CHECK_EQ(l.result, 0);
    cancel_group_free(l.g);
    cancel_pool_free(l.group_pool);
    cancel_pool_free(l.waiter_pool);
}

/* A thread that is neither the owner nor a task of the group spawns while
 * the owner waits; the owner frees the group and the pool as soon as the
 * wait returns. The spawned task lets the group's other task end, so the
 * wait can return while the spawner is still inside cancel_group_spawn
 * (after queueing its task): the spawn must hold the group until its last
 * access (a use after free under ASan otherwise). A race, not a
 * deterministic case: without a pause injected into the spawn, the window
 * is a few hundred nanoseconds. */
struct outsider {
    cancel_group *g;
    test_gate late_started;
    int result;
};
static int outsider_first(void *arg, cancel_token tok)
{
    (void)tok;
    test_gate_wait(&((struct outsider *)arg)->late_started);
    return 0;
}
static int outsider_late(void *arg, cancel_token tok)
{
    (void)tok;
    test_gate_open(&((struct outsider *)arg)->late_started);
    return 0;
}
static void *outsider_spawn(void *arg)
{
    struct outsider *o = arg;
    o->result = cancel_group_spawn(o->g, outsider_late, o, "late");
    return NULL;
}
static void spawn_from_outside_races_free(void)
{
    for (int i = 0; i < TEST_SCALE(2000); i++) {
        cancel_pool *p = cancel_pool_new(2, "outside");
        struct outsider o = {cancel_group_new(p, CANCEL_TOKEN_NONE, "outside"), TEST_GATE_INIT, -1};
        CHECK_EQ(cancel_group_spawn(o.g, outsider_first, &o, "first"), 0);
        pthread_t t = test_spawn(outsider_spawn, &o);
        CHECK_EQ(cancel_group_wait(o.g), 0);
        cancel_group_free(o.g);
        cancel_pool_free(p);
        test_join(t);
        CHECK_EQ(o.result, 0);
    }
}

/* A group made inside a task with its token is the task's child: cancelling
 * the outer group reaches its tasks, and the report shows it there. */
struct nest {
    cancel_pool *pool;
    struct listener inner;
    test_gate ready;
    cancel_group *g;
    int inner_result;
};
static int make_inner(void *arg, cancel_token tok)
{
    struct nest *n = arg;
    n->g = cancel_group_new(n->pool, tok, "inner");
    for (int i = 0; i < 2; i++)
        CHECK_EQ(cancel_group_spawn(n->g, listener_task, &n->inner, "inner task"), 0);
    test_gate_open(&n->ready);
    n->inner_result = cancel_group_wait(n->g);
    return ECANCELED;
}
static void nested_groups(void)
{
    cancel_pool *p = cancel_pool_new(3, "nest");
    cancel_group *outer = cancel_group_new(p, CANCEL_TOKEN_NONE, "outer");
    struct nest n = {p, LISTENER_INIT(2), TEST_GATE_INIT, NULL, -1};
    struct listener sibling = LISTENER_INIT(1);
    CHECK_EQ(cancel_group_spawn(outer, make_inner, &n, "parent task"), 0);
    test_gate_wait(&n.ready);
    test_gate_wait(&n.inner.all_started);
    CHECK_EQ(cancel_group_spawn(outer, listener_task, &sibling, "sibling task"), 0);
    test_gate_wait(&sibling.all_started);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK_EQ(cancel_group_report(outer, f, CANCEL_REPORT_TEXT), 0);
    fclose(f);
    fputs(text, stderr);
    char *task_line = strstr(text, "parent task");
    char *inner = strstr(text, "group \"inner\"");
    char *sibling_line = strstr(text, "sibling task");
    /* under its task, before the next task of the outer group */
    CHECK(task_line && inner && sibling_line && task_line < inner && inner < sibling_line);
    CHECK(strstr(inner, "inner task") < sibling_line);
    free(text);
    CHECK(cancel_group_cancel(outer));
    CHECK_EQ(cancel_group_wait(outer), ECANCELED);
    CHECK_EQ(n.inner_result, ECANCELED);
    CHECK_STR(n.inner.origin, "outer");
    cancel_group_free(n.g); /* after its parent task ended, before the outer group */
    cancel_group_free(outer);

    /* A group whose parent token is another group's: that group's child;
     * freeing the parent first makes it top-level. */
    cancel_group *a = cancel_group_new(p, CANCEL_TOKEN_NONE, "a");
    cancel_group *b = cancel_group_new(p, cancel_group_token(a), "b");
    text = NULL;
    f = open_memstream(&text, &len);
    CHECK_EQ(cancel_group_report(a, f, CANCEL_REPORT_TEXT), 0);
    fclose(f);
    CHECK(strstr(text, "group \"b\""));
    free(text);
    cancel_group_free(a);
    text = NULL;
    f = open_memstream(&text, &len);
    CHECK_EQ(cancel_group_report(b, f, CANCEL_REPORT_TEXT), 0);
    fclose(f);
    CHECK(strncmp(text, "group \"b\": completed; cancelled at", 34) == 0); /* empty: wait returns 0 */
    CHECK(strstr(text, "(origin \"a\")"));                      /* freeing a cancelled it */
    free(text);
    cancel_group_free(b);
    cancel_pool_free(p);
}

/* Freeing the pool cancels grouped tasks; the group is still waited and
 * freed by its owner, and refuses spawns. */
static void pool_free_with_groups(void)
{
    cancel_pool *p = cancel_pool_new(1, "doomed");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "survivor");
    struct listener l = LISTENER_INIT(1);
    CHECK_EQ(cancel_group_spawn(g, listener_task, &l, NULL), 0);
    test_gate_wait(&l.all_started);
    for (int i = 0; i < 5; i++)
        CHECK_EQ(cancel_group_spawn(g, must_not_run, NULL, NULL), 0);
    cancel_pool_free(p);
    CHECK_STR(l.origin, "doomed");
    CHECK_EQ(cancel_group_spawn(g, must_not_run, NULL, NULL), ESHUTDOWN);
    CHECK_EQ(cancel_group_wait(g), ECANCELED);
    cancel_group_stats st;
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.canceled, 6);
    CHECK_EQ(cancel_group_report(g, stderr, CANCEL_REPORT_TEXT), 0);
    cancel_group_free(g);
}

/* Freeing a group that was not waited cancels it and waits; its own tasks
 * spawning meanwhile get ESHUTDOWN. */
struct respawn {
    cancel_group *g;
    _Atomic int refused;
    test_gate started;
};
static int respawn_when_cancelled(void *arg, cancel_token tok)
{
    struct respawn *r = arg;
    test_gate_open(&r->started);
    CHECK(cancel_token_wait(tok, CANCEL_INFINITE));
    if (cancel_group_spawn(r->g, must_not_run, NULL, NULL) == ESHUTDOWN)
        atomic_store(&r->refused, 1);
    return ECANCELED;
}
static void free_without_wait(void)
{
    cancel_pool *p = cancel_pool_new(2, "fw");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "unwaited");
    struct respawn r = {g, 0, TEST_GATE_INIT};
    CHECK_EQ(cancel_group_spawn(g, respawn_when_cancelled, &r, NULL), 0);
    test_gate_wait(&r.started);
    cancel_group_free(g);
    CHECK_EQ(atomic_load(&r.refused), 1);
    cancel_pool_free(p);
}

/* Stragglers, on the manual clock: a task that ignores its token is one
 * once `grace` passed after the request, and only then. */
struct ignorer {
    test_gate started, release;
};
static int ignore_token(void *arg, cancel_token tok)
{
    (void)tok;
    struct ignorer *i = arg;
    test_gate_open(&i->started);
    test_gate_wait(&i->release);
    return 0;
}
static void stragglers(void)
{
    cancel_clock_use_manual(true);
    cancel_pool *p = cancel_pool_new(2, "slow");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "grace");
    cancel_group_set_grace(g, 100 * MS);
    struct ignorer ig = {TEST_GATE_INIT, TEST_GATE_INIT};
    struct listener l = LISTENER_INIT(1);
    CHECK_EQ(cancel_group_spawn(g, ignore_token, &ig, "deaf"), 0);
    CHECK_EQ(cancel_group_spawn(g, listener_task, &l, "polite"), 0);
    test_gate_wait(&ig.started);
    test_gate_wait(&l.all_started);
    cancel_group_stats st;
    cancel_clock_advance(500 * MS); /* not cancelled yet: nobody is late */
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.running, 2);
    CHECK_EQ(st.stragglers, 0);
    cancel_group_cancel(g);
    do /* "polite" returns at once; wait for it to have ended */
        CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    while (st.running != 1);
    cancel_clock_advance(99 * MS);
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.stragglers, 0);
    cancel_clock_advance(1 * MS);
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.stragglers, 1);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK_EQ(cancel_group_report(g, f, CANCEL_REPORT_TEXT), 0);
    fclose(f);
    fputs(text, stderr);
    char *deaf = strstr(text, "deaf");
    CHECK(deaf && strstr(deaf, "STRAGGLER: ignoring the request for 100.00 ms"));
    free(text);
    /* Grace can be changed, or turned off. */
    cancel_group_set_grace(g, 200 * MS);
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.stragglers, 0);
    cancel_group_set_grace(g, -1);
    cancel_clock_advance(1000 * MS);
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.stragglers, 0);
    cancel_group_set_grace(g, 100 * MS);
    cancel_clock_advance(50 * MS);
    test_gate_open(&ig.release);
    CHECK_EQ(cancel_group_wait(g), ECANCELED);
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.stragglers, 0); /* none running now ... */
    text = NULL;
    f = open_memstream(&text, &len);
    CHECK_EQ(cancel_group_report(g, f, CANCEL_REPORT_TEXT), 0);
    fclose(f);
    deaf = strstr(text, "deaf");
    /* ... but the report remembers who was one, and for how long */
    CHECK(deaf && strstr(deaf, "STRAGGLER: ignored the request for 1.150 s"));
    CHECK(!strstr(strstr(text, "polite"), "STRAGGLER"));
    free(text);
    cancel_group_free(g);
    cancel_pool_free(p);
    cancel_clock_use_manual(false);
}

/* What a running task is blocked in: here, its wait for a nested group. */
struct blocked_outer {
    cancel_pool *pool;
    struct listener inner;
};
static int wait_for_inner(void *arg, cancel_token tok)
{
    struct blocked_outer *b = arg;
    cancel_group *g = cancel_group_new(b->pool, tok, "sub");
    CHECK_EQ(cancel_group_spawn(g, listener_task, &b->inner, "sub task"), 0);
    int r = cancel_group_wait(g);
    cancel_group_free(g);
    return r;
}
static void blocked_in_is_reported(void)
{
    cancel_pool *p = cancel_pool_new(2, "bl");
    cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "blocked");
    struct blocked_outer b = {p, LISTENER_INIT(1)};
    CHECK_EQ(cancel_group_spawn(g, wait_for_inner, &b, "waiter"), 0);
    test_gate_wait(&b.inner.all_started);
    /* The waiter enters its wait on its own schedule: look until it shows
     * (bounded by the test's timeout). */
    bool seen = false;
    for (int tries = 0; !seen; tries++) {
        CHECK(tries < 10000); /* 10 s: it never showed */
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        CHECK_EQ(cancel_group_report(g, f, CANCEL_REPORT_TEXT), 0);
        fclose(f);
        char *line = strstr(text, "waiter");
        seen = line && strstr(line, "in cancel_group_wait");
        if (seen)
            fputs(text, stderr);
        free(text);
        if (!seen)
            test_sleep_ns(1 * MS);
    }
    cancel_group_cancel(g);
    CHECK_EQ(cancel_group_wait(g), ECANCELED);
    cancel_group_free(g);
    cancel_pool_free(p);
}

/* Group churn under concurrency: many groups, each cancelled at a random
 * moment while tasks run and spawn. */
static int spin_briefly(void *arg, cancel_token tok)
{
    (void)arg;
    for (volatile int i = 0; i < 1000 && !cancel_token_is_requested(tok); i++) {
    }
    return cancel_token_check(tok);
}
static void churn(void)
{
    cancel_pool *p = cancel_pool_new(3, "churn");
    uint64_t rng = 5;
    for (int i = 0; i < TEST_SCALE(2000); i++) {
        cancel_group *g = cancel_group_new(p, CANCEL_TOKEN_NONE, "churn");
        int n = 1 + (int)(test_rand(&rng) % 20);
        for (int k = 0; k < n; k++)
            CHECK_EQ(cancel_group_spawn(g, k % 7 == 3 ? ret_value : spin_briefly, (void *)(intptr_t)EIO, NULL), 0);
        test_jitter(&rng, 2000);
        if (test_rand(&rng) % 2)
            cancel_group_cancel(g);
        int r = cancel_group_wait(g);
        CHECK(r == 0 || r == ECANCELED || r == EIO);
        cancel_group_stats st;
        CHECK_EQ(cancel_group_stats_get(g, &st), 0);
        CHECK_EQ(st.pending + st.running, 0);
        CHECK_EQ(st.completed + st.canceled + st.failed, (size_t)n);
        cancel_group_free(g);
    }
    cancel_pool_free(p);
}

/* Several threads create, cancel, wait and free groups on one pool, some
 * nested in the tasks of a long-lived group, while another thread keeps
 * taking reports of that group: reports, nesting and frees race. */
struct stress {
    cancel_pool *pool;
    cancel_group *top;
    _Atomic int stop;
    _Atomic int reports;
};
static int stress_leaf(void *arg, cancel_token tok)
{
    (void)arg;
    for (volatile int i = 0; i < 200 && !cancel_token_is_requested(tok); i++) {
    }
    return cancel_token_check(tok);
}
static int stress_nest(void *arg, cancel_token tok)
{
    struct stress *st = arg;
    cancel_group *g = cancel_group_new(st->pool, tok, "nested");
    if (!g)
        return errno;
    for (int i = 0; i < 4; i++)
        (void)cancel_group_spawn(g, stress_leaf, NULL, "leaf");
    static _Thread_local uint64_t rng = 12345;
    if (test_rand(&rng) % 2)
        cancel_group_cancel(g);
    int r = cancel_group_wait(g);
    CHECK(r == 0 || r == ECANCELED);
    cancel_group_free(g);
    return 0;
}
static void *stress_driver(void *arg)
{
    struct stress *st = arg;
    uint64_t rng = (uintptr_t)&rng;
    for (int i = 0; i < TEST_SCALE(800); i++) {
        int r = cancel_group_spawn(st->top, stress_nest, st, "nester");
        CHECK(r == 0);
        cancel_group *g = cancel_group_new(st->pool, cancel_group_token(st->top), "side");
        CHECK(g);
        int n = 1 + (int)(test_rand(&rng) % 8);
        for (int k = 0; k < n; k++)
            CHECK_EQ(cancel_group_spawn(g, k % 3 ? stress_leaf : stress_nest, st, "side task"), 0);
        test_jitter(&rng, 1000);
        if (test_rand(&rng) % 3 == 0)
            cancel_group_cancel(g);
        if (test_rand(&rng) % 2)
            (void)cancel_group_wait(g);
        cancel_group_free(g);
    }
    return NULL;
}
static void *stress_reporter(void *arg)
{
    struct stress *st = arg;
    FILE *devnull = fopen("/dev/null", "w");
    while (!atomic_load(&st->stop)) {
        CHECK_EQ(cancel_group_report(st->top, devnull, atomic_load(&st->reports) % 2), 0);
        cancel_group_stats s;
        CHECK_EQ(cancel_group_stats_get(st->top, &s), 0);
        atomic_fetch_add(&st->reports, 1);
    }
    fclose(devnull);
    return NULL;
}
static void concurrent_groups_and_reports(void)
{
    struct stress st = {cancel_pool_new(3, "stress"), NULL, 0, 0};
    st.top = cancel_group_new(st.pool, CANCEL_TOKEN_NONE, "top");
    pthread_t rep = test_spawn(stress_reporter, &st);
    pthread_t d[3];
    for (int i = 0; i < 3; i++)
        d[i] = test_spawn(stress_driver, &st);
    for (int i = 0; i < 3; i++)
        test_join(d[i]);
    CHECK_EQ(cancel_group_wait(st.top), 0);
    atomic_store(&st.stop, 1);
    test_join(rep);
    CHECK(atomic_load(&st.reports) > 0);
    cancel_group_free(st.top);
    cancel_pool_free(st.pool);
}

int main(void)
{
    RUN(bad_input);
    RUN(empty_and_completed);
    RUN(fail_fast);
    RUN(first_failure_in_time);
    RUN(cancel_and_spawn_into_cancelled);
    RUN(queued_tasks_end_promptly);
    RUN(siblings_spawned_while_waited);
    RUN(group_wait_inside_a_task);
    RUN(late_spawn_while_waited);
    RUN(spawn_from_outside_races_free);
    RUN(nested_groups);
    RUN(pool_free_with_groups);
    RUN(free_without_wait);
    RUN(stragglers);
    RUN(blocked_in_is_reported);
    RUN(churn);
    RUN(concurrent_groups_and_reports);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    return 0;
}
