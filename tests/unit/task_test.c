/* Pools and tasks: every state transition, cancellation before and while
 * queued, waits and their timeouts, pool free, waiting inside a task. */
#include "../check.h"

#include <cancel.h>
#include <cancel/task.h>
#include <errno.h>
#include <unistd.h>

#define MS (1000 * 1000LL)

static int ret_value(void *arg, cancel_token tok)
{
    (void)tok;
    return (int)(intptr_t)arg;
}

/* Stops when its token is cancelled: returns ECANCELED. */
static int until_cancelled(void *arg, cancel_token tok)
{
    if (arg)
        test_gate_open(arg);
    CHECK(cancel_token_wait(tok, CANCEL_INFINITE));
    return ECANCELED;
}

static int must_not_run(void *arg, cancel_token tok)
{
    (void)tok;
    fprintf(stderr, "a task that must not run ran (arg %p)\n", arg);
    abort();
}

/* Blocks its thread until the gate opens, whatever its token says. */
struct blocker {
    test_gate started, release;
};
static int block_until_released(void *arg, cancel_token tok)
{
    (void)tok;
    struct blocker *b = arg;
    test_gate_open(&b->started);
    test_gate_wait(&b->release);
    return 0;
}

static void bad_input(void)
{
    errno = 0;
    CHECK(cancel_pool_new(70000, NULL) == NULL);
    CHECK_EQ(errno, EINVAL);
    cancel_pool *p = cancel_pool_new(1, "bad");
    CHECK(p);
    cancel_task *t = (cancel_task *)1;
    CHECK_EQ(cancel_task_run(NULL, CANCEL_TOKEN_NONE, ret_value, NULL, NULL, &t), EINVAL);
    CHECK(t == NULL);
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, NULL, NULL, NULL, NULL), EINVAL);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, NULL, 0), EINVAL);
    CHECK_EQ(cancel_task_result(NULL), EINVAL);
    CHECK_EQ(cancel_task_state_of(NULL), CANCEL_TASK_PENDING);
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, ret_value, NULL, NULL, &t), 0);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, -5), EINVAL);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
    cancel_task_free(t);
    cancel_task_free(NULL);
    cancel_pool_free(NULL);
    CHECK_EQ(cancel_pool_threads(NULL), 0);
    CHECK_EQ(cancel_pool_threads(p), 1);
    cancel_pool_free(p);

    p = cancel_pool_new(0, NULL); /* one per online CPU */
    CHECK(p);
    CHECK_EQ(cancel_pool_threads(p), sysconf(_SC_NPROCESSORS_ONLN));
    cancel_pool_free(p);
}

static void results_and_states(void)
{
    cancel_pool *p = cancel_pool_new(2, "states");
    struct {
        int ret;
        cancel_task_state want;
    } cases[] = {{0, CANCEL_TASK_COMPLETED}, {EIO, CANCEL_TASK_FAILED}, {-7, CANCEL_TASK_FAILED},
                 /* ECANCELED while the token is not cancelled is a failure */
                 {ECANCELED, CANCEL_TASK_FAILED}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cancel_task *t;
        CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, ret_value, (void *)(intptr_t)cases[i].ret, "r", &t), 0);
        CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
        CHECK_EQ(cancel_task_state_of(t), cases[i].want);
        CHECK_EQ(cancel_task_result(t), cases[i].ret);
        cancel_task_free(t);
    }
    /* Stopped on request: CANCELED with ECANCELED. */
    cancel_source *s = cancel_source_new();
    test_gate started = TEST_GATE_INIT;
    cancel_task *t;
    CHECK_EQ(cancel_task_run(p, cancel_source_token(s), until_cancelled, &started, "stop", &t), 0);
    test_gate_wait(&started);
    CHECK_EQ(cancel_task_state_of(t), CANCEL_TASK_RUNNING);
    CHECK_EQ(cancel_task_result(t), EINPROGRESS);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, 0), ETIMEDOUT); /* 0 polls */
    cancel_source_cancel(s);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
    CHECK_EQ(cancel_task_state_of(t), CANCEL_TASK_CANCELED);
    CHECK_EQ(cancel_task_result(t), ECANCELED);
    cancel_task_free(t);
    cancel_source_free(s);
    cancel_pool_free(p);
}

