/* cancel_quiesce: the library thread runs what it owes, then stops (unless
 * deadlines are armed), and starts again on demand. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>

static bool thread_running(void)
{
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    return st.thread_running;
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}



static void bad_timeout_and_nothing_to_do(void)
{
    CHECK_EQ(cancel_quiesce(-2), EINVAL);
    CHECK(!thread_running());           /* nothing registered yet */
    CHECK_EQ(cancel_quiesce(0), 0);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
}

/* Pending asynchronous callbacks have run when it returns; the thread is gone. */
static void runs_what_is_owed_then_stops(void)
{
    enum { N = 50 };
    cancel_source *s[N];
    cancel_registration r[N];
    _Atomic int ran = 0;
    for (int i = 0; i < N; i++) {
        s[i] = cancel_source_new();
        CHECK_EQ(cancel_register(cancel_source_token(s[i]), &r[i], test_count, &ran), 0);
    }
    CHECK(thread_running());
    int with = test_thread_count(); /* sanitizers may run threads of their own */
    for (int i = 0; i < N; i++)
        CHECK(cancel_source_cancel_async(s[i]));
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    CHECK_EQ(atomic_load(&ran), N); /* every queued callback ran before it returned */
    CHECK(!thread_running());
    /* Joined: gone. (The kernel may list a joined thread a moment longer,
     * while it finishes exiting: wait for it to go, bounded.) */
    int want = with - 1;
    CHECK(test_thread_count_becomes(want));
    for (int i = 0; i < N; i++)
        cancel_source_free(s[i]);
}

/* Started again on demand, and fully working. */
static void starts_again_on_demand(void)
{
    CHECK(!thread_running());
    cancel_source *s = cancel_source_new();
    test_gate done = TEST_GATE_INIT;
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_gate_open_cb, &done), 0);
    CHECK(thread_running());
    CHECK(cancel_source_cancel_async(s));
    CHECK(test_gate_wait_for(&done, 10LL * 1000000000));
    cancel_source_free(s);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    /* a deadline starts it too, and fires */
    s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 1000000), 0);
    CHECK(thread_running());
    CHECK(cancel_token_wait(cancel_source_token(s), 10LL * 1000000000));
    cancel_source_free(s);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    CHECK(!thread_running());
}

/* Armed deadlines keep the thread: EBUSY, and the deadline still fires. */
static void busy_while_deadlines_are_armed(void)
{
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(s, 50 * 1000 * 1000), 0);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), EBUSY);
    CHECK(thread_running());
    CHECK(cancel_token_wait(cancel_source_token(s), 10LL * 1000000000));
    cancel_source_free(s);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
}

/* A callback that does not return in time: ETIMEDOUT, nothing stopped. */
struct slow {
    test_gate started, release;
};
static void slow_cb(void *arg)
{
    struct slow *w = arg;
    test_gate_open(&w->started);
    test_gate_wait(&w->release);
}
static void times_out_on_a_stuck_callback(void)
{
    struct slow w = {TEST_GATE_INIT, TEST_GATE_INIT};
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, slow_cb, &w), 0);
    CHECK(cancel_source_cancel_async(s));
    test_gate_wait(&w.started); /* it is running on the library thread */
    CHECK_EQ(cancel_quiesce(1000000), ETIMEDOUT);
    CHECK(thread_running());
    test_gate_open(&w.release);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    CHECK(!thread_running());
    cancel_source_free(s);
}

/* From a callback on the library thread it cannot wait for itself. */
static _Atomic int from_cb_rc = -1;
static void quiesce_from_cb(void *arg)
{
    atomic_store(&from_cb_rc, cancel_quiesce(CANCEL_INFINITE));
    test_gate_open(arg);
}
static void edeadlk_on_the_library_thread(void)
{
    test_gate done = TEST_GATE_INIT;
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, quiesce_from_cb, &done), 0);
    CHECK(cancel_source_cancel_async(s));
    test_gate_wait(&done);
    CHECK_EQ(atomic_load(&from_cb_rc), EDEADLK);
    cancel_source_free(s);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
}

/* The deferred release: a source cancelled from a "signal handler" and freed
 * at once keeps its descriptor until the library thread has dispatched it;
 * quiesce is the point where that is certain. */
