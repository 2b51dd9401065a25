/* cancel_cond_wait: wake-ups, cancellation before and while blocked, a
 * cancel from the thread holding the mutex, races of cancellation against
 * the predicate check, timeouts on CLOCK_MONOTONIC and on the manual clock,
 * every mutex type, bad input. */
#include "../check.h"
#include "sync_probe.h"

#include <cancel.h>
#include <cancel/sync.h>
#include <errno.h>


static pthread_mutex_t *new_mutex(int type)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    CHECK_EQ(pthread_mutexattr_settype(&a, type), 0);
    pthread_mutex_t *m = malloc(sizeof *m);
    CHECK(m);
    CHECK_EQ(pthread_mutex_init(m, &a), 0);
    pthread_mutexattr_destroy(&a);
    return m;
}

static void free_mutex(pthread_mutex_t *m)
{
    CHECK_EQ(pthread_mutex_destroy(m), 0);
    free(m);
}

/* The mutex is held by the caller on return: an error-checking mutex tells. */
static void check_held(pthread_mutex_t *m)
{
    CHECK_EQ(pthread_mutex_unlock(m), 0);
    CHECK_EQ(pthread_mutex_lock(m), 0);
}

static void bad_input(void)
{
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    CHECK_EQ(pthread_mutex_lock(m), 0);
    errno = 77;
    CHECK_EQ(cancel_cond_wait(CANCEL_TOKEN_NONE, NULL, m, 0), EINVAL);
    CHECK_EQ(cancel_cond_wait(CANCEL_TOKEN_NONE, &cv, NULL, 0), EINVAL);
    CHECK_EQ(cancel_cond_wait(CANCEL_TOKEN_NONE, &cv, m, -2), EINVAL);
    CHECK_EQ(cancel_cond_wait(CANCEL_TOKEN_NONE, &cv, m, INT64_MIN), EINVAL);
    CHECK_EQ(errno, 77);
    check_held(m);
    CHECK_EQ(pthread_mutex_unlock(m), 0);
    /* An error-checking mutex the caller does not hold: EPERM passed through
     * (ThreadSanitizer reports the misuse itself, rightly: not there). */
#if !TEST_TSAN
    cancel_source *src = cancel_source_new();
    CHECK_EQ(cancel_cond_wait(cancel_source_token(src), &cv, m, 1000 * 1000), EPERM);
    cancel_source_free(src);
#endif
    free_mutex(m);
}

static void cancelled_before(void)
{
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    cancel_token t = cancel_source_token(src);
    CHECK_EQ(pthread_mutex_lock(m), 0);
    CHECK_EQ(cancel_cond_wait(t, &cv, m, CANCEL_INFINITE), ECANCELED);
    check_held(m);
    CHECK_EQ(cancel_cond_wait(t, &cv, m, 0), ECANCELED);
    CHECK_EQ(cancel_cond_wait(t, NULL, NULL, -7), ECANCELED); /* wins over bad arguments */
    CHECK_EQ(pthread_mutex_unlock(m), 0);
    cancel_source_free(src);
    free_mutex(m);
}

static void timeouts(void)
{
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
    /* A condvar on CLOCK_REALTIME: the timeout still runs on CLOCK_MONOTONIC
     * (not checkable by moving the wall clock here, but the wait is timed
     * and must be neither early nor unbounded). */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_REALTIME);
    pthread_cond_t cv;
    pthread_cond_init(&cv, &ca);
    cancel_source *src = cancel_source_new();
    CHECK_EQ(pthread_mutex_lock(m), 0);
    CHECK_EQ(cancel_cond_wait(cancel_source_token(src), &cv, m, 0), ETIMEDOUT); /* try once */
    check_held(m);
    int64_t t0 = test_now_ns();
    int e;
    /* Spurious 0 returns are allowed: loop like a caller would. */
    int64_t deadline = t0 + 20 * 1000 * 1000;
    do {
        /* past the deadline, try once: a negative timeout is EINVAL */
        int64_t left = deadline - test_now_ns();
        e = cancel_cond_wait(cancel_source_token(src), &cv, m, left > 0 ? left : 0);
    } while (e == 0);
    CHECK_EQ(e, ETIMEDOUT);
    CHECK(test_now_ns() - t0 >= 20 * 1000 * 1000); /* never early */
    check_held(m);
    CHECK_EQ(pthread_mutex_unlock(m), 0);
    pthread_cond_destroy(&cv);
    pthread_condattr_destroy(&ca);
    cancel_source_free(src);
    free_mutex(m);
}