static void cancelled_token_never_runs(void)
{
    cancel_pool *p = cancel_pool_new(1, "pre");
    cancel_source *s = cancel_source_new();
    cancel_source_cancel(s);
    cancel_task *t;
    CHECK_EQ(cancel_task_run(p, cancel_source_token(s), must_not_run, NULL, "never", &t), 0);
    CHECK_EQ(cancel_task_state_of(t), CANCEL_TASK_CANCELED); /* already, before any thread looked */
    CHECK_EQ(cancel_task_result(t), ECANCELED);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, 0), 0);
    cancel_task_free(t);
    /* Without a handle, too. */
    CHECK_EQ(cancel_task_run(p, cancel_source_token(s), must_not_run, NULL, NULL, NULL), 0);
    cancel_source_free(s);
    cancel_pool_free(p);
}

/* A waiter of a queued task wakes when its token is cancelled, while the
 * only thread of the pool is busy with something that ignores tokens. */
struct waited {
    cancel_task *t;
    int result;
    test_gate waiting;
};
static void *wait_task(void *arg)
{
    struct waited *w = arg;
    test_gate_open(&w->waiting);
    w->result = cancel_task_wait(CANCEL_TOKEN_NONE, w->t, CANCEL_INFINITE);
    return NULL;
}
static void queued_task_cancelled_promptly(void)
{
    cancel_pool *p = cancel_pool_new(1, "busy");
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT};
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, block_until_released, &b, "blocker", NULL), 0);
    test_gate_wait(&b.started);
    cancel_source *s = cancel_source_new();
    struct waited w = {NULL, -1, TEST_GATE_INIT};
    CHECK_EQ(cancel_task_run(p, cancel_source_token(s), must_not_run, NULL, "queued", &w.t), 0);
    CHECK_EQ(cancel_task_state_of(w.t), CANCEL_TASK_PENDING);
    pthread_t th = test_spawn(wait_task, &w);
    test_gate_wait(&w.waiting);
    cancel_source_cancel(s);
    /* Ended CANCELED by the cancel itself: the blocker still holds the thread. */
    CHECK_EQ(cancel_task_state_of(w.t), CANCEL_TASK_CANCELED);
    test_join(th);
    CHECK_EQ(w.result, 0);
    CHECK(!test_gate_is_open(&b.release));
    test_gate_open(&b.release);
    cancel_task_free(w.t);
    cancel_source_free(s);
    cancel_pool_free(p); /* the pool thread then drops the cancelled task */
}

