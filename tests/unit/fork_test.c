/* Behaviour in a child process after fork(). */
#include "../check.h"

#include <cancel.h>
#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>


static cancel_source *pre;     /* created, with a callback, before fork */
static cancel_source *armed;   /* deadline armed before fork */
static _Atomic int pre_ran;
static cancel_registration pre_reg;

static void in_child(void)
{
    /* Sources made before fork are usable: synchronous cancel runs the
     * callback registered before fork, on this thread. */
    CHECK(cancel_source_cancel(pre));
    CHECK_EQ(atomic_load(&pre_ran), 1);

    /* The library thread does not exist in the child until something needs
     * it: the next registration starts it; deadlines armed before fork then
     * fire here too. */
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK(!st.thread_running);
    cancel_source *s = cancel_source_new();
    cancel_registration r;
    _Atomic int n = 0;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_count, &n), 0);
    cancel_get_stats(&st);
    CHECK(st.thread_running);
    CHECK(cancel_token_wait(cancel_source_token(armed), 10LL * 1000000000));
    CHECK_EQ(cancel_token_cause(cancel_source_token(armed)).reason, CANCEL_REASON_TIMEOUT);

    /* New deadlines and async cancels work. */
    CHECK_EQ(cancel_source_cancel_after(s, 1000000), 0);
    CHECK(cancel_token_wait(cancel_source_token(s), 10LL * 1000000000));
    /* The deadline fired; its callback is dispatched on the new library
     * thread. Unregister either removed it before it started (true: it
     * never runs) or waited until it returned (false: it ran once). */
    bool removed = cancel_unregister(&r);
    CHECK_EQ(atomic_load(&n), removed ? 0 : 1);
    cancel_source_free(s);
    cancel_source_free(pre);
    cancel_source_free(armed);
}

static void sources_and_timer_work_in_child(void)
{
    pre = cancel_source_new();
    CHECK_EQ(cancel_register(cancel_source_token(pre), &pre_reg, test_count, &pre_ran), 0);
    armed = cancel_source_new();
    CHECK_EQ(cancel_source_cancel_after(armed, 50 * 1000000), 0);
    /* Fork with the library thread idle: sanitizer runtimes do not make their
     * allocators safe across a fork that happens while another thread
     * allocates. */
    test_drain_library_thread();
    test_in_child(in_child);
    /* The parent's copies are untouched by the child. */
    CHECK(!cancel_token_is_requested(cancel_source_token(pre)));
    CHECK_EQ(atomic_load(&pre_ran), 0);
    CHECK(cancel_token_wait(cancel_source_token(armed), 10LL * 1000000000));
    cancel_source_free(pre);
    cancel_source_free(armed);
}

int main(void)
{
    RUN(sources_and_timer_work_in_child);
    return 0;
}