struct waiter {
    cancel_token tok;
    pthread_cond_t *cv;
    pthread_mutex_t *mu;
    int64_t timeout;
    bool *pred; /* under mu */
    probe p;
    _Atomic int result;
    bool held_on_return;
};

static void *wait_thread(void *arg)
{
    struct waiter *w = arg;
    probe_arm(&w->p);
    CHECK_EQ(pthread_mutex_lock(w->mu), 0);
    int e = 0;
    while (!*w->pred && (e = cancel_cond_wait(w->tok, w->cv, w->mu, w->timeout)) == 0) {
    }
    w->held_on_return = pthread_mutex_unlock(w->mu) == 0; /* an error-checking mutex */
    atomic_store(&w->result, e);
    return NULL;
}

static pthread_t start_waiter(struct waiter *w, cancel_token tok, pthread_cond_t *cv, pthread_mutex_t *mu,
                              bool *pred, int64_t timeout)
{
    *w = (struct waiter){.tok = tok, .cv = cv, .mu = mu, .pred = pred, .timeout = timeout};
    atomic_init(&w->p.word, NULL);
    atomic_init(&w->result, -1);
    pthread_t th = test_spawn(wait_thread, w);
    probe_wait_blocked(&w->p, "cancel_cond_wait");
    return th;
}

static void signal_wakes(void)
{
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    bool pred = false;
    cancel_source *src = cancel_source_new();
    struct waiter w;
    pthread_t th = start_waiter(&w, cancel_source_token(src), &cv, m, &pred, CANCEL_INFINITE);
    CHECK_EQ(pthread_mutex_lock(m), 0);
    pred = true;
    pthread_cond_signal(&cv);
    CHECK_EQ(pthread_mutex_unlock(m), 0);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), 0);
    CHECK(w.held_on_return);
    /* Nothing is left registered on the token after the wait. */
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(src, &info), 0);
    CHECK_EQ(info.registrations, 0);
    cancel_source_free(src);
    free_mutex(m);
}

static void cancel_while_blocked(void)
{
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    bool pred = false;
    for (int async = 0; async < 2; async++) {
        cancel_source *src = cancel_source_new();
        struct waiter w;
        pthread_t th = start_waiter(&w, cancel_source_token(src), &cv, m, &pred, CANCEL_INFINITE);
        if (async)
            cancel_source_cancel_async(src); /* the callback runs on the library thread */
        else
            cancel_source_cancel(src);
        test_join(th);
        CHECK_EQ(atomic_load(&w.result), ECANCELED);
        CHECK(w.held_on_return);
        cancel_source_free(src);
    }
    pthread_cond_destroy(&cv);
    free_mutex(m);
}

/* The canceller holds the caller's mutex while it cancels: the callback
 * runs on the canceller's thread and must not take the mutex. */
static void cancel_while_holding_the_mutex(void)
{
    int types[] = {PTHREAD_MUTEX_NORMAL, PTHREAD_MUTEX_ERRORCHECK, PTHREAD_MUTEX_RECURSIVE};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        pthread_mutex_t *m = new_mutex(types[i]);
        pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
        bool pred = false;
        cancel_source *src = cancel_source_new();
        struct waiter w;
        pthread_t th = start_waiter(&w, cancel_source_token(src), &cv, m, &pred, CANCEL_INFINITE);
        CHECK_EQ(pthread_mutex_lock(m), 0);
        CHECK(cancel_source_cancel(src)); /* returns: no deadlock */
        CHECK_EQ(atomic_load(&w.result), -1); /* it cannot return without the mutex */
        CHECK_EQ(pthread_mutex_unlock(m), 0);
        test_join(th);
        CHECK_EQ(atomic_load(&w.result), ECANCELED);
        cancel_source_free(src);
        pthread_cond_destroy(&cv);
        free_mutex(m);
    }
}