/* The task's token is a linked child of the caller's: the cause comes with it. */
struct cause_seen {
    test_gate started;
    cancel_cause cause;
    char message[64], origin[64];
};
static int record_cause(void *arg, cancel_token tok)
{
    struct cause_seen *c = arg;
    test_gate_open(&c->started);
    CHECK(cancel_token_wait(tok, CANCEL_INFINITE));
    c->cause = cancel_token_cause(tok);
    snprintf(c->message, sizeof c->message, "%s", c->cause.message ? c->cause.message : "(null)");
    snprintf(c->origin, sizeof c->origin, "%s", c->cause.origin ? c->cause.origin : "(null)");
    return ECANCELED;
}
static void cause_comes_from_the_callers_token(void)
{
    cancel_pool *p = cancel_pool_new(1, "causes");
    cancel_source *owner = cancel_source_new_child(CANCEL_TOKEN_NONE, CANCEL_INFINITE, "owner");
    struct cause_seen c = {TEST_GATE_INIT, {0, 0, NULL, NULL}, "", ""};
    cancel_task *t;
    CHECK_EQ(cancel_task_run(p, cancel_source_token(owner), record_cause, &c, "listener", &t), 0);
    test_gate_wait(&c.started);
    cancel_source_fail(owner, EPIPE, "peer went away");
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
    CHECK_EQ(c.cause.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(c.cause.code, EPIPE);
    CHECK_STR(c.message, "peer went away");
    CHECK_STR(c.origin, "owner");
    CHECK_EQ(cancel_task_state_of(t), CANCEL_TASK_CANCELED);
    cancel_task_free(t);
    cancel_source_free(owner);
    cancel_pool_free(p);
}

/* cancel_pool_free: running tasks are cancelled (REQUESTED, origin the
 * pool's name) and waited for; queued ones never run; handles stay valid;
 * submissions during the free are refused. */
struct during_free {
    cancel_pool *pool;
    struct cause_seen c;
    int run_result;
};
static int stop_then_submit(void *arg, cancel_token tok)
{
    struct during_free *d = arg;
    int r = record_cause(&d->c, tok);
    d->run_result = cancel_task_run(d->pool, CANCEL_TOKEN_NONE, must_not_run, NULL, "too late", NULL);
    return r;
}
static void pool_free_cancels_everything(void)
{
    cancel_pool *p = cancel_pool_new(1, "the pool");
    struct during_free d = {p, {TEST_GATE_INIT, {0, 0, NULL, NULL}, "", ""}, -1};
    cancel_task *running, *queued[10];
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, stop_then_submit, &d, "running", &running), 0);
    test_gate_wait(&d.c.started);
    for (int i = 0; i < 10; i++)
        CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, must_not_run, NULL, "queued", &queued[i]), 0);
    cancel_pool_free(p);
    CHECK_EQ(d.run_result, ESHUTDOWN);
    CHECK_EQ(d.c.cause.reason, CANCEL_REASON_REQUESTED);
    CHECK_STR(d.c.origin, "the pool");
    /* Handles outlive the pool. */
    CHECK_EQ(cancel_task_state_of(running), CANCEL_TASK_CANCELED);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, running, 0), 0);
    cancel_task_free(running);
    for (int i = 0; i < 10; i++) {
        CHECK_EQ(cancel_task_state_of(queued[i]), CANCEL_TASK_CANCELED);
        CHECK_EQ(cancel_task_result(queued[i]), ECANCELED);
        cancel_task_free(queued[i]);
    }
}

/* Freeing a pool whose only thread is busy with a task that ignores its
 * token: the queued tasks end CANCELED at once, and their waiters wake
 * then, while free still waits for the running one. */
struct freer {
    cancel_pool *pool;
    test_gate done;
};
static void *free_pool(void *arg)
{
    struct freer *f = arg;
    cancel_pool_free(f->pool);
    test_gate_open(&f->done);
    return NULL;
}
static void pool_free_ends_queued_tasks_promptly(void)
{
    cancel_pool *p = cancel_pool_new(1, "slow");
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT};
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, block_until_released, &b, "deaf", NULL), 0);
    test_gate_wait(&b.started);
    cancel_source *s = cancel_source_new();
    cancel_task *queued[2];
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, must_not_run, NULL, "on the pool's token", &queued[0]), 0);
    CHECK_EQ(cancel_task_run(p, cancel_source_token(s), must_not_run, NULL, "on a token", &queued[1]), 0);
    struct freer f = {p, TEST_GATE_INIT};
    pthread_t th = test_spawn(free_pool, &f);
    for (int i = 0; i < 2; i++) {
        CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, queued[i], CANCEL_INFINITE), 0);
        CHECK_EQ(cancel_task_state_of(queued[i]), CANCEL_TASK_CANCELED);
    }
    CHECK(!test_gate_is_open(&f.done)); /* free waits for the deaf task */
    test_gate_open(&b.release);
    test_join(th);
    for (int i = 0; i < 2; i++)
        cancel_task_free(queued[i]);
    cancel_source_free(s);
}

