/* cancel_sem: counting, overflow, cancellation before and while blocked,
 * timeouts (real and manual clock), bad input, and races that must account
 * for every unit. */
#include "../check.h"
#include "sync_probe.h"

#include <cancel.h>
#include <cancel/sync.h>
#include <errno.h>
#include <limits.h>

static void counts(void)
{
    cancel_sem *s = cancel_sem_new(2);
    CHECK(s);
    CHECK_EQ(cancel_sem_value(s), 2);
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, 0), 0);
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, CANCEL_INFINITE), 0);
    CHECK_EQ(cancel_sem_value(s), 0);
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, 0), ETIMEDOUT); /* try once */
    CHECK_EQ(cancel_sem_post(s), 0);
    CHECK_EQ(cancel_sem_value(s), 1);
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, 0), 0);
    cancel_sem_free(s);
    cancel_sem_free(NULL);
}

static void limits(void)
{
    CHECK(CANCEL_SEM_MAX >= INT_MAX);
    cancel_sem *s = cancel_sem_new(CANCEL_SEM_MAX);
    CHECK(s);
    CHECK_EQ(cancel_sem_post(s), EOVERFLOW);
    CHECK_EQ(cancel_sem_value(s), CANCEL_SEM_MAX); /* unchanged */
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, 0), 0);
    CHECK_EQ(cancel_sem_post(s), 0);
    CHECK_EQ(cancel_sem_post(s), EOVERFLOW);
    cancel_sem_free(s);
    errno = 0;
    CHECK(cancel_sem_new((unsigned)CANCEL_SEM_MAX + 1u) == NULL);
    CHECK_EQ(errno, EINVAL);
}

static void bad_input(void)
{
    cancel_sem *s = cancel_sem_new(1);
    errno = 1234;
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, NULL, 0), EINVAL);
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, -5), EINVAL);
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, INT64_MIN), EINVAL);
    CHECK_EQ(cancel_sem_post(NULL), EINVAL);
    CHECK_EQ(cancel_sem_value(NULL), 0);
    CHECK_EQ(errno, 1234); /* errno untouched */
    CHECK_EQ(cancel_sem_value(s), 1); /* a bad timeout took nothing */
    cancel_sem_free(s);
}

static void cancelled_before(void)
{
    cancel_source *src = cancel_source_new();
    cancel_source_cancel(src);
    cancel_token t = cancel_source_token(src);
    cancel_sem *s = cancel_sem_new(3);
    CHECK_EQ(cancel_sem_wait(t, s, CANCEL_INFINITE), ECANCELED);
    CHECK_EQ(cancel_sem_wait(t, s, 0), ECANCELED);
    CHECK_EQ(cancel_sem_value(s), 3); /* no unit taken */
    CHECK_EQ(cancel_sem_wait(t, NULL, -5), ECANCELED); /* wins over bad arguments */
    cancel_sem_free(s);
    cancel_source_free(src);
}

static void timeout_real_clock(void)
{
    cancel_source *src = cancel_source_new();
    cancel_sem *s = cancel_sem_new(0);
    int64_t t0 = test_now_ns();
    CHECK_EQ(cancel_sem_wait(cancel_source_token(src), s, 20 * 1000 * 1000), ETIMEDOUT);
    CHECK(test_now_ns() - t0 >= 20 * 1000 * 1000); /* never early */
    t0 = test_now_ns();
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, 5 * 1000 * 1000), ETIMEDOUT);
    CHECK(test_now_ns() - t0 >= 5 * 1000 * 1000);
    cancel_sem_free(s);
    cancel_source_free(src);
}

struct waiter {
    cancel_token tok;
    cancel_sem *sem;
    int64_t timeout;
    probe p;
    _Atomic int result; /* -1 until it returns */
};

static void *wait_thread(void *arg)
{
    struct waiter *w = arg;
    probe_arm(&w->p);
    atomic_store(&w->result, cancel_sem_wait(w->tok, w->sem, w->timeout));
    return NULL;
}

static pthread_t start_waiter(struct waiter *w, cancel_token tok, cancel_sem *s, int64_t timeout)
{
    w->tok = tok;
    w->sem = s;
    w->timeout = timeout;
    atomic_init(&w->p.word, NULL);
    atomic_init(&w->result, -1);
    pthread_t th = test_spawn(wait_thread, w);
    probe_wait_blocked(&w->p, "cancel_sem_wait");
    return th;
}