/* pthread_cond_wait is a pthread cancellation point, and so is this call:
 * a thread cancelled in it leaves nothing registered (the callback would
 * otherwise write into a dead frame) and the mutex held, as POSIX says. */
static void unlock_cleanup(void *m)
{
    pthread_mutex_unlock(m);
}

static void *cancellable_waiter(void *arg)
{
    struct waiter *w = arg;
    probe_arm(&w->p);
    CHECK_EQ(pthread_mutex_lock(w->mu), 0);
    pthread_cleanup_push(unlock_cleanup, w->mu);
    while (!*w->pred && cancel_cond_wait(w->tok, w->cv, w->mu, w->timeout) == 0) {
    }
    pthread_cleanup_pop(1);
    return NULL;
}

static void pthread_cancel_in_the_wait(void)
{
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    bool pred = false;
    for (int timed = 0; timed < 2; timed++) {
        cancel_source *src = cancel_source_new();
        struct waiter w = {.tok = cancel_source_token(src), .cv = &cv, .mu = m, .pred = &pred,
                           .timeout = timed ? 3600LL * 1000 * 1000 * 1000 : CANCEL_INFINITE};
        atomic_init(&w.p.word, NULL);
        pthread_t th = test_spawn(cancellable_waiter, &w);
        probe_wait_blocked(&w.p, "cancel_cond_wait");
        CHECK_EQ(pthread_cancel(th), 0);
        void *ret;
        CHECK_EQ(pthread_join(th, &ret), 0);
        CHECK(ret == PTHREAD_CANCELED);
        cancel_source_info info;
        CHECK_EQ(cancel_source_get_info(src, &info), 0);
        CHECK_EQ(info.registrations, 0);
        cancel_source_cancel(src); /* runs nothing: ASan would see a write into the dead frame */
        CHECK_EQ(pthread_mutex_lock(m), 0); /* the cleanup unlocked it */
        CHECK_EQ(pthread_mutex_unlock(m), 0);
        cancel_source_free(src);
    }
    free_mutex(m);
}

/* A retained token whose source is freed uncancelled: the wait goes on
 * until a signal, without ECANCELED. */
static void source_freed_mid_wait(void)
{
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    bool pred = false;
    cancel_source *src = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(src));
    struct waiter w;
    pthread_t th = start_waiter(&w, t, &cv, m, &pred, CANCEL_INFINITE);
    cancel_source_free(src);
    CHECK_EQ(atomic_load(&w.result), -1);
    CHECK_EQ(pthread_mutex_lock(m), 0);
    pred = true;
    pthread_cond_broadcast(&cv);
    CHECK_EQ(pthread_mutex_unlock(m), 0);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), 0);
    cancel_token_release(t);
    free_mutex(m);
}

static void timeout_manual_clock(void)
{
    CHECK_EQ(cancel_clock_use_manual(true), 0);
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    bool pred = false;
    cancel_source *src = cancel_source_new();
    struct waiter w;
    pthread_t th = start_waiter(&w, cancel_source_token(src), &cv, m, &pred, 1000 * 1000 * 1000);
    cancel_clock_advance(999 * 1000 * 1000);
    CHECK_EQ(atomic_load(&w.result), -1);
    cancel_clock_advance(1000 * 1000);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), ETIMEDOUT);
    CHECK(w.held_on_return);
    /* A token without a source: the timeout alone. */
    th = start_waiter(&w, CANCEL_TOKEN_NONE, &cv, m, &pred, 10);
    cancel_clock_advance(10);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), ETIMEDOUT);
    cancel_source_free(src);
    free_mutex(m);
    CHECK_EQ(cancel_clock_use_manual(false), 0);
}

/* Pitfall 19: cancellation at random points around the waiter's predicate
 * check and its entry into the wait, including while it still holds the
 * mutex before sleeping: no lost wake-up (the CTest timeout is the
 * watchdog), the mutex held on return. One waiter thread, many rounds. */
struct race {
    probe p;
    pthread_mutex_t *mu;
    pthread_cond_t cv;
    cancel_source *_Atomic src;
    _Atomic int round;    /* the round the waiter is to run */
    _Atomic int finished; /* rounds the waiter finished */
    uint64_t rng;
};

