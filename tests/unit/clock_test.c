/* The library's clock: cancel_now, the manual clock switched both ways, and
 * timed waits and deadlines following it. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

#include "source.h" /* white box: ST_WAITERS says a wait is asleep on the word */

/* A positive signal that a timed wait has begun (its deadline is fixed)
 * and sleeps. */
static bool word_has_waiters(void *src)
{
    return atomic_load(&((struct cancel_source *)src)->head.cancel__word) & ST_WAITERS;
}
static void wait_asleep_on(cancel_source *s)
{
    CHECK(test_wait_until(word_has_waiters, s, 20LL * 1000000000));
}

static void now_is_monotonic_real_time(void)
{
    CHECK(!cancel_clock_is_manual());
    int64_t a = cancel_now(), t = test_now_ns(), b = cancel_now();
    CHECK(a <= b);
    CHECK(a <= t + 1000000 && t <= b + 1000000); /* the same clock */
    cancel_clock_advance(1000000000);            /* ignored while off */
    CHECK(cancel_now() < test_now_ns() + 1000000);
}

static void manual_freezes_and_advances_exactly(void)
{
    CHECK_EQ(cancel_clock_use_manual(true), 0);
    CHECK(cancel_clock_is_manual());
    CHECK_EQ(cancel_clock_use_manual(true), 0); /* again: no change */
    int64_t t0 = cancel_now();
    test_sleep_ns(2 * 1000 * 1000);
    CHECK_EQ(cancel_now(), t0); /* frozen */
    cancel_clock_advance(0);
    cancel_clock_advance(-5);
    CHECK_EQ(cancel_now(), t0);
    cancel_clock_advance(30LL * 1000000000);
    CHECK_EQ(cancel_now(), t0 + 30LL * 1000000000);
    cancel_clock_advance(INT64_MAX); /* saturates */
    CHECK(cancel_now() > 0);
    CHECK_EQ(cancel_clock_use_manual(false), 0);
    CHECK(!cancel_clock_is_manual());
    CHECK(cancel_now() <= test_now_ns());
}

/* A test of a 30 s timeout that runs in microseconds. */
struct waiter {
    cancel_token tok;
    int64_t timeout;
    test_gate started, done;
    int result;
};
static void *timed_wait(void *arg)
{
    struct waiter *w = arg;
    test_gate_open(&w->started);
    w->result = cancel_token_wait(w->tok, w->timeout);
    test_gate_open(&w->done);
    return NULL;
}

static void manual_timeouts_of_waits(void)
{
    cancel_clock_use_manual(true);
    cancel_source *s = cancel_source_new();
    struct waiter w = {cancel_source_token(s), 30LL * 1000000000, TEST_GATE_INIT, TEST_GATE_INIT, -1};
    pthread_t th = test_spawn(timed_wait, &w);
    wait_asleep_on(s); /* its deadline is 30 s from now */
    cancel_clock_advance(29LL * 1000000000);
    /* 29 s of manual time: it must still wait, whatever real time passes */
    CHECK(!test_gate_wait_for(&w.done, 20 * 1000 * 1000));
    int64_t t = test_now_ns();
    cancel_clock_advance(1000000000);
    CHECK(test_gate_wait_for(&w.done, 10LL * 1000000000)); /* returned or returning */
    CHECK(test_now_ns() - t < 5LL * 1000000000);
    test_join(th);
    CHECK_EQ(w.result, 0); /* timed out: false */
    CHECK(!cancel_token_is_requested(w.tok));
    cancel_source_free(s);
    cancel_clock_use_manual(false);
}

/* Deadlines armed on the real clock follow the manual clock once it is on;
 * switched off again, a passed deadline fires at once. */
