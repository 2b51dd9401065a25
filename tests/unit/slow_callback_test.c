/* cancel_set_slow_callback_threshold and cancel_stats.slow_callbacks: which
 * callbacks of a cancel are counted as slow, on the cancelling thread and on
 * the library thread. Every check is one-sided in time: a callback that
 * sleeps 2 ms is above a 1 ns threshold whatever the load, and no callback
 * of this process lasts an hour. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

#define MS (1000 * 1000LL)
#define HOUR (3600 * 1000 * MS)

static size_t slow_now(void)
{
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    return st.slow_callbacks;
}

static void sleep_2ms(void *arg)
{
    (void)arg;
    test_sleep_ns(2 * MS);
}

static void nothing(void *arg)
{
    (void)arg;
}

/* Cancels a source carrying n callbacks `fn`, on this thread or on the
 * library thread, and returns once every callback has returned. */
static void cancel_with(cancel_fn *fn, int n, bool async)
{
    cancel_source *s = cancel_source_new();
    CHECK(s);
    cancel_registration regs[4];
    CHECK(n <= 4);
    for (int i = 0; i < n; i++)
        CHECK_EQ(cancel_register(cancel_source_token(s), &regs[i], fn, NULL), 0);
    if (async) {
        CHECK(cancel_source_cancel_async(s));
        CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0); /* the library thread ran them */
    } else {
        CHECK(cancel_source_cancel(s));
    }
    cancel_source_free(s);
}

static void threshold_round_trip(void)
{
    CHECK_EQ(cancel_set_slow_callback_threshold(5 * MS), CANCEL_INFINITE); /* off by default */
    CHECK_EQ(cancel_set_slow_callback_threshold(-7), 5 * MS);
    CHECK_EQ(cancel_set_slow_callback_threshold(CANCEL_INFINITE), CANCEL_INFINITE); /* any negative: off */
}

static void off_counts_nothing(void)
{
    size_t before = slow_now();
    cancel_with(sleep_2ms, 2, false);
    cancel_with(sleep_2ms, 1, true);
    CHECK_EQ(slow_now(), before);
}

static void slow_ones_are_counted(void)
{
    CHECK_EQ(cancel_set_slow_callback_threshold(1), CANCEL_INFINITE);
    size_t before = slow_now();
    cancel_with(sleep_2ms, 3, false); /* on the cancelling thread */
    CHECK_EQ(slow_now(), before + 3);
    cancel_with(sleep_2ms, 2, true); /* on the library thread */
    CHECK_EQ(slow_now(), before + 5);

    /* Linked children's callbacks run in the same dispatch: counted too. */
    cancel_source *parent = cancel_source_new();
    cancel_token pt = cancel_source_token(parent);
    cancel_source *child = cancel_source_new_linked(&pt, 1);
    CHECK(parent && child);
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(child), &r, sleep_2ms, NULL), 0);
    CHECK(cancel_source_cancel(parent));
    CHECK_EQ(slow_now(), before + 6);
    cancel_source_free(child);
    cancel_source_free(parent);
    CHECK_EQ(cancel_set_slow_callback_threshold(CANCEL_INFINITE), 1);
}

static void fast_ones_are_not(void)
{
    CHECK_EQ(cancel_set_slow_callback_threshold(HOUR), CANCEL_INFINITE);
    size_t before = slow_now();
    cancel_with(nothing, 4, false);
    cancel_with(nothing, 2, true);
    cancel_with(sleep_2ms, 1, false);
    CHECK_EQ(slow_now(), before);
    CHECK_EQ(cancel_set_slow_callback_threshold(CANCEL_INFINITE), HOUR);
}

int main(void)
{
    RUN(threshold_round_trip);
    RUN(off_counts_nothing);
    RUN(slow_ones_are_counted);
    RUN(fast_ones_are_not);
    return 0;
}