static void *race_waiter(void *arg)
{
    struct race *r = arg;
    probe_arm(&r->p);
    for (int round = 1;; round++) {
        while (atomic_load(&r->round) < round)
            sched_yield();
        cancel_source *src = atomic_load(&r->src);
        if (!src)
            return NULL;
        cancel_token t = cancel_source_token(src);
        CHECK_EQ(pthread_mutex_lock(r->mu), 0);
        test_jitter(&r->rng, 400);
        int e = 0;
        /* The predicate is the token itself, checked under the mutex. */
        while (!cancel_token_is_requested(t) && (e = cancel_cond_wait(t, &r->cv, r->mu, CANCEL_INFINITE)) == 0) {
        }
        (void)e;
        CHECK_EQ(pthread_mutex_unlock(r->mu), 0);
        atomic_store(&r->finished, round);
    }
}

static void cancel_races_predicate_check(void)
{
    int types[] = {PTHREAD_MUTEX_NORMAL, PTHREAD_MUTEX_ERRORCHECK, PTHREAD_MUTEX_RECURSIVE};
    struct race r = {.p = PROBE_INIT, .mu = new_mutex(PTHREAD_MUTEX_ERRORCHECK), .rng = 31};
    pthread_cond_init(&r.cv, NULL);
    uint64_t rng = 17;
    int rounds = TEST_SCALE(100000);
    for (int t = 0; t < 3; t++) {
        free_mutex(r.mu);
        r.mu = new_mutex(types[t]);
        atomic_store(&r.round, 0);
        atomic_store(&r.finished, 0);
        pthread_t th = test_spawn(race_waiter, &r);
        for (int i = 1; i <= rounds / 3; i++) {
            cancel_source *src = cancel_source_new();
            atomic_store(&r.src, src);
            atomic_store(&r.round, i);
            if (i % 4 == 3) {
                /* Right after it marked itself blocked: that is after its
                 * registration, and just before (or just after) it entered
                 * pthread_cond_wait, still holding the mutex: the window in
                 * which a broadcast would be lost. */
                probe_wait_blocked(&r.p, "cancel_cond_wait");
                test_jitter(&rng, 100);
            } else {
                test_jitter(&rng, 600);
            }
            if (i % 4 == 0) {
                /* from the thread holding the mutex, at random points */
                CHECK_EQ(pthread_mutex_lock(r.mu), 0);
                cancel_source_cancel(src);
                CHECK_EQ(pthread_mutex_unlock(r.mu), 0);
            } else if (i % 4 == 1 || (i % 8 == 7)) {
                cancel_source_cancel_async(src);
            } else {
                cancel_source_cancel(src);
            }
            while (atomic_load(&r.finished) < i)
                sched_yield();
            cancel_source_free(src);
        }
        atomic_store(&r.src, NULL);
        atomic_store(&r.round, rounds / 3 + 1);
        test_join(th);
    }
    pthread_cond_destroy(&r.cv);
    free_mutex(r.mu);
}

/* Cancelled waiters leave a condvar that still works for everyone else,
 * and the caller may destroy the condvar as soon as the wait returned. */
static void destroy_after_cancel(void)
{
    for (int i = 0; i < TEST_SCALE(2000); i++) {
        pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_ERRORCHECK);
        pthread_cond_t *cv = malloc(sizeof *cv);
        CHECK(cv);
        pthread_cond_init(cv, NULL);
        bool pred = false;
        cancel_source *src = cancel_source_new();
        struct waiter w;
        pthread_t th = start_waiter(&w, cancel_source_token(src), cv, m, &pred, CANCEL_INFINITE);
        cancel_source_cancel_async(src);
        test_join(th);
        CHECK_EQ(atomic_load(&w.result), ECANCELED);
        /* ASan would see a broadcast still touching it. */
        pthread_cond_destroy(cv);
        free(cv);
        cancel_source_free(src);
        free_mutex(m);
    }
}

