/* Signal watches: cancel with reason SIGNAL and the number as code; previous
 * actions restored exactly; EBUSY and EINVAL install nothing; FORCE_SECOND
 * kills by the default action (in a child process); freeing while handlers
 * run on other threads; the thread's signal mask untouched. */
#include <cancel/signal.h> /* first: the header is self-contained */

#include "io_util.h"

#include <signal.h>
#include <sys/wait.h>

static bool same_action(const struct sigaction *a, const struct sigaction *b)
{
    if (a->sa_handler != b->sa_handler || a->sa_flags != b->sa_flags)
        return false;
    for (int s = 1; s < _NSIG; s++)
        if (sigismember(&a->sa_mask, s) != sigismember(&b->sa_mask, s))
            return false;
    return true;
}

static _Atomic int usr_count;
static void on_usr(int sig)
{
    (void)sig;
    atomic_fetch_add(&usr_count, 1);
}

static void cancels_with_signal_cause_and_restores(void)
{
    /* a previous action with a handler, flags and a mask of its own */
    struct sigaction mine = {0}, before, after;
    mine.sa_handler = on_usr;
    mine.sa_flags = SA_NODEFER;
    sigemptyset(&mine.sa_mask);
    sigaddset(&mine.sa_mask, SIGUSR2);
    CHECK_EQ(sigaction(SIGINT, &mine, NULL), 0);
    CHECK_EQ(sigaction(SIGINT, NULL, &before), 0);
    sigset_t mask0, mask1;
    pthread_sigmask(SIG_SETMASK, NULL, &mask0);

    cancel_source *s = cancel_source_new();
    cancel_signal_watch *w = NULL;
    int sigs[] = {SIGINT, SIGTERM};
    CHECK_EQ(cancel_signal_watch_new(s, sigs, 2, 0, &w), 0);
    CHECK(w);
    struct sigaction during;
    CHECK_EQ(sigaction(SIGINT, NULL, &during), 0);
    CHECK(during.sa_handler != on_usr);
    CHECK_EQ(raise(SIGINT), 0);
    CHECK(cancel_token_is_requested(cancel_source_token(s)));
    cancel_cause c = cancel_token_cause(cancel_source_token(s));
    CHECK_EQ(c.reason, CANCEL_REASON_SIGNAL);
    CHECK_EQ(c.code, SIGINT);
    CHECK_EQ(atomic_load(&usr_count), 0); /* the previous handler did not run */
    CHECK_EQ(raise(SIGINT), 0);              /* a second one, without FORCE_SECOND: nothing */
    cancel_signal_watch_free(w);
    CHECK_EQ(sigaction(SIGINT, NULL, &after), 0);
    CHECK(same_action(&before, &after));
    pthread_sigmask(SIG_SETMASK, NULL, &mask1);
    for (int i = 1; i < _NSIG; i++)
        CHECK_EQ(sigismember(&mask0, i), sigismember(&mask1, i));
    cancel_source_free(s);
    CHECK_EQ(raise(SIGINT), 0); /* the previous handler is back */
    CHECK_EQ(atomic_load(&usr_count), 1);
    signal(SIGINT, SIG_DFL);
    cancel_signal_watch_free(NULL);
}

static void ignored_signal_is_watched_and_ignored_again(void)
{
    signal(SIGUSR2, SIG_IGN);
    cancel_source *s = cancel_source_new();
    cancel_signal_watch *w;
    int sig = SIGUSR2;
    CHECK_EQ(cancel_signal_watch_new(s, &sig, 1, 0, &w), 0);
    CHECK_EQ(raise(SIGUSR2), 0);
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).code, SIGUSR2);
    cancel_signal_watch_free(w);
    struct sigaction now;
    CHECK_EQ(sigaction(SIGUSR2, NULL, &now), 0);
    CHECK(now.sa_handler == SIG_IGN);
    cancel_source_free(s);
    signal(SIGUSR2, SIG_DFL);
}