static void cancel_while_blocked(void)
{
    cancel_source *src = cancel_source_new();
    cancel_sem *s = cancel_sem_new(0);
    struct waiter w;
    pthread_t th = start_waiter(&w, cancel_source_token(src), s, CANCEL_INFINITE);
    cancel_source_cancel(src);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), ECANCELED);
    /* A post afterwards is not lost to the cancelled waiter. */
    CHECK_EQ(cancel_sem_post(s), 0);
    CHECK_EQ(cancel_sem_value(s), 1);
    cancel_source_free(src);

    /* Asynchronously: the callback runs on the library thread. */
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, 0), 0);
    src = cancel_source_new();
    th = start_waiter(&w, cancel_source_token(src), s, CANCEL_INFINITE);
    cancel_source_cancel_async(src);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), ECANCELED);
    cancel_source_free(src);
    cancel_sem_free(s);
}

static void post_wakes_waiter(void)
{
    cancel_source *src = cancel_source_new();
    cancel_sem *s = cancel_sem_new(0);
    struct waiter w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        th[i] = start_waiter(&w[i], cancel_source_token(src), s, CANCEL_INFINITE);
    for (int i = 0; i < 4; i++)
        CHECK_EQ(cancel_sem_post(s), 0);
    for (int i = 0; i < 4; i++) {
        test_join(th[i]);
        CHECK_EQ(atomic_load(&w[i].result), 0);
    }
    CHECK_EQ(cancel_sem_value(s), 0);
    cancel_source_free(src);
    cancel_sem_free(s);
}

/* A retained token whose source is freed uncancelled: the wait goes on,
 * without ECANCELED, until a post. */
static void source_freed_mid_wait(void)
{
    cancel_source *src = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(src));
    cancel_sem *s = cancel_sem_new(0);
    struct waiter w;
    pthread_t th = start_waiter(&w, t, s, CANCEL_INFINITE);
    cancel_source_free(src);
    CHECK_EQ(atomic_load(&w.result), -1); /* still waiting (a check that cannot fail by timing) */
    CHECK_EQ(cancel_sem_post(s), 0);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), 0);
    cancel_token_release(t);
    cancel_sem_free(s);
}

static void timeout_manual_clock(void)
{
    CHECK_EQ(cancel_clock_use_manual(true), 0);
    cancel_source *src = cancel_source_new();
    cancel_sem *s = cancel_sem_new(0);
    struct waiter w;
    pthread_t th = start_waiter(&w, cancel_source_token(src), s, 1000 * 1000 * 1000);
    cancel_clock_advance(999 * 1000 * 1000);
    CHECK_EQ(atomic_load(&w.result), -1);
    cancel_clock_advance(1000 * 1000);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), ETIMEDOUT);
    /* The timeout does not outlive the call: nothing pending. */
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    CHECK_EQ(st.deadlines_pending, 0);
    /* A token without a source, on the manual clock. */
    th = start_waiter(&w, CANCEL_TOKEN_NONE, s, 5);
    cancel_clock_advance(5);
    test_join(th);
    CHECK_EQ(atomic_load(&w.result), ETIMEDOUT);
    CHECK_EQ(cancel_sem_wait(CANCEL_TOKEN_NONE, s, 0), ETIMEDOUT);
    cancel_sem_free(s);
    cancel_source_free(src);
    CHECK_EQ(cancel_clock_use_manual(false), 0);
}

/* Posters and waiters, waiters cancelled at random: every unit posted is
 * taken exactly once or still in the count, and nobody is left asleep with
 * units available (the CTest timeout is the watchdog). */
enum { RACE_THREADS = 3 };
struct race {
    cancel_sem *sem;
    int iterations;
    _Atomic long taken, cancelled, timedout;
    _Atomic int stop;
    cancel_source *_Atomic srcs[RACE_THREADS];
};