static void deferred_release_is_done(void)
{
    int before = open_fds();
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    _Atomic int ran = 0;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_count, &ran), 0);
    CHECK(cancel_token_fd(cancel_source_token(s)) >= 0);
    CHECK(cancel_source_cancel_signal(s, 2));
    cancel_source_free(s);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    CHECK_EQ(atomic_load(&ran), 1);
    CHECK_EQ(open_fds(), before); /* the eventfd is closed: nothing held */
}

/* Quiesce racing registrations and async cancels from other threads: every
 * callback runs exactly once in the end, whatever stops and starts. */
static _Atomic int race_stop;
static void *register_and_cancel(void *arg)
{
    _Atomic int *ran = arg;
    while (!atomic_load(&race_stop)) {
        cancel_source *s = cancel_source_new();
        cancel_registration r;
        CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_count, ran), 0);
        cancel_source_cancel_async(s);
        cancel_unregister(&r); /* removed (true), or ran and returned */
        cancel_source_free(s);
    }
    return NULL;
}
static void quiesce_races_use(void)
{
    _Atomic int ran = 0;
    atomic_store(&race_stop, 0);
    pthread_t t = test_spawn(register_and_cancel, &ran);
    for (int i = 0; i < TEST_SCALE(300); i++) {
        int rc = cancel_quiesce(CANCEL_INFINITE);
        CHECK(rc == 0);
    }
    atomic_store(&race_stop, 1);
    test_join(t);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
}

/* Callbacks queued while the thread is stopped run in the next quiesce, on
 * its caller, and may register (which needs the start of a thread): no
 * lock of the library is held while they run. */
static cancel_source *later;
static cancel_registration later_reg;
static void registers(void *arg)
{
    test_gate *g = arg;
    CHECK_EQ(cancel_register(cancel_source_token(later), &later_reg, test_never, NULL), 0);
    test_gate_open(g);
}
static void callback_registers_after_quiesce(void)
{
    test_gate done = TEST_GATE_INIT;
    later = cancel_source_new();
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, registers, &done), 0);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);   /* stopped */
    CHECK(cancel_source_cancel_async(s));           /* queued, no thread */
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);   /* runs it here; it registers */
    CHECK(test_gate_is_open(&done));
    CHECK(cancel_unregister(&later_reg));
    cancel_source_free(s);
    cancel_source_free(later);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
}

/* Callbacks that register, arm deadlines or quiesce while a stop is in
 * progress: nothing deadlocks, and the thread goes on when it must. */
static _Atomic int churn_stop;
static void busy_callback(void *arg)
{
    (void)arg;
    cancel_source *x = cancel_source_new();
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(x), &r, test_never, NULL), 0);
    CHECK(cancel_unregister(&r));
    cancel_source_free(x);
    /* EDEADLK on the library thread; 0 or EBUSY where a quiesce runs what
     * the stopped thread left (on the quiescer's thread) */
    int rc = cancel_quiesce(CANCEL_INFINITE);
    CHECK(rc == EDEADLK || rc == 0 || rc == EBUSY);
}
static void *post_busy(void *arg)
{
    (void)arg;
    while (!atomic_load(&churn_stop)) {
        cancel_source *s = cancel_source_new();
        cancel_registration r;
        CHECK_EQ(cancel_register(cancel_source_token(s), &r, busy_callback, NULL), 0);
        cancel_source_cancel_async(s);
        cancel_unregister(&r);
        cancel_source_free(s);
    }
    return NULL;
}
static void stop_races_callbacks_that_register(void)
{
    atomic_store(&churn_stop, 0);
    pthread_t t = test_spawn(post_busy, NULL);
    for (int i = 0; i < TEST_SCALE(2000); i++) {
        int rc = cancel_quiesce(CANCEL_INFINITE);
        CHECK(rc == 0 || rc == EBUSY);
    }
    atomic_store(&churn_stop, 1);
    test_join(t);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
}

int main(void)
{
    RUN(bad_timeout_and_nothing_to_do);
    RUN(runs_what_is_owed_then_stops);
    RUN(starts_again_on_demand);
    RUN(busy_while_deadlines_are_armed);
    RUN(times_out_on_a_stuck_callback);
    RUN(edeadlk_on_the_library_thread);
    RUN(deferred_release_is_done);
    RUN(quiesce_races_use);
    RUN(callback_registers_after_quiesce);
    RUN(stop_races_callbacks_that_register);
    return 0;
}
