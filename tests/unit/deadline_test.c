/* Deadlines (cancel_source_cancel_after), mostly on the manual clock. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

/* On the manual clock, cancel_clock_advance returns once every deadline it
 * passed has fired and its callbacks have run: what has not fired by then
 * never will, so "did not fire" checks need no sleep. */
static void advance_to(int64_t t)
{
    cancel_clock_advance(t - cancel_now());
}
/* A deadline that is due has fired when advance returned. */
static bool fired(cancel_token t)
{
    return cancel_token_is_requested(t);
}

static size_t pending(void)
{
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    return st.deadlines_pending;
}

static void fires_at_its_time(void)
{
    int64_t t0 = cancel_now();
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    CHECK_EQ(cancel_source_cancel_after(s, 1000), 0);
    CHECK_EQ(pending(), 1);
    cancel_source_info info;
    cancel_source_get_info(s, &info);
    CHECK_EQ(info.deadline_ns, 1000);
    advance_to(t0 + 999);
    CHECK(!fired(t));
    advance_to(t0 + 1000);
    CHECK(fired(t));
    CHECK_EQ(cancel_token_cause(t).reason, CANCEL_REASON_TIMEOUT);
    CHECK_EQ(pending(), 0);
    cancel_source_free(s);
}

static void rearm_moves_the_deadline(void)
{
    int64_t t0 = cancel_now();
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    CHECK_EQ(cancel_source_cancel_after(s, 1000), 0);
    CHECK_EQ(cancel_source_cancel_after(s, 5000), 0); /* later */
    CHECK_EQ(pending(), 1);
    advance_to(t0 + 4999);
    CHECK(!fired(t));
    CHECK_EQ(cancel_source_cancel_after(s, 10), 0); /* earlier, from t0+4999 */
    advance_to(t0 + 5008);
    CHECK(!fired(t));
    advance_to(t0 + 5009);
    CHECK(fired(t));
    cancel_source_free(s);
}

static void infinite_disarms(void)
{
    int64_t t0 = cancel_now();
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 100), 0);
    CHECK_EQ(cancel_source_cancel_after(s, CANCEL_INFINITE), 0);
    CHECK_EQ(pending(), 0);
    cancel_source_info info;
    cancel_source_get_info(s, &info);
    CHECK_EQ(info.deadline_ns, CANCEL_INFINITE);
    advance_to(t0 + 1000000);
    CHECK(!fired(cancel_source_token(s)));
    CHECK_EQ(cancel_source_cancel_after(s, CANCEL_INFINITE), 0); /* disarming twice is fine */
    cancel_source_free(s);
}

static void bad_and_extreme_delays(void)
{
    int64_t t0 = cancel_now();
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, -2), EINVAL);
    CHECK_EQ(cancel_source_cancel_after(s, INT64_MIN), EINVAL);
    CHECK_EQ(pending(), 0);
    /* the maximum saturates instead of wrapping into the past */
    CHECK_EQ(cancel_source_cancel_after(s, INT64_MAX), 0);
    cancel_source_info info;
    cancel_source_get_info(s, &info);
    CHECK(info.deadline_ns > INT64_MAX / 2);
    advance_to(t0 + 1000000000000LL);
    CHECK(!fired(cancel_source_token(s)));
    cancel_source_free(s);
    CHECK_EQ(pending(), 0);
}

/* The callback of a deadline runs on the library thread, never inline. */
static _Thread_local int on_main;
struct where {
    int value;
    test_gate done;
};
static void note_thread(void *arg)
{
    struct where *w = arg;
    w->value = on_main ? 1 : 2;
    test_gate_open(&w->done);
}

static void zero_cancels_at_once_off_the_caller(void)
{
    on_main = 1;
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    struct where w = {0, TEST_GATE_INIT};
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, note_thread, &w), 0);
    CHECK_EQ(cancel_source_cancel_after(s, 0), 0);
    CHECK(cancel_token_is_requested(cancel_source_token(s)));
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_TIMEOUT);
    test_gate_wait(&w.done); /* it runs, and not on this thread */
    CHECK_EQ(w.value, 2);
    CHECK(!cancel_unregister(&r));
    CHECK_EQ(cancel_source_cancel_after(s, 0), ECANCELED);
    CHECK_EQ(cancel_source_cancel_after(s, 10), ECANCELED);
    cancel_source_free(s);
}

static void cancel_disarms_and_free_disarms(void)
{
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 1000000), 0);
    cancel_source_cancel(s);
    CHECK_EQ(pending(), 0);
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_REQUESTED);
    cancel_source_free(s);

    s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 1000000), 0);
    cancel_source_free(s);
    CHECK_EQ(pending(), 0);

    s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 1000000), 0);
    CHECK(cancel_source_try_reset(s));
    CHECK_EQ(pending(), 0);
    cancel_source_free(s);
}

/* Pitfall 8: a million sources with a one-hour deadline, freed. */
static void million_pending_deadlines_freed(void)
{
    int n = TEST_SCALE(1000000);
    cancel_source **v = malloc((size_t)n * sizeof *v);
    for (int i = 0; i < n; i++) {
        v[i] = cancel_source_new();
        CHECK_EQ(cancel_source_cancel_after(v[i], 3600LL * 1000000000), 0);
    }
    CHECK_EQ(pending(), (size_t)n);
    for (int i = 0; i < n; i += 2) /* out of order */
        cancel_source_free(v[i]);
    for (int i = 1; i < n; i += 2)
        cancel_source_free(v[i]);
    CHECK_EQ(pending(), 0);
    free(v);
}

/* Deadlines passed in one step fire, and run their callbacks, in deadline
 * order, whatever order they were armed in and however many buckets of the
 * wheel they span. */
