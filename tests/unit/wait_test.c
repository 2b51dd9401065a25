/* Blocking waits and the pollable descriptor. */
#include "../check.h"

#include <cancel.h>
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

static void wait_returns_at_once_when_decided(void)
{
    CHECK(!cancel_token_wait(CANCEL_TOKEN_NONE, CANCEL_INFINITE));
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    CHECK(!cancel_token_wait(t, 0));
    CHECK(!cancel_token_wait(t, 1000)); /* times out */
    errno = 0;
    CHECK(!cancel_token_wait(t, -5));
    CHECK_EQ(errno, EINVAL);
    cancel_source_cancel(s);
    CHECK(cancel_token_wait(t, 0));
    CHECK(cancel_token_wait(t, CANCEL_INFINITE));
    cancel_source_free(s);
}

static void timeout_is_honoured(void)
{
    cancel_source *s = cancel_source_new();
    int64_t t0 = test_now_ns();
    CHECK(!cancel_token_wait(cancel_source_token(s), 20 * 1000 * 1000));
    CHECK(test_now_ns() - t0 >= 20 * 1000 * 1000); /* never early */
    cancel_source_free(s);
}

struct waiter {
    cancel_token tok;
    test_gate started;
    int result;
};
static void *wait_forever(void *arg)
{
    struct waiter *w = arg;
    test_gate_open(&w->started);
    w->result = cancel_token_wait(w->tok, CANCEL_INFINITE);
    return NULL;
}

static void cancel_wakes_every_waiter(void)
{
    cancel_source *s = cancel_source_new();
    struct waiter w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct waiter){cancel_source_token(s), TEST_GATE_INIT, -1};
        th[i] = test_spawn(wait_forever, &w[i]);
        test_gate_wait(&w[i].started);
    }
    test_sleep_ns(5 * 1000 * 1000); /* let them block (not required for correctness) */
    cancel_source_cancel(s);
    for (int i = 0; i < 4; i++) {
        test_join(th[i]);
        CHECK_EQ(w[i].result, 1);
    }
    cancel_source_free(s);
}

static void free_wakes_waiters_with_false(void)
{
    cancel_source *s = cancel_source_new();
    struct waiter w = {cancel_source_token(s), TEST_GATE_INIT, -1};
    pthread_t th = test_spawn(wait_forever, &w);
    test_gate_wait(&w.started);
    test_sleep_ns(5 * 1000 * 1000);
    cancel_source_free(s); /* the waiter holds its own reference meanwhile */
    test_join(th);
    CHECK_EQ(w.result, 0);
}

/* Pitfall 18: lost wake-ups. Many wait/cancel races; a watchdog is the
 * CTest timeout. */
static void *wait_then_check(void *arg)
{
    cancel_token t = *(cancel_token *)arg;
    CHECK(cancel_token_wait(t, CANCEL_INFINITE));
    return NULL;
}
static void wait_cancel_races_lose_nothing(void)
{
    uint64_t rng = 777;
    for (int i = 0; i < TEST_SCALE(20000); i++) {
        cancel_source *s = cancel_source_new();
        cancel_token t = cancel_source_token(s);
        pthread_t th = test_spawn(wait_then_check, &t);
        test_jitter(&rng, 5000);
        cancel_source_cancel(s);
        test_join(th);
        cancel_source_free(s);
    }
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

static bool readable(int fd, int timeout_ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

static void fd_turns_readable_on_cancel(void)
{
    int before = open_fds();
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    CHECK_EQ(open_fds(), before); /* no descriptor unless asked */
    int fd = cancel_token_fd(t);
    CHECK(fd >= 0);
    CHECK_EQ(cancel_token_fd(t), fd); /* at most one per source */
    CHECK_EQ(open_fds(), before + 1);
    CHECK(!readable(fd, 0));
    cancel_source_cancel(s);
    CHECK(readable(fd, 1000));
    CHECK(readable(fd, 0)); /* stays readable */
    cancel_source_free(s);
    CHECK_EQ(open_fds(), before); /* closed with the source */
}

static void fd_made_after_cancel_is_readable(void)
{
    cancel_source *s = cancel_source_new();
    cancel_source_cancel(s);
    int fd = cancel_token_fd(cancel_source_token(s));
    CHECK(fd >= 0);
    CHECK(readable(fd, 0));
    cancel_source_free(s);
}

static void fd_of_freed_source(void)
{
    int before = open_fds();
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_token_retain(cancel_source_token(s));
    int fd = cancel_token_fd(t);
    CHECK(!readable(fd, 0));
    cancel_source_free(s);
    CHECK(readable(fd, 1000)); /* wakes pollers: it can never be cancelled now */
    CHECK(!cancel_token_is_requested(t));
    CHECK(!cancel_token_can_be_canceled(t));
    CHECK_EQ(open_fds(), before + 1); /* still ours while retained */
    cancel_token_release(t);
    CHECK_EQ(open_fds(), before);
}

static void fd_errors(void)
{
    errno = 0;
    CHECK_EQ(cancel_token_fd(CANCEL_TOKEN_NONE), -1);
    CHECK_EQ(errno, EINVAL);

    /* descriptor exhaustion: EMFILE, everything else still works */
    struct rlimit old, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
    int fds[64], n = 0;
    low = old;
    low.rlim_cur = (rlim_t)open_fds() + 2;
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    while (n < 64 && (fds[n] = dup(0)) >= 0)
        n++;
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    errno = 0;
    CHECK_EQ(cancel_token_fd(t), -1);
    CHECK_EQ(errno, EMFILE);
    cancel_registration r;
    _Atomic int ran = 0;
    CHECK_EQ(cancel_register(t, &r, test_count, &ran), 0);
    CHECK(!cancel_token_wait(t, 1000));
    cancel_source_cancel(s);
    CHECK_EQ(atomic_load(&ran), 1);
    CHECK(cancel_token_wait(t, 0));
    cancel_source_free(s);
    while (n > 0)
        close(fds[--n]);
    CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
}

/* A descriptor requested while another thread cancels: always readable. */
static cancel_source *fd_src;
static void *fd_cancel(void *arg)
{
    uint64_t rng = (uintptr_t)arg;
    test_jitter(&rng, 5000);
    cancel_source_cancel(fd_src);
    return NULL;
}
static void fd_creation_races_cancel(void)
{
    for (int i = 0; i < TEST_SCALE(5000); i++) {
        fd_src = cancel_source_new();
        pthread_t th = test_spawn(fd_cancel, (void *)(uintptr_t)(i * 7919 + 1));
        uint64_t rng = (uint64_t)i + 3;
        test_jitter(&rng, 5000);
        int fd = cancel_token_fd(cancel_source_token(fd_src));
        CHECK(fd >= 0);
        test_join(th);
        CHECK(readable(fd, 0));
        cancel_source_free(fd_src);
    }
}

int main(void)
{
    RUN(wait_returns_at_once_when_decided);
    RUN(timeout_is_honoured);
    RUN(cancel_wakes_every_waiter);
    RUN(free_wakes_waiters_with_false);
    RUN(wait_cancel_races_lose_nothing);
    RUN(fd_turns_readable_on_cancel);
    RUN(fd_made_after_cancel_is_readable);
    RUN(fd_of_freed_source);
    RUN(fd_errors);
    RUN(fd_creation_races_cancel);
    return 0;
}