static void *race_waiter(void *arg)
{
    struct race *r = arg;
    static _Atomic int next;
    int me = atomic_fetch_add(&next, 1) % RACE_THREADS;
    uint64_t rng = 99 + (uint64_t)me;
    for (int i = 0; i < r->iterations; i++) {
        cancel_source *src = cancel_source_new();
        atomic_store(&r->srcs[me], src);
        int64_t timeout = test_rand(&rng) % 4 == 0 ? (int64_t)(test_rand(&rng) % 200000) : CANCEL_INFINITE;
        int e = cancel_sem_wait(cancel_source_token(src), r->sem, timeout);
        CHECK(e == 0 || e == ECANCELED || e == ETIMEDOUT);
        atomic_fetch_add(e == 0 ? &r->taken : e == ECANCELED ? &r->cancelled : &r->timedout, 1);
        atomic_store(&r->srcs[me], NULL);
        /* Wait until no canceller still uses this source. */
        while (atomic_load(&r->stop) == 1)
            sched_yield();
        cancel_source_free(src);
    }
    return NULL;
}

static void races_account_for_every_unit(void)
{
    struct race r = {.sem = cancel_sem_new(0), .iterations = TEST_SCALE(20000)};
    pthread_t th[RACE_THREADS];
    for (int i = 0; i < RACE_THREADS; i++)
        th[i] = test_spawn(race_waiter, &r);
    uint64_t rng = 5;
    long posted = 0;
    int alive = RACE_THREADS;
    bool joined[RACE_THREADS] = {false};
    while (alive) {
        int op = (int)(test_rand(&rng) % 8);
        if (op < 2) {
            CHECK_EQ(cancel_sem_post(r.sem), 0);
            posted++;
        } else if (op < 6) {
            /* Cancel a waiter's current source: pin it with the stop flag
             * so that its owner does not free it meanwhile. */
            atomic_store(&r.stop, 1);
            cancel_source *src = atomic_load(&r.srcs[test_rand(&rng) % RACE_THREADS]);
            if (src)
                cancel_source_cancel(src);
            atomic_store(&r.stop, 0);
        } else {
            test_jitter(&rng, 20000);
        }
        alive = 0;
        for (int i = 0; i < RACE_THREADS; i++) {
            if (!joined[i])
                joined[i] = pthread_tryjoin_np(th[i], NULL) == 0;
            alive += !joined[i];
        }
        if (alive && cancel_sem_value(r.sem) > 1000)
            sched_yield();
    }
    CHECK_EQ(posted, atomic_load(&r.taken) + (long)cancel_sem_value(r.sem));
    fprintf(stderr, "   %ld posted, %ld taken, %ld cancelled, %ld timed out\n", posted, atomic_load(&r.taken),
            atomic_load(&r.cancelled), atomic_load(&r.timedout));
    cancel_sem_free(r.sem);
}

/* The completion pattern: a waiter takes the unit and frees the semaphore
 * at once, while the poster may still be inside cancel_sem_post. The post's
 * last access must be the update that hands the unit over (POSIX allows
 * sem_destroy once no thread is blocked): under ASan, a post that still
 * touched the semaphore after it is a use after free. The waiter polls with
 * short timeouts, so that it often takes the unit without the wake-up (the
 * case where the poster still has one to make). A race, not a deterministic
 * case: the window is a few instructions of the poster unless a pause is
 * injected into the post. */
struct completion {
    cancel_sem *sem;
    uint32_t delay;
};
static void *post_once(void *arg)
{
    struct completion *c = arg;
    uint64_t rng = c->delay;
    test_jitter(&rng, c->delay);
    CHECK_EQ(cancel_sem_post(c->sem), 0);
    return NULL;
}
static void free_right_after_the_unit(void)
{
    uint64_t rng = 17;
    for (int i = 0; i < TEST_SCALE(3000); i++) {
        struct completion c = {cancel_sem_new(0), 1 + test_rand(&rng) % 50000};
        CHECK(c.sem);
        pthread_t th = test_spawn(post_once, &c);
        int e;
        while ((e = cancel_sem_wait(CANCEL_TOKEN_NONE, c.sem, (int64_t)(test_rand(&rng) % 20000))) == ETIMEDOUT) {
        }
        CHECK_EQ(e, 0);
        cancel_sem_free(c.sem); /* the poster may not have returned yet */
        test_join(th);
    }
}

int main(void)
{
    RUN(counts);
    RUN(limits);
    RUN(bad_input);
    RUN(cancelled_before);
    RUN(timeout_real_clock);
    RUN(cancel_while_blocked);
    RUN(post_wakes_waiter);
    RUN(source_freed_mid_wait);
    RUN(timeout_manual_clock);
    RUN(races_account_for_every_unit);
    RUN(free_right_after_the_unit);
    return 0;
}
