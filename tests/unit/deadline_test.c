/* Deadlines (cancel_source_cancel_after), mostly on a manual clock. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

/* Internal test hooks of the library (linked statically). */
void cancel__timer_set_clock(int64_t (*fn)(void));
void cancel__timer_poke(void);

static _Atomic int64_t fake_now = 1000000000;
static int64_t fake_clock(void)
{
    return atomic_load(&fake_now);
}
static void advance_to(int64_t t)
{
    atomic_store(&fake_now, t);
    cancel__timer_poke();
}

/* Waits (bounded) until the library thread has acted; false if it never did. */
static bool eventually(cancel_token t)
{
    return cancel_token_wait(t, 10LL * 1000000000);
}
/* Gives the library thread a chance to act wrongly before we check it did not. */
static void settle(void)
{
    cancel__timer_poke();
    test_sleep_ns(2 * 1000 * 1000);
}

static size_t pending(void)
{
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    return st.deadlines_pending;
}

static void fires_at_its_time(void)
{
    int64_t t0 = atomic_load(&fake_now);
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    CHECK_EQ(cancel_source_cancel_after(s, 1000), 0);
    CHECK_EQ(pending(), 1);
    cancel_source_info info;
    cancel_source_get_info(s, &info);
    CHECK_EQ(info.deadline_ns, 1000);
    advance_to(t0 + 999);
    settle();
    CHECK(!cancel_token_is_requested(t));
    advance_to(t0 + 1000);
    CHECK(eventually(t));
    CHECK_EQ(cancel_token_cause(t).reason, CANCEL_REASON_TIMEOUT);
    CHECK_EQ(pending(), 0);
    cancel_source_free(s);
}

static void rearm_moves_the_deadline(void)
{
    int64_t t0 = atomic_load(&fake_now);
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    CHECK_EQ(cancel_source_cancel_after(s, 1000), 0);
    CHECK_EQ(cancel_source_cancel_after(s, 5000), 0); /* later */
    CHECK_EQ(pending(), 1);
    advance_to(t0 + 4999);
    settle();
    CHECK(!cancel_token_is_requested(t));
    CHECK_EQ(cancel_source_cancel_after(s, 10), 0); /* earlier, from t0+4999 */
    advance_to(t0 + 5009);
    CHECK(eventually(t));
    cancel_source_free(s);
}

static void infinite_disarms(void)
{
    int64_t t0 = atomic_load(&fake_now);
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 100), 0);
    CHECK_EQ(cancel_source_cancel_after(s, CANCEL_INFINITE), 0);
    CHECK_EQ(pending(), 0);
    cancel_source_info info;
    cancel_source_get_info(s, &info);
    CHECK_EQ(info.deadline_ns, CANCEL_INFINITE);
    advance_to(t0 + 1000000);
    settle();
    CHECK(!cancel_token_is_requested(cancel_source_token(s)));
    CHECK_EQ(cancel_source_cancel_after(s, CANCEL_INFINITE), 0); /* disarming twice is fine */
    cancel_source_free(s);
}

static void bad_and_extreme_delays(void)
{
    int64_t t0 = atomic_load(&fake_now);
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
    settle();
    CHECK(!cancel_token_is_requested(cancel_source_token(s)));
    cancel_source_free(s);
    CHECK_EQ(pending(), 0);
}

static void zero_cancels_at_once_off_the_caller(void)
{
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    _Atomic int n = 0;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_count, &n), 0);
    CHECK_EQ(cancel_source_cancel_after(s, 0), 0);
    CHECK(cancel_token_is_requested(cancel_source_token(s)));
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_TIMEOUT);
    /* removed before the library thread got to it, or ran (and we waited) */
    bool removed = cancel_unregister(&r);
    CHECK_EQ(atomic_load(&n), removed ? 0 : 1);
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

/* Many deadlines fire in deadline order. */
static int fired_order[64], fired_len;
static test_gate fired_gate[64];
static void note_fire(void *arg)
{
    int delay = (int)(intptr_t)arg;
    fired_order[fired_len++] = delay; /* library thread only */
    test_gate_open(&fired_gate[delay - 1]);
}
static void deadlines_fire_in_order(void)
{
    int64_t t0 = atomic_load(&fake_now);
    cancel_source *s[64];
    cancel_registration r[64];
    fired_len = 0;
    for (int i = 0; i < 64; i++) {
        fired_gate[i] = (test_gate)TEST_GATE_INIT;
        s[i] = cancel_source_new();
        int delay = (i * 37) % 64 + 1; /* a permutation of 1..64 */
        cancel_register(cancel_source_token(s[i]), &r[i], note_fire, (void *)(intptr_t)delay);
        CHECK_EQ(cancel_source_cancel_after(s[i], delay), 0);
    }
    for (int k = 1; k <= 64; k++) {
        advance_to(t0 + k);
        test_gate_wait(&fired_gate[k - 1]);
    }
    CHECK_EQ(fired_len, 64);
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
    int64_t t0 = atomic_load(&fake_now);
    cancel_source *s[N];
    for (int i = 0; i < N; i++) {
        s[i] = cancel_source_new();
        CHECK_EQ(cancel_source_cancel_after(s[i], delays[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        advance_to(t0 + delays[i] - 1);
        settle();
        for (int k = i; k < N; k++) /* this one and every later one still waits */
            CHECK(!cancel_token_is_requested(cancel_source_token(s[k])));
        advance_to(t0 + delays[i]);
        CHECK(eventually(cancel_source_token(s[i])));
    }
    CHECK_EQ(pending(), 0);
    for (int i = 0; i < N; i++)
        cancel_source_free(s[i]);
}

/* On the real clock: a short deadline fires and wakes a waiter. */
static _Thread_local int on_main;
struct where {
    int value;
    test_gate done;
};
static void check_not_main(void *arg)
{
    struct where *w = arg;
    w->value = on_main ? 1 : 2;
    test_gate_open(&w->done);
}
static void real_clock_deadline_fires(void)
{
    cancel__timer_set_clock(NULL);
    on_main = 1;
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    struct where w = {0, TEST_GATE_INIT};
    cancel_register(cancel_source_token(s), &r, check_not_main, &w);
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
    cancel__timer_set_clock(NULL);
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
    cancel__timer_set_clock(NULL);
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
    cancel__timer_set_clock(fake_clock);
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