static void wait_timeouts_and_wait_token(void)
{
    cancel_pool *p = cancel_pool_new(1, "waits");
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT};
    cancel_task *t;
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, block_until_released, &b, "blocked", &t), 0);
    test_gate_wait(&b.started);
    int64_t t0 = test_now_ns();
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, 20 * MS), ETIMEDOUT);
    CHECK(test_now_ns() - t0 >= 20 * MS); /* never early */
    cancel_source *w = cancel_source_new();
    cancel_source_cancel(w);
    CHECK_EQ(cancel_task_wait(cancel_source_token(w), t, CANCEL_INFINITE), ECANCELED);
    CHECK_EQ(cancel_task_wait(cancel_source_token(w), t, 0), ECANCELED);
    /* A cancelled wait token wins over bad arguments. */
    CHECK_EQ(cancel_task_wait(cancel_source_token(w), t, -5), ECANCELED);
    CHECK_EQ(cancel_task_wait(cancel_source_token(w), NULL, 0), ECANCELED);
    CHECK_EQ(cancel_task_state_of(t), CANCEL_TASK_RUNNING); /* the task is not cancelled by it */
    test_gate_open(&b.release);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
    /* An ended task wins over a cancelled wait token (which wins over bad
     * arguments). */
    CHECK_EQ(cancel_task_wait(cancel_source_token(w), t, CANCEL_INFINITE), 0);
    CHECK_EQ(cancel_task_wait(cancel_source_token(w), t, 0), 0);
    CHECK_EQ(cancel_task_wait(cancel_source_token(w), t, -5), 0);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, -5), EINVAL);
    cancel_source_free(w);
    cancel_task_free(t);
    cancel_pool_free(p);
}

/* A wait token cancelled while the waiter sleeps wakes it. */
struct token_waiter {
    cancel_token wtok;
    cancel_task *t;
    int result;
};
static void *wait_with_token(void *arg)
{
    struct token_waiter *w = arg;
    w->result = cancel_task_wait(w->wtok, w->t, CANCEL_INFINITE);
    return NULL;
}
static void wait_token_wakes_sleeping_waiter(void)
{
    cancel_pool *p = cancel_pool_new(1, "waits2");
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT};
    cancel_task *t;
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, block_until_released, &b, "blocked", &t), 0);
    test_gate_wait(&b.started);
    for (int i = 0; i < TEST_SCALE(200); i++) {
        cancel_source *w = cancel_source_new();
        struct token_waiter tw = {cancel_source_token(w), t, -1};
        pthread_t th = test_spawn(wait_with_token, &tw);
        if (i % 2)
            test_sleep_ns(100 * 1000); /* sometimes asleep by then, sometimes not */
        cancel_source_cancel(w);
        test_join(th);
        CHECK_EQ(tw.result, ECANCELED);
        cancel_source_free(w);
    }
    test_gate_open(&b.release);
    cancel_task_free(t);
    cancel_pool_free(p);
}

/* The manual clock governs task waits: a one-hour timeout passes in no
 * time once the clock is moved by an hour, and not before. */
