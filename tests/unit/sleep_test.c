/* cancel_sleep: zero, negative, never early, cancelled before and while
 * sleeping, forever until cancelled, the manual clock, a source freed
 * uncancelled mid-sleep. */
#include "io_util.h"

static void edges(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    errno = 42;
    CHECK_EQ(cancel_sleep(t, 0), 0);
    CHECK_EQ(cancel_sleep(t, -5), EINVAL);
    CHECK_EQ(cancel_sleep(CANCEL_TOKEN_NONE, -5), EINVAL);
    int64_t t0 = test_now_ns();
    CHECK_EQ(cancel_sleep(t, 5 * 1000 * 1000), 0);
    CHECK(test_now_ns() - t0 >= 5 * 1000 * 1000);
    t0 = test_now_ns();
    CHECK_EQ(cancel_sleep(CANCEL_TOKEN_NONE, 5 * 1000 * 1000), 0);
    CHECK(test_now_ns() - t0 >= 5 * 1000 * 1000);
    CHECK_EQ(errno, 42);
    cancel_source_cancel(s);
    CHECK_EQ(cancel_sleep(t, 0), ECANCELED);
    CHECK_EQ(cancel_sleep(t, -5), ECANCELED); /* the token is checked first */
    CHECK_EQ(cancel_sleep(t, CANCEL_INFINITE), ECANCELED);
    CHECK_EQ(errno, 42);
    cancel_source_free(s);
}

static void cancelled_while_sleeping(void)
{
    int64_t lengths[] = {CANCEL_INFINITE, 3600LL * 1000 * 1000 * 1000};
    for (int i = 0; i < 2; i++) {
        cancel_source *s = cancel_source_new();
        struct call c;
        memset(&c, 0, sizeof c);
        c.fn = do_sleep;
        c.tok = cancel_source_token(s);
        c.timeout = lengths[i];
        call_start(&c);
        call_wait_blocked(&c, "cancel_sleep");
        cancel_source_cancel(s);
        call_join(&c);
        CHECK_EQ(c.err, ECANCELED);
        cancel_source_free(s);
    }
}

/* A deadline on the token ends the sleep early, with its cause. */
static void deadline_on_token(void)
{
    cancel_source *s = cancel_source_new_child(CANCEL_TOKEN_NONE, 5 * 1000 * 1000, NULL);
    CHECK_EQ(cancel_sleep(cancel_source_token(s), CANCEL_INFINITE), ECANCELED);
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_TIMEOUT);
    cancel_source_free(s);
}

/* Freed uncancelled (retained token): it sleeps the rest, on the real clock
 * and on the manual one. */
static void freed_source_sleeps_on(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    struct call c;
    memset(&c, 0, sizeof c);
    c.fn = do_sleep;
    c.tok = t;
    c.timeout = 200 * 1000 * 1000;
    int64_t t0 = test_now_ns();
    call_start(&c);
    call_wait_blocked(&c, "cancel_sleep");
    cancel_source_free(s);
    check_not_spinning(&c);
    call_join(&c);
    CHECK_EQ(c.result, 0);
    CHECK(test_now_ns() - t0 >= 200 * 1000 * 1000);
    cancel_token_release(t);
}

static void manual_clock(void)
{
    cancel_clock_use_manual(true);
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    struct call c;
    memset(&c, 0, sizeof c);
    c.fn = do_sleep;
    c.tok = t;
    c.timeout = 10LL * 1000 * 1000 * 1000;
    call_start(&c);
    call_wait_blocked(&c, "cancel_sleep");
    cancel_clock_advance(4LL * 1000 * 1000 * 1000);
    CHECK(!atomic_load(&c.finished));
    cancel_source_free(s); /* the rest is slept, still on the manual clock */
    cancel_clock_advance(5LL * 1000 * 1000 * 1000);
    CHECK(!atomic_load(&c.finished));
    cancel_clock_advance(1LL * 1000 * 1000 * 1000);
    call_join(&c);
    CHECK_EQ(c.result, 0);
    cancel_token_release(t);
    /* CANCEL_TOKEN_NONE on the manual clock */
    c.tok = CANCEL_TOKEN_NONE;
    c.timeout = 1000;
    call_start(&c);
    call_wait_blocked(&c, "cancel_sleep");
    cancel_clock_advance(1000);
    call_join(&c);
    CHECK_EQ(c.result, 0);
    cancel_clock_use_manual(false);
}

static bool call_finished(void *arg)
{
    return atomic_load(&((struct call *)arg)->finished);
}

/* The clock moved at once after the sleep began: while the sleeper is
 * between reading the clock and sleeping, in many rounds. It still wakes
 * when the clock reaches its end (it slept for ever when the move fell
 * between its reading and its wait). With a live token, and without. */
static void advanced_as_it_starts(void)
{
    cancel_clock_use_manual(true);
    for (int i = 0; i < TEST_SCALE(2000); i++) {
        cancel_source *s = cancel_source_new();
        struct call c;
        memset(&c, 0, sizeof c);
        c.fn = do_sleep;
        c.tok = i % 2 ? cancel_source_token(s) : CANCEL_TOKEN_NONE;
        c.timeout = 1000;
        call_start(&c);
        for (;;) { /* no nap: move the clock as early as we can */
            struct cancel__blocked *b = atomic_load(&c.where);
            if ((b && atomic_load(&b->what)) || atomic_load(&c.finished))
                break;
            cancel__cpu_relax();
        }
        cancel_clock_advance(1000);
        if (!test_wait_until(call_finished, &c, 20LL * 1000000000)) {
            fprintf(stderr, "round %d: the sleep outlasted its end\n", i);
            abort();
        }
        call_join(&c);
        CHECK_EQ(c.result, 0);
        cancel_source_free(s);
    }
    cancel_clock_use_manual(false);
}

int main(void)
{
    RUN(edges);
    RUN(cancelled_while_sleeping);
    RUN(deadline_on_token);
    RUN(freed_source_sleeps_on);
    RUN(manual_clock);
    RUN(advanced_as_it_starts);
    return 0;
}