/* The callback runs on whichever thread cancels, and waits there while the
 * waiter is between its check of the token and its sleep (it owns the
 * mutex then). That wait must not be a pthread cancellation point: a
 * canceller with a cancellation pending would be unwound from inside the
 * core's dispatch, and the waiter's broadcast would never come. To hold the
 * window open, the waiter locks a recursive mutex twice, so that it still
 * owns it while it sleeps (pthread_cond_wait releases one level: a misuse
 * the header forbids, used here only for that); the callback then waits
 * until the test broadcasts, which it does once the canceller sleeps in the
 * kernel (read from /proc) rather than spins. glibc only: elsewhere the
 * callback does not look at the owner. */
struct pending_canceller {
    cancel_source *src;
    _Atomic int tid;
    _Atomic int returned;
};
static void *cancel_with_cancel_pending(void *arg)
{
    struct pending_canceller *c = arg;
    atomic_store(&c->tid, (int)syscall(SYS_gettid));
    CHECK_EQ(pthread_cancel(pthread_self()), 0); /* deferred: pending until a cancellation point */
    CHECK(cancel_source_cancel(c->src));
    atomic_store(&c->returned, 1);
    int old;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old); /* and leave normally */
    return NULL;
}
static void *double_locked_waiter(void *arg)
{
    struct waiter *w = arg;
    probe_arm(&w->p);
    CHECK_EQ(pthread_mutex_lock(w->mu), 0);
    CHECK_EQ(pthread_mutex_lock(w->mu), 0);
    atomic_store(&w->result, cancel_cond_wait(w->tok, w->cv, w->mu, CANCEL_INFINITE));
    CHECK_EQ(pthread_mutex_unlock(w->mu), 0);
    CHECK_EQ(pthread_mutex_unlock(w->mu), 0);
    return NULL;
}
/* Whether thread `tid` sleeps in a futex wait now. */
static bool in_futex_wait(int tid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool r = false;
    long nr;
    unsigned long addr, op;
    if (fgets(line, sizeof line, f) && sscanf(line, "%ld 0x%lx 0x%lx", &nr, &addr, &op) == 3)
        r = nr == SYS_futex && ((op & 127) == 0 || (op & 127) == 9); /* FUTEX_WAIT(_BITSET) */
    fclose(f);
    return r;
}
static void canceller_with_cancellation_pending(void)
{
    pthread_mutex_t *m = new_mutex(PTHREAD_MUTEX_RECURSIVE);
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    cancel_source *src = cancel_source_new();
    struct waiter w = {.tok = cancel_source_token(src), .cv = &cv, .mu = m};
    atomic_init(&w.p.word, NULL);
    atomic_init(&w.result, -1);
    pthread_t wt = test_spawn(double_locked_waiter, &w);
    probe_wait_blocked(&w.p, "cancel_cond_wait");
    struct pending_canceller c = {src, 0, 0};
    pthread_t ct = test_spawn(cancel_with_cancel_pending, &c);
    while (!atomic_load(&c.returned)) {
        void *ret;
        if (pthread_tryjoin_np(ct, &ret) == 0) {
            fprintf(stderr, "the cancelling thread was %s inside cancel_source_cancel\n",
                    ret == PTHREAD_CANCELED ? "cancelled (a cancellation point)" : "ended");
            abort();
        }
        int tid = atomic_load(&c.tid);
        if (tid && in_futex_wait(tid))
            pthread_cond_broadcast(&cv); /* the callback sleeps: let the waiter go */
        test_sleep_ns(100 * 1000);
    }
    test_join(ct);
    test_join(wt);
    CHECK_EQ(atomic_load(&w.result), ECANCELED);
    cancel_source_free(src);
    pthread_cond_destroy(&cv);
    free_mutex(m);
}

int main(void)
{
    RUN(bad_input);
    RUN(cancelled_before);
    RUN(timeouts);
    RUN(signal_wakes);
    RUN(cancel_while_blocked);
    RUN(cancel_while_holding_the_mutex);
    RUN(source_freed_mid_wait);
    RUN(pthread_cancel_in_the_wait);
    RUN(timeout_manual_clock);
    RUN(cancel_races_predicate_check);
    RUN(destroy_after_cancel);
    RUN(canceller_with_cancellation_pending);
    return 0;
}