struct timed_waiter {
    cancel_task *t;
    _Atomic int result;
};
static void *wait_one_hour(void *arg)
{
    struct timed_waiter *w = arg;
    atomic_store(&w->result, cancel_task_wait(CANCEL_TOKEN_NONE, w->t, 3600 * 1000 * MS));
    return NULL;
}
static void manual_clock_governs_waits(void)
{
    cancel_pool *p = cancel_pool_new(1, "manual");
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT};
    struct timed_waiter w = {NULL, -1};
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, block_until_released, &b, "blocked", &w.t), 0);
    test_gate_wait(&b.started);
    cancel_clock_use_manual(true);
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    size_t armed = st.deadlines_pending;
    pthread_t th = test_spawn(wait_one_hour, &w);
    do { /* the wait has begun once its timeout is an armed deadline */
        test_sleep_ns(100 * 1000);
        CHECK_EQ(cancel_get_stats(&st), 0);
    } while (st.deadlines_pending == armed);
    cancel_clock_advance(3599 * 1000 * MS);
    CHECK_EQ(atomic_load(&w.result), -1); /* not a second early */
    cancel_clock_advance(1000 * MS);
    test_join(th);
    CHECK_EQ(w.result, ETIMEDOUT);
    cancel_clock_use_manual(false);
    test_gate_open(&b.release);
    cancel_task_free(w.t);
    cancel_pool_free(p);
}

/* The manual clock switched on during a wait with a timeout on the real
 * clock: the kernel cannot keep that deadline any more, so the wait waits
 * for the task alone (block.h) and sleeps meanwhile; it must not spin on a
 * kernel deadline that has passed. The waiting thread's CPU time over
 * 300 ms after its real deadline tells: a spinning thread gets a share of
 * a CPU even on a loaded machine, a sleeping one next to nothing. */
struct switched {
    cancel_task *t;
    _Atomic int result;
    test_gate in_wait;
};
static void *wait_while_clock_switches(void *arg)
{
    struct switched *w = arg;
    test_gate_open(&w->in_wait);
    atomic_store(&w->result, cancel_task_wait(CANCEL_TOKEN_NONE, w->t, 50 * MS));
    return NULL;
}
static int64_t thread_cpu_ns(pthread_t th)
{
    clockid_t c;
    struct timespec ts;
    CHECK_EQ(pthread_getcpuclockid(th, &c), 0);
    CHECK_EQ(clock_gettime(c, &ts), 0);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
static void manual_clock_switched_on_during_wait(void)
{
    cancel_pool *p = cancel_pool_new(1, "switch");
    struct blocker b = {TEST_GATE_INIT, TEST_GATE_INIT};
    struct switched w = {NULL, -1, TEST_GATE_INIT};
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, block_until_released, &b, "blocked", &w.t), 0);
    test_gate_wait(&b.started);
    int64_t t0 = test_now_ns();
    pthread_t th = test_spawn(wait_while_clock_switches, &w);
    test_gate_wait(&w.in_wait); /* its deadline is at most t0 + 50 ms + this */
    int64_t deadline = test_now_ns() + 50 * MS;
    cancel_clock_use_manual(true);
    while (test_now_ns() < deadline + 10 * MS)
        test_sleep_ns(MS);
    int64_t c0 = thread_cpu_ns(th);
    test_sleep_ns(300 * MS);
    int64_t used = thread_cpu_ns(th) - c0;
    CHECK_EQ(atomic_load(&w.result), -1); /* the frozen clock keeps the timeout from passing */
    if (used > 30 * MS) {
        fprintf(stderr, "the waiting thread used %.1f ms of CPU in 300 ms (from %.1f ms after it began)\n",
                used / 1e6, (test_now_ns() - 300 * MS - t0) / 1e6);
        abort();
    }
    test_gate_open(&b.release);
    test_join(th);
    CHECK_EQ(w.result, 0);
    cancel_clock_use_manual(false);
    cancel_task_free(w.t);
    cancel_pool_free(p);
}

/* Waiting inside a task for a task of the same one-thread pool: the waiter
 * runs it meanwhile. */