static void refused_watches_install_nothing(void)
{
    struct sigaction usr1_before, usr1_after;
    CHECK_EQ(sigaction(SIGUSR1, NULL, &usr1_before), 0);
    cancel_source *s = cancel_source_new();
    cancel_signal_watch *w, *w2 = (cancel_signal_watch *)&w;
    int term = SIGTERM;
    CHECK_EQ(cancel_signal_watch_new(s, &term, 1, CANCEL_SIGNAL_FORCE_SECOND, &w), 0);
    /* EBUSY, process-wide, also for the same source; SIGUSR1 untouched */
    int both[] = {SIGUSR1, SIGTERM};
    CHECK_EQ(cancel_signal_watch_new(s, both, 2, 0, &w2), EBUSY);
    cancel_source *other = cancel_source_new();
    CHECK_EQ(cancel_signal_watch_new(other, both, 2, 0, &w2), EBUSY);
    CHECK(w2 == (cancel_signal_watch *)&w);
    CHECK_EQ(sigaction(SIGUSR1, NULL, &usr1_after), 0);
    CHECK(same_action(&usr1_before, &usr1_after));
    /* EINVAL */
    int dup[] = {SIGUSR1, SIGUSR1};
    int bad[][2] = {{SIGUSR1, 0}, {SIGUSR1, _NSIG}, {SIGUSR1, SIGKILL}, {SIGUSR1, SIGSTOP}, {SIGUSR1, -1},
                     /* fault signals: a returning handler re-runs the fault */
                     {SIGUSR1, SIGSEGV}, {SIGUSR1, SIGBUS}, {SIGUSR1, SIGFPE}, {SIGUSR1, SIGILL},
                     {SIGUSR1, SIGTRAP}, {SIGUSR1, SIGSYS}};
    int usr1 = SIGUSR1;
    errno = 0;
    CHECK_EQ(cancel_signal_watch_new(other, dup, 2, 0, &w2), EINVAL);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK_EQ(cancel_signal_watch_new(other, bad[i], 2, 0, &w2), EINVAL);
    CHECK_EQ(cancel_signal_watch_new(other, &usr1, 0, 0, &w2), EINVAL);
    CHECK_EQ(cancel_signal_watch_new(other, NULL, 1, 0, &w2), EINVAL);
    CHECK_EQ(cancel_signal_watch_new(NULL, &usr1, 1, 0, &w2), EINVAL);
    CHECK_EQ(cancel_signal_watch_new(other, &usr1, 1, 0, NULL), EINVAL);
    CHECK_EQ(cancel_signal_watch_new(other, &usr1, 1, 4u, &w2), EINVAL);
    int reserved = SIGRTMIN - 1; /* the C library's own */
    CHECK_EQ(cancel_signal_watch_new(other, &reserved, 1, 0, &w2), EINVAL);
    CHECK_EQ(errno, 0);
    CHECK(w2 == (cancel_signal_watch *)&w);
    CHECK_EQ(sigaction(SIGUSR1, NULL, &usr1_after), 0);
    CHECK(same_action(&usr1_before, &usr1_after));
    /* once freed, the signal can be watched again */
    cancel_signal_watch_free(w);
    CHECK_EQ(cancel_signal_watch_new(other, both, 2, 0, &w2), 0);
    cancel_signal_watch_free(w2);
    cancel_source_free(other);
    cancel_source_free(s);
}

/* In a child: the first SIGINT cancels, the second kills by the default
 * action. `pre_cancel`: the source was cancelled by something else first,
 * so the first SIGINT already is the second. */
static void force_second_kills(bool pre_cancel, bool force)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        cancel_source *s = cancel_source_new();
        cancel_signal_watch *w;
        int sig = SIGINT;
        if (cancel_signal_watch_new(s, &sig, 1, force ? CANCEL_SIGNAL_FORCE_SECOND : 0, &w) != 0)
            _exit(10);
        if (pre_cancel)
            cancel_source_cancel(s);
        else {
            raise(SIGINT);
            if (cancel_token_cause(cancel_source_token(s)).code != SIGINT)
                _exit(11);
        }
        raise(SIGINT);
        _exit(12); /* survived */
    }
    int st;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    if (force) {
        CHECK(WIFSIGNALED(st));
        CHECK_EQ(WTERMSIG(st), SIGINT);
    } else {
        CHECK(WIFEXITED(st));
        CHECK_EQ(WEXITSTATUS(st), 12);
    }
}
static void force_second(void)
{
    force_second_kills(false, true);
    force_second_kills(true, true);
    force_second_kills(false, false);
}