static int fired_order[64], fired_len;
static void note_fire(void *arg)
{
    fired_order[fired_len++] = (int)(intptr_t)arg; /* library thread only */
}
static void deadlines_fire_in_order(void)
{
    int64_t t0 = cancel_now();
    cancel_source *s[64];
    cancel_registration r[64];
    fired_len = 0;
    for (int i = 0; i < 64; i++) {
        s[i] = cancel_source_new();
        int k = (i * 37) % 64 + 1; /* a permutation of 1..64 */
        /* half of them a few ns apart, half 0.3 ms apart (several buckets) */
        int64_t delay = k <= 32 ? k : 32 + (int64_t)(k - 32) * 300000;
        cancel_register(cancel_source_token(s[i]), &r[i], note_fire, (void *)(intptr_t)k);
        CHECK_EQ(cancel_source_cancel_after(s[i], delay), 0);
    }
    advance_to(t0 + 32 + 32 * 300000); /* all at once */
    CHECK_EQ(fired_len, 64);           /* callbacks ran before advance returned */
    for (int k = 0; k < 64; k++)
        CHECK_EQ(fired_order[k], k + 1);
    for (int i = 0; i < 64; i++)
        cancel_source_free(s[i]);
}

/* Deadlines across every level of the wheel fire exactly on time, not a
 * nanosecond early, after cascading down from wherever they were filed. */
static void exact_at_every_scale(void)
{
    static const int64_t delays[] = {
        1,          999999,          1000000,      1048576,       67108863,    67108864,
        123456789,  4294967296LL,    10000000000LL, 274877906944LL, 3600000000000LL,
        86400000000000LL, 31536000000000000LL,
    };
    enum { N = sizeof delays / sizeof delays[0] };
    int64_t t0 = cancel_now();
    cancel_source *s[N];
    for (int i = 0; i < N; i++) {
        s[i] = cancel_source_new();
        CHECK_EQ(cancel_source_cancel_after(s[i], delays[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        advance_to(t0 + delays[i] - 1);
        for (int k = i; k < N; k++) /* this one and every later one still waits */
            CHECK(!fired(cancel_source_token(s[k])));
        advance_to(t0 + delays[i]);
        CHECK(fired(cancel_source_token(s[i])));
    }
    CHECK_EQ(pending(), 0);
    for (int i = 0; i < N; i++)
        cancel_source_free(s[i]);
}

/* On the real clock: a short deadline fires and wakes a waiter. */
static void real_clock_deadline_fires(void)
{
    cancel_clock_use_manual(false);
    on_main = 1;
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    struct where w = {0, TEST_GATE_INIT};
    cancel_register(cancel_source_token(s), &r, note_thread, &w);
    CHECK_EQ(cancel_source_cancel_after(s, 5 * 1000 * 1000), 0);
    CHECK(cancel_token_wait(cancel_source_token(s), CANCEL_INFINITE));
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_TIMEOUT);
    test_gate_wait(&w.done);
    CHECK_EQ(w.value, 2); /* ran on the library thread */
    cancel_source_free(s);
}

/* Never early, on the real clock: long deadlines too (a coarse clock read
 * at arming once made them fire up to 2.7 ms early). */
struct timed {
    cancel_source *src;
    cancel_registration reg;
    int64_t armed_at, fired_at;
    test_gate fired;
};
static void note_time(void *arg)
{
    struct timed *t = arg;
    t->fired_at = test_now_ns();
    test_gate_open(&t->fired);
}
static void never_early(void)
{
    cancel_clock_use_manual(false);
    enum { N = 16 };
    const int64_t delay = 1100 * 1000 * 1000;
    static struct timed t[N];
    for (int i = 0; i < N; i++) {
        t[i].src = cancel_source_new();
        t[i].fired = (test_gate)TEST_GATE_INIT;
        cancel_register(cancel_source_token(t[i].src), &t[i].reg, note_time, &t[i]);
        t[i].armed_at = test_now_ns();
        CHECK_EQ(cancel_source_cancel_after(t[i].src, delay + i * 1000000), 0);
        test_sleep_ns(1000000);
    }
    for (int i = 0; i < N; i++) {
        test_gate_wait(&t[i].fired); /* the callback ran: the deadline fired */
        CHECK(t[i].fired_at >= t[i].armed_at + delay + i * 1000000);
        cancel_source_free(t[i].src);
    }
}

/* Pitfall 9: free racing the timer. */
static void free_races_firing_deadline(void)
{
    cancel_clock_use_manual(false);
    uint64_t rng = 12345;
    for (int i = 0; i < TEST_SCALE(20000); i++) {
        cancel_source *s = cancel_source_new();
        cancel_registration r;
        _Atomic int n = 0;
        cancel_register(cancel_source_token(s), &r, test_count, &n);
        CHECK_EQ(cancel_source_cancel_after(s, test_rand(&rng) % 20000), 0);
        test_jitter(&rng, 20000);
        if (i % 3 == 0)
            cancel_source_cancel(s);
        cancel_unregister(&r); /* r is ours again after this */
        cancel_source_free(s);
        CHECK(atomic_load(&n) <= 1);
    }
    CHECK_EQ(pending(), 0);
}

int main(void)
{
    cancel_clock_use_manual(true);
    RUN(fires_at_its_time);
    RUN(rearm_moves_the_deadline);
    RUN(infinite_disarms);
    RUN(bad_and_extreme_delays);
    RUN(zero_cancels_at_once_off_the_caller);
    RUN(cancel_disarms_and_free_disarms);
    RUN(million_pending_deadlines_freed);
    RUN(deadlines_fire_in_order);
    RUN(exact_at_every_scale);
    RUN(real_clock_deadline_fires);
    RUN(never_early);
    RUN(free_races_firing_deadline);
    return 0;
}