struct nested {
    cancel_pool *pool;
    int depth;
    int value;
};
static int spawn_and_wait(void *arg, cancel_token tok)
{
    struct nested *n = arg;
    if (n->depth == 0) {
        n->value = 42;
        return 0;
    }
    struct nested inner = {n->pool, n->depth - 1, 0};
    cancel_task *t;
    CHECK_EQ(cancel_task_run(n->pool, tok, spawn_and_wait, &inner, "inner", &t), 0);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
    CHECK_EQ(cancel_task_result(t), 0);
    cancel_task_free(t);
    n->value = inner.value + 1; /* the inner write is visible after the wait */
    return 0;
}
static void waiting_inside_a_task_never_deadlocks(void)
{
    cancel_pool *p = cancel_pool_new(1, "one");
    struct nested n = {p, 20, 0};
    cancel_task *t;
    CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, spawn_and_wait, &n, "outer", &t), 0);
    CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
    CHECK_EQ(n.value, 62);
    cancel_task_free(t);
    cancel_pool_free(p);
}

/* Many tasks from several threads; every task's write is visible after
 * its wait (TSan checks the happens-before). */
struct counted {
    int value;
    _Atomic int *runs;
};
static int write_value(void *arg, cancel_token tok)
{
    (void)tok;
    struct counted *c = arg;
    c->value = 1;
    atomic_fetch_add_explicit(c->runs, 1, memory_order_relaxed);
    return 0;
}
struct submitter {
    cancel_pool *pool;
    int n;
    _Atomic int *runs;
};
static void *submit_many(void *arg)
{
    struct submitter *s = arg;
    enum { BATCH = 64 };
    struct counted c[BATCH];
    cancel_task *t[BATCH];
    for (int done = 0; done < s->n; done += BATCH) {
        for (int i = 0; i < BATCH; i++) {
            c[i] = (struct counted){0, s->runs};
            CHECK_EQ(cancel_task_run(s->pool, CANCEL_TOKEN_NONE, write_value, &c[i], NULL, &t[i]), 0);
        }
        for (int i = 0; i < BATCH; i++) {
            CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t[i], CANCEL_INFINITE), 0);
            CHECK_EQ(c[i].value, 1);
            cancel_task_free(t[i]);
        }
        /* and some that clean up after themselves */
        for (int i = 0; i < 8; i++)
            CHECK_EQ(cancel_task_run(s->pool, CANCEL_TOKEN_NONE, ret_value, NULL, NULL, NULL), 0);
    }
    return NULL;
}
static void many_tasks_many_submitters(void)
{
    cancel_pool *p = cancel_pool_new(3, "many");
    _Atomic int runs = 0;
    struct submitter s = {p, TEST_SCALE(20000), &runs};
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        th[i] = test_spawn(submit_many, &s);
    for (int i = 0; i < 3; i++)
        test_join(th[i]);
    CHECK_EQ(atomic_load(&runs), 3 * ((s.n + 63) / 64 * 64));
    cancel_pool_free(p);
}

/* Cancellation racing the start of queued tasks: each ends exactly once,
 * either run (and then cancelled or completed) or CANCELED unrun. */
static int quick(void *arg, cancel_token tok)
{
    atomic_fetch_add_explicit((_Atomic int *)arg, 1, memory_order_relaxed);
    return cancel_token_check(tok);
}
static void cancel_races_start(void)
{
    cancel_pool *p = cancel_pool_new(2, "races");
    uint64_t rng = 99;
    for (int i = 0; i < TEST_SCALE(3000); i++) {
        cancel_source *s = cancel_source_new();
        _Atomic int ran = 0;
        cancel_task *t[4];
        for (int k = 0; k < 4; k++)
            CHECK_EQ(cancel_task_run(p, cancel_source_token(s), quick, &ran, NULL, &t[k]), 0);
        test_jitter(&rng, 3000);
        cancel_source_cancel(s);
        int unrun = 0;
        for (int k = 0; k < 4; k++) {
            CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t[k], CANCEL_INFINITE), 0);
            cancel_task_state st = cancel_task_state_of(t[k]);
            CHECK(st == CANCEL_TASK_COMPLETED || st == CANCEL_TASK_CANCELED);
            if (st == CANCEL_TASK_CANCELED && cancel_task_result(t[k]) == ECANCELED)
                unrun++; /* or ran and returned ECANCELED: counted in `ran` */
            cancel_task_free(t[k]);
        }
        CHECK(atomic_load(&ran) <= 4);
        CHECK(atomic_load(&ran) + unrun >= 4);
        cancel_source_free(s);
    }
    cancel_pool_free(p);
}