static void deadlines_follow_the_switch(void)
{
    cancel_source *a = cancel_source_new(), *b = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(a, 3600LL * 1000000000), 0); /* real clock */
    CHECK_EQ(cancel_source_cancel_after(b, 3600LL * 1000000000), 0);
    cancel_clock_use_manual(true);
    cancel_source_info info;
    CHECK_EQ(cancel_source_get_info(a, &info), 0);
    CHECK(info.deadline_ns > 3599LL * 1000000000);
    cancel_clock_advance(3599LL * 1000000000);
    CHECK(!cancel_token_is_requested(cancel_source_token(a)));
    CHECK_EQ(cancel_source_get_info(a, &info), 0);
    CHECK(info.deadline_ns <= 1000000000);
    cancel_clock_advance(1000000000);
    CHECK(cancel_token_is_requested(cancel_source_token(a))); /* fired within advance */
    CHECK_EQ(cancel_token_cause(cancel_source_token(a)).reason, CANCEL_REASON_TIMEOUT);
    CHECK(cancel_token_is_requested(cancel_source_token(b)));
    /* Armed in manual time 1 h + 1 s ahead of real time, now far past it. */
    cancel_source *c = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(c, 1000), 0);
    cancel_clock_use_manual(false); /* real time is about 1 h behind: c waits */
    CHECK(!cancel_token_wait(cancel_source_token(c), 20 * 1000 * 1000));
    cancel_source_free(c);
    cancel_source_free(a);
    cancel_source_free(b);

    /* Armed in manual time, manual time never moved: real time passes it. */
    cancel_clock_use_manual(true);
    cancel_source *d = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(d, 30 * 1000 * 1000), 0);
    test_sleep_ns(40 * 1000 * 1000); /* real time passes the deadline... */
    CHECK(!cancel_token_is_requested(cancel_source_token(d))); /* ...but manual time did not */
    cancel_clock_use_manual(false); /* now it is due: it fires at once */
    CHECK(cancel_token_wait(cancel_source_token(d), 10LL * 1000000000));
    cancel_source_free(d);
}

/* A wait that began on the manual clock finishes on the real one when the
 * clock is switched off (its deadline is absolute). */
static void wait_switched_to_real_time(void)
{
    cancel_clock_use_manual(true);
    cancel_source *s = cancel_source_new();
    struct waiter w = {cancel_source_token(s), 50 * 1000 * 1000, TEST_GATE_INIT, TEST_GATE_INIT, -1};
    pthread_t th = test_spawn(timed_wait, &w);
    wait_asleep_on(s);
    CHECK(!test_gate_wait_for(&w.done, 80 * 1000 * 1000)); /* manual time stands still */
    cancel_clock_use_manual(false);
    CHECK(test_gate_wait_for(&w.done, 10LL * 1000000000));
    test_join(th);
    CHECK_EQ(w.result, 0);
    cancel_source_free(s);
}

/* Advancing from several threads at once adds up. */
static void *advance_many(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        cancel_clock_advance(3);
    return NULL;
}
static void concurrent_advances_add_up(void)
{
    cancel_clock_use_manual(true);
    int64_t t0 = cancel_now();
    pthread_t a = test_spawn(advance_many, NULL), b = test_spawn(advance_many, NULL);
    test_join(a);
    test_join(b);
    CHECK_EQ(cancel_now(), t0 + 6000);
    cancel_clock_use_manual(false);
}

/* The cause of a manual timeout, and a child's deadline, are what real ones
 * would be. */
static void child_timeouts_on_manual_clock(void)
{
    cancel_clock_use_manual(true);
    cancel_source *parent = cancel_source_new();
    cancel_source_set_name(parent, "request");
    cancel_source *child = cancel_source_new_child(cancel_source_token(parent), 5LL * 1000000000, "step");
    CHECK(child);
    CHECK_EQ(cancel_token_deadline(cancel_source_token(child)), cancel_now() + 5LL * 1000000000);
    cancel_clock_advance(5LL * 1000000000);
    cancel_cause c = cancel_token_cause(cancel_source_token(child));
    CHECK_EQ(c.reason, CANCEL_REASON_TIMEOUT);
    CHECK_STR(c.origin, "step");
    CHECK(!cancel_token_is_requested(cancel_source_token(parent)));
    cancel_source_free(child);
    cancel_source_free(parent);
    cancel_clock_use_manual(false);
}

