/* Blocking waits and the pollable descriptor. */
#include "../check.h"

#include <cancel.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
    _Atomic int tid;
};
static void *wait_forever(void *arg)
{
    struct waiter *w = arg;
    atomic_store(&w->tid, test_tid());
    test_gate_open(&w->started);
    w->result = cancel_token_wait(w->tok, CANCEL_INFINITE);
    return NULL;
}
/* A positive signal that the waiter is asleep in cancel_token_wait. */
static void wait_asleep(struct waiter *w)
{
    test_gate_wait(&w->started);
    int tid = atomic_load(&w->tid);
    CHECK(test_wait_until(test_thread_sleeps, &tid, 20LL * 1000000000));
}

static void cancel_wakes_every_waiter(void)
{
    cancel_source *s = cancel_source_new();
    struct waiter w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct waiter){cancel_source_token(s), TEST_GATE_INIT, -1, 0};
        th[i] = test_spawn(wait_forever, &w[i]);
    }
    for (int i = 0; i < 4; i++)
        wait_asleep(&w[i]); /* the wake-up is what is tested */
    cancel_source_cancel(s);
    for (int i = 0; i < 4; i++) {
        test_join(th[i]);
        CHECK_EQ(w[i].result, 1);
    }
    cancel_source_free(s);
}

/* A waiter on a retained token is woken, with false, when the source is
 * freed uncancelled (a borrowed token would die with the source: only a
 * retained one may be used across cancel_source_free). */
static void free_wakes_waiters_with_false(void)
{
    cancel_source *s = cancel_source_new();
    cancel_token kept = cancel_token_retain(cancel_source_token(s));
    struct waiter w = {kept, TEST_GATE_INIT, -1, 0};
    pthread_t th = test_spawn(wait_forever, &w);
    wait_asleep(&w);
    cancel_source_free(s);
    test_join(th);
    CHECK_EQ(w.result, 0);
    CHECK(!cancel_token_can_be_canceled(kept));
    cancel_token_release(kept);
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
    int spare = open("/dev/null", O_RDONLY | O_CLOEXEC); /* not fd 0: it may be closed */
    CHECK(spare >= 0);
    low.rlim_cur = (rlim_t)open_fds() + 2;
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    while (n < 64 && (fds[n] = dup(spare)) >= 0)
        n++;
    CHECK(n > 0);
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
    close(spare);
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

/* Two threads race to make the descriptor: both get the winner's, and the
 * loser's eventfd is closed through the C library, so that ThreadSanitizer
 * sees the close: a descriptor number reused right after by a thread that
 * never synchronised with the loser (here: a pipe) is no data race. (With a
 * raw close system call, TSan reports one in the reusing thread.) */
struct fd_race {
    cancel_token tok;
    test_gate go, exit;
    int fd[2];
    _Atomic int made;
};
static void *make_fd(void *arg)
{
    struct fd_race *r = arg;
    test_gate_wait(&r->go);
    int fd = cancel_token_fd(r->tok);
    r->fd[atomic_fetch_add_explicit(&r->made, 1, memory_order_relaxed) & 1] = fd;
    test_gate_wait(&r->exit);
    return NULL;
}
static void fd_creation_races_creation(void)
{
    for (int i = 0; i < TEST_SCALE(500); i++) {
        cancel_source *s = cancel_source_new();
        struct fd_race r = {cancel_source_token(s), TEST_GATE_INIT, TEST_GATE_INIT, {-1, -1}, 0};
        pthread_t ta = test_spawn(make_fd, &r), tb = test_spawn(make_fd, &r);
        test_gate_open(&r.go);
        /* relaxed on purpose: no happens-before with the loser's close */
        while (atomic_load_explicit(&r.made, memory_order_relaxed) < 2)
            sched_yield();
        int p[2];
        CHECK(pipe(p) == 0); /* likely the number the loser closed */
        char c = 'x';
        CHECK(write(p[1], &c, 1) == 1);
        CHECK(read(p[0], &c, 1) == 1);
        close(p[0]);
        close(p[1]);
        test_gate_open(&r.exit);
        test_join(ta);
        test_join(tb);
        CHECK(r.fd[0] >= 0);
        CHECK_EQ(r.fd[0], r.fd[1]); /* at most one per source */
        cancel_source_free(s);
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
    RUN(fd_creation_races_creation);
    return 0;
}