/* A blocked I/O call returns ECANCELED when a watched signal arrives. */
static void signal_ends_a_blocked_read(void)
{
    int p[2];
    CHECK_EQ(pipe2(p, O_CLOEXEC), 0);
    cancel_source *s = cancel_source_new();
    cancel_signal_watch *w;
    int sig = SIGUSR1;
    CHECK_EQ(cancel_signal_watch_new(s, &sig, 1, 0, &w), 0);
    struct call c;
    memset(&c, 0, sizeof c);
    c.fn = do_read;
    c.tok = cancel_source_token(s);
    c.fd = p[0];
    c.len = 1;
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_read");
    kill(getpid(), SIGUSR1); /* any thread may take it */
    call_join(&c);
    CHECK_EQ(c.result, -1);
    CHECK_EQ(c.err, ECANCELED);
    CHECK_EQ(cancel_token_cause(c.tok).code, SIGUSR1);
    cancel_signal_watch_free(w);
    cancel_source_free(s);
    close(p[0]);
    close(p[1]);
}

/* Watches created and freed (and their sources freed right after) while
 * another thread keeps sending the signal: no handler touches freed memory
 * (ASan), and between watches the previous handler takes it. */
static _Atomic int stop_sender;
static void *sender(void *arg)
{
    pthread_t target = *(pthread_t *)arg;
    while (!atomic_load(&stop_sender)) {
        pthread_kill(target, SIGUSR1);
        kill(getpid(), SIGUSR1);
        sched_yield();
    }
    return NULL;
}
static void *absorber(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_sender))
        sched_yield();
    return NULL;
}
static void free_while_handlers_run(void)
{
    struct sigaction prev = {0};
    prev.sa_handler = on_usr;
    sigemptyset(&prev.sa_mask);
    CHECK_EQ(sigaction(SIGUSR1, &prev, NULL), 0);
    atomic_store(&stop_sender, 0);
    pthread_t ab = test_spawn(absorber, NULL);
    pthread_t se = test_spawn(sender, &ab);
    int sig = SIGUSR1, cancelled = 0;
    for (int i = 0; i < TEST_SCALE(3000) + 100; i++) {
        cancel_source *s = cancel_source_new();
        cancel_signal_watch *w;
        CHECK_EQ(cancel_signal_watch_new(s, &sig, 1, CANCEL_SIGNAL_FORCE_SECOND, &w), 0);
        if (i % 3 == 0)
            sched_yield();
        cancel_signal_watch_free(w);
        cancelled += cancel_token_is_requested(cancel_source_token(s));
        cancel_source_free(s);
    }
    atomic_store(&stop_sender, 1);
    test_join(se);
    test_join(ab);
    fprintf(stderr, "   %d of the watches were hit\n", cancelled);
    struct sigaction now;
    CHECK_EQ(sigaction(SIGUSR1, NULL, &now), 0);
    CHECK(now.sa_handler == on_usr);
    signal(SIGUSR1, SIG_DFL);
}

/* Freed from a cancellation callback of the source it watches. */
struct cb_state {
    cancel_signal_watch *w;
    test_gate done;
};
static void free_watch_cb(void *arg)
{
    struct cb_state *st = arg;
    cancel_signal_watch_free(st->w);
    test_gate_open(&st->done);
}
static void free_from_callback(void)
{
    cancel_source *s = cancel_source_new();
    struct cb_state st = {NULL, TEST_GATE_INIT};
    int sig = SIGUSR2;
    CHECK_EQ(cancel_signal_watch_new(s, &sig, 1, 0, &st.w), 0);
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, free_watch_cb, &st), 0);
    raise(SIGUSR2);
    test_gate_wait(&st.done);
    cancel_unregister(&r);
    struct sigaction now;
    CHECK_EQ(sigaction(SIGUSR2, NULL, &now), 0);
    CHECK(now.sa_handler == SIG_DFL);
    cancel_source_free(s);
}

int main(void)
{
    RUN(force_second); /* first: forks before any thread exists */
    RUN(cancels_with_signal_cause_and_restores);
    RUN(ignored_signal_is_watched_and_ignored_again);
    RUN(refused_watches_install_nothing);
    RUN(signal_ends_a_blocked_read);
    RUN(free_while_handlers_run);
    RUN(free_from_callback);
    return 0;
}