/* Two timed waits on one token, both ended by one advance. (The race this
 * guards, a waiter between reading its word and sleeping while two bumps
 * of the tick pass, cannot be forced from here; the tick is a count so
 * that two bumps never give the word back.) */
struct tid_waiter {
    struct waiter w;
    _Atomic int tid;
};
static void *timed_wait_tid(void *arg)
{
    struct tid_waiter *t = arg;
    atomic_store(&t->tid, test_tid());
    return timed_wait(&t->w);
}
/* Thread `tid` is asleep in a futex wait on `word` (/proc's syscall file:
 * the call's number and first argument). */
struct on_word {
    int tid;
    void *word;
};
static bool asleep_on_word(void *arg)
{
    struct on_word *o = arg;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", o->tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    long nr;
    unsigned long a0;
    return sscanf(buf, "%ld %lx", &nr, &a0) == 2 && nr == SYS_futex && (void *)a0 == o->word;
}

static void two_waiters_one_advance(void)
{
    cancel_clock_use_manual(true);
    for (int round = 0; round < TEST_SCALE(100); round++) {
        cancel_source *s = cancel_source_new();
        struct tid_waiter a = {{cancel_source_token(s), 1000, TEST_GATE_INIT, TEST_GATE_INIT, -1}, 0};
        struct tid_waiter b = {{cancel_source_token(s), 1000, TEST_GATE_INIT, TEST_GATE_INIT, -1}, 0};
        pthread_t ta = test_spawn(timed_wait_tid, &a), tb = test_spawn(timed_wait_tid, &b);
        test_gate_wait(&a.w.started);
        test_gate_wait(&b.w.started);
        /* both in cancel_token_wait's futex on the token's word: their
         * deadlines are fixed */
        struct on_word oa = {atomic_load(&a.tid), &((struct cancel_source *)s)->head.cancel__word};
        struct on_word ob = {atomic_load(&b.tid), oa.word};
        CHECK(test_wait_until(asleep_on_word, &oa, 20LL * 1000000000));
        CHECK(test_wait_until(asleep_on_word, &ob, 20LL * 1000000000));
        cancel_clock_advance(1000); /* both deadlines at once */
        CHECK(test_gate_wait_for(&a.w.done, 20LL * 1000000000));
        CHECK(test_gate_wait_for(&b.w.done, 20LL * 1000000000));
        test_join(ta);
        test_join(tb);
        cancel_source_free(s);
    }
    cancel_clock_use_manual(false);
}

/* The end of time: a deadline at the largest time, and one more than 2^62 ns
 * past the wheel's start, fire when the manual clock gets there. */
static void end_of_time(void)
{
    cancel_clock_use_manual(true);
    cancel_source *far = cancel_source_new(), *early = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(early, 1000000), 0);
    cancel_clock_advance(4500000000000000000LL); /* 142 years */
    CHECK(cancel_token_is_requested(cancel_source_token(early)));
    CHECK_EQ(cancel_source_cancel_after(far, 200000000000000000LL), 0); /* crosses 2^62 */
    cancel_clock_advance(199999999999999999LL);
    CHECK(!cancel_token_is_requested(cancel_source_token(far)));
    cancel_clock_advance(1);
    CHECK(cancel_token_is_requested(cancel_source_token(far)));
    cancel_source *last = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(last, INT64_MAX), 0); /* saturates */
    cancel_clock_advance(INT64_MAX);                         /* returns */
    CHECK(cancel_token_is_requested(cancel_source_token(last)));
    cancel_source_free(far);
    cancel_source_free(early);
    cancel_source_free(last);
    cancel_clock_use_manual(false);
}

int main(void)
{
    RUN(now_is_monotonic_real_time);
    RUN(manual_freezes_and_advances_exactly);
    RUN(manual_timeouts_of_waits);
    RUN(deadlines_follow_the_switch);
    RUN(wait_switched_to_real_time);
    RUN(concurrent_advances_add_up);
    RUN(child_timeouts_on_manual_clock);
    RUN(two_waiters_one_advance);
    RUN(end_of_time); /* last: the wheel's position stays at the end of time */
    return 0;
}