/* Freeing a pool with plenty queued, over and over (no leak, no hang). */
static void free_with_work_queued(void)
{
    for (int i = 0; i < TEST_SCALE(200); i++) {
        cancel_pool *p = cancel_pool_new(2, "churn");
        _Atomic int ran = 0;
        for (int k = 0; k < 50; k++)
            CHECK_EQ(cancel_task_run(p, CANCEL_TOKEN_NONE, quick, &ran, NULL, NULL), 0);
        cancel_pool_free(p);
        CHECK(atomic_load(&ran) <= 50);
    }
}

/* Two threads submit at once to a pool whose threads are idle; the first
 * task waits for the second to start. A task queued behind another whose
 * link an idle thread could not see yet (the pop said empty, half pushed)
 * must still find a thread: the thread woken for the first one passes the
 * wake-up on. Before, the second task could wait for ever beside a
 * sleeping thread (a race: seen within seconds under TSan on a loaded
 * machine, rarely otherwise). */
struct pair {
    cancel_pool *p;
    test_gate go, second_started;
    cancel_task *first, *second;
};
static int wait_for_second(void *arg, cancel_token tok)
{
    (void)tok;
    struct pair *pr = arg;
    if (!test_gate_wait_for(&pr->second_started, 10 * 1000 * MS)) {
        fprintf(stderr, "a queued task found no thread while one slept\n");
        abort();
    }
    return 0;
}
static int open_second(void *arg, cancel_token tok)
{
    (void)tok;
    test_gate_open(&((struct pair *)arg)->second_started);
    return 0;
}
static void *submit_second(void *arg)
{
    struct pair *pr = arg;
    test_gate_wait(&pr->go);
    CHECK_EQ(cancel_task_run(pr->p, CANCEL_TOKEN_NONE, open_second, pr, NULL, &pr->second), 0);
    return NULL;
}
static void queued_behind_a_half_push(void)
{
    for (int i = 0; i < TEST_SCALE(3000); i++) {
        struct pair pr = {cancel_pool_new(2, "pair"), TEST_GATE_INIT, TEST_GATE_INIT, NULL, NULL};
        pthread_t th = test_spawn(submit_second, &pr);
        test_sleep_ns(20 * 1000); /* let the pool's threads go idle (not needed for correctness) */
        test_gate_open(&pr.go);
        CHECK_EQ(cancel_task_run(pr.p, CANCEL_TOKEN_NONE, wait_for_second, &pr, NULL, &pr.first), 0);
        test_join(th);
        CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, pr.first, CANCEL_INFINITE), 0);
        CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, pr.second, CANCEL_INFINITE), 0);
        cancel_task_free(pr.first);
        cancel_task_free(pr.second);
        cancel_pool_free(pr.p);
    }
}

int main(void)
{
    RUN(bad_input);
    RUN(results_and_states);
    RUN(cancelled_token_never_runs);
    RUN(queued_task_cancelled_promptly);
    RUN(cause_comes_from_the_callers_token);
    RUN(pool_free_cancels_everything);
    RUN(pool_free_ends_queued_tasks_promptly);
    RUN(wait_timeouts_and_wait_token);
    RUN(wait_token_wakes_sleeping_waiter);
    RUN(manual_clock_governs_waits);
    RUN(manual_clock_switched_on_during_wait);
    RUN(waiting_inside_a_task_never_deadlocks);
    RUN(many_tasks_many_submitters);
    RUN(cancel_races_start);
    RUN(free_with_work_queued);
    RUN(queued_behind_a_half_push);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0); /* nothing of the library left running */
    return 0;
}
