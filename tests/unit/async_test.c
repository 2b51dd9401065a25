/* cancel_source_cancel_async: from threads and from a signal handler. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>

static _Thread_local int is_caller;

struct slow {
    test_gate *release;
    _Atomic int *ran;
    _Atomic int *on_caller;
};
static void slow_cb(void *arg)
{
    struct slow *s = arg;
    if (is_caller)
        atomic_fetch_add(s->on_caller, 1);
    test_gate_wait(s->release);
    atomic_fetch_add(s->ran, 1);
}

/* Pitfall 5: callbacks never stall the cancelling thread. The callbacks
 * block until cancel_async has returned, so a cancel that ran them inline
 * would never return. */
static void async_returns_before_callbacks_run(void)
{
    enum { N = 1000 };
    cancel_source *src = cancel_source_new();
    test_gate release = TEST_GATE_INIT;
    _Atomic int ran = 0, on_caller = 0;
    struct slow ctx = {&release, &ran, &on_caller};
    cancel_registration *regs = malloc((N + 1) * sizeof *regs);
    test_gate done = TEST_GATE_INIT;
    /* registered first, so it runs last */
    CHECK_EQ(cancel_register(cancel_source_token(src), &regs[N], test_gate_open_cb, &done), 0);
    for (int i = 0; i < N; i++)
        CHECK_EQ(cancel_register(cancel_source_token(src), &regs[i], slow_cb, &ctx), 0);
    is_caller = 1;
    CHECK(cancel_source_cancel_async(src));
    CHECK(cancel_token_is_requested(cancel_source_token(src))); /* visible at once */
    CHECK(cancel_token_wait(cancel_source_token(src), 0));
    CHECK(!cancel_source_cancel_async(src));
    CHECK(!cancel_source_cancel(src));
    CHECK_EQ(atomic_load(&ran), 0);
    test_gate_open(&release);
    test_gate_wait(&done);
    CHECK_EQ(atomic_load(&ran), N);
    for (int i = 0; i <= N; i++)
        CHECK(!cancel_unregister(&regs[i])); /* all ran */
    CHECK_EQ(atomic_load(&on_caller), 0);
    is_caller = 0;
    free(regs);
    cancel_source_free(src);
}

static void async_preserves_errno(void)
{
    cancel_source *s = cancel_source_new();
    errno = 12345;
    CHECK(cancel_source_cancel_async(s));
    CHECK_EQ(errno, 12345);
    cancel_source_free(s);
}

static void async_then_free_still_runs_callbacks(void)
{
    for (int i = 0; i < TEST_SCALE(2000); i++) {
        cancel_source *s = cancel_source_new();
        cancel_token t = cancel_token_retain(cancel_source_token(s));
        _Atomic int *n = calloc(1, sizeof *n);
        cancel_registration *r = malloc(sizeof *r);
        CHECK_EQ(cancel_register(t, r, test_count, n), 0);
        cancel_source_cancel_async(s);
        cancel_source_free(s);
        /* removed before it started, or ran (and unregister waited for it);
         * the retained token keeps this call valid */
        bool removed = cancel_unregister(r);
        CHECK_EQ(atomic_load(n), removed ? 0 : 1);
        cancel_token_release(t);
        free(r);
        free(n);
    }
}

/* From a signal handler. */
static cancel_source *sig_src;
static void on_signal(int signo)
{
    cancel_source_cancel_signal(sig_src, signo);
}
static void cancel_from_signal_handler(void)
{
    sig_src = cancel_source_new();
    cancel_token t = cancel_source_token(sig_src);
    int fd = cancel_token_fd(t);
    _Atomic int n = 0;
    cancel_registration r;
    CHECK_EQ(cancel_register(t, &r, test_count, &n), 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0);
    CHECK(raise(SIGUSR1) == 0);
    CHECK(cancel_token_is_requested(t));
    cancel_cause c = cancel_token_cause(t);
    CHECK_EQ(c.reason, CANCEL_REASON_SIGNAL);
    CHECK_EQ(c.code, SIGUSR1);
    CHECK(fd >= 0);
    bool removed = cancel_unregister(&r);
    CHECK_EQ(atomic_load(&n), removed ? 0 : 1);
    signal(SIGUSR1, SIG_DFL);
    cancel_source_free(sig_src);
}

static void signal_cause_validation(void)
{
    errno = 0;
    CHECK(!cancel_source_cancel_signal(NULL, SIGINT));
    CHECK_EQ(errno, EINVAL);
    cancel_source *s = cancel_source_new();
    errno = 0;
    CHECK(!cancel_source_cancel_signal(s, 0));
    CHECK_EQ(errno, EINVAL);
    CHECK(!cancel_source_cancel_signal(s, 256));
    CHECK(!cancel_token_is_requested(cancel_source_token(s)));
    CHECK(cancel_source_cancel_signal(s, SIGTERM));
    CHECK(!cancel_source_cancel_signal(s, SIGINT));
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).code, SIGTERM);
    /* a linked child inherits the signal cause */
    cancel_source *p = cancel_source_new();
    cancel_token pt = cancel_source_token(p);
    cancel_source *c = cancel_source_new_linked(&pt, 1);
    cancel_source_cancel_signal(p, SIGHUP);
    CHECK(cancel_token_wait(cancel_source_token(c), CANCEL_INFINITE));
    CHECK_EQ(cancel_token_cause(cancel_source_token(c)).reason, CANCEL_REASON_SIGNAL);
    CHECK_EQ(cancel_token_cause(cancel_source_token(c)).code, SIGHUP);
    cancel_source_free(c);
    cancel_source_free(p);
    cancel_source_free(s);
}

int main(void)
{
    RUN(signal_cause_validation);
    RUN(async_returns_before_callbacks_run);
    RUN(async_preserves_errno);
    RUN(async_then_free_still_runs_callbacks);
    RUN(cancel_from_signal_handler);
    return 0;
}
