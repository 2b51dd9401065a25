/* cancel_watch_fd / cancel_unwatch_fd: a descriptor watched by the library
 * thread. */
#include "../check.h"

#include <cancel.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

static _Thread_local int on_main;

struct counter {
    int fd;
    _Atomic int runs, elsewhere;
    test_gate ran;
};
static void consume(cancel_fd_watch *w, void *arg)
{
    (void)w;
    struct counter *c = arg;
    char buf[64];
    while (read(c->fd, buf, sizeof buf) > 0) {
    }
    atomic_fetch_add(&c->runs, 1);
    if (!on_main)
        atomic_fetch_add(&c->elsewhere, 1);
    test_gate_open(&c->ran);
}

static size_t watched(void)
{
    cancel_stats st;
    CHECK_EQ(cancel_get_stats(&st), 0);
    return st.watched_fds;
}

static void runs_on_the_library_thread(void)
{
    on_main = 1;
    int p[2];
    CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    struct counter c = {p[0], 0, 0, TEST_GATE_INIT};
    cancel_fd_watch w;
    CHECK_EQ(cancel_watch_fd(&w, p[0], consume, &c), 0);
    CHECK_EQ(watched(), 1);
    CHECK_EQ(cancel_watch_fd(&w, p[0], consume, &c), EEXIST); /* one watch per descriptor */
    CHECK(write(p[1], "x", 1) == 1);
    CHECK(test_gate_wait_for(&c.ran, 20LL * 1000000000));
    CHECK_EQ(atomic_load(&c.elsewhere), atomic_load(&c.runs)); /* never on the caller */
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), EBUSY); /* a watch keeps the thread */
    CHECK(cancel_unwatch_fd(&w));
    CHECK(!cancel_unwatch_fd(&w)); /* harmless, false */
    CHECK_EQ(watched(), 0);
    int before = atomic_load(&c.runs);
    CHECK(write(p[1], "y", 1) == 1);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0); /* nothing watched any more: it stops */
    CHECK_EQ(atomic_load(&c.runs), before);       /* and ran nothing for the unwatched fd */
    close(p[0]);
    close(p[1]);
}

static void bad_arguments(void)
{
    cancel_fd_watch w;
    CHECK_EQ(cancel_watch_fd(NULL, 0, consume, NULL), EINVAL);
    CHECK_EQ(cancel_watch_fd(&w, -1, consume, NULL), EINVAL);
    CHECK_EQ(cancel_watch_fd(&w, 0, NULL, NULL), EINVAL);
    int f = open("/proc/self/exe", O_RDONLY | O_CLOEXEC); /* a regular file */
    CHECK(f >= 0);
    CHECK_EQ(cancel_watch_fd(&w, f, consume, NULL), EPERM);
    close(f);
    errno = 0;
    CHECK(!cancel_unwatch_fd(NULL));
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(watched(), 0);
}

/* Unwatching from another thread while the handler runs waits for it. */
struct slow {
    int fd;
    test_gate started, release;
    _Atomic int finished;
};
static void slow_handler(cancel_fd_watch *w, void *arg)
{
    (void)w;
    struct slow *s = arg;
    char b;
    while (read(s->fd, &b, 1) > 0) {
    }
    test_gate_open(&s->started);
    test_gate_wait(&s->release);
    atomic_store(&s->finished, 1);
}
static void *open_later(void *arg)
{
    struct slow *s = arg;
    /* positive signal: the unwatching thread is asleep waiting for us */
    int tid = *(int *)((char *)arg + sizeof *s);
    CHECK(test_wait_until(test_thread_sleeps, &tid, 20LL * 1000000000));
    test_gate_open(&s->release);
    return NULL;
}
static void unwatch_waits_for_a_running_handler(void)
{
    int p[2];
    CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    struct {
        struct slow s;
        int tid;
    } x = {{p[0], TEST_GATE_INIT, TEST_GATE_INIT, 0}, test_tid()};
    cancel_fd_watch w;
    CHECK_EQ(cancel_watch_fd(&w, p[0], slow_handler, &x.s), 0);
    CHECK(write(p[1], "x", 1) == 1);
    test_gate_wait(&x.s.started); /* the handler runs on the library thread */
    pthread_t t = test_spawn(open_later, &x);
    CHECK(cancel_unwatch_fd(&w));
    CHECK_EQ(atomic_load(&x.s.finished), 1); /* it waited for the handler */
    test_join(t);
    close(p[0]);
    close(p[1]);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
}

/* From its own handler it does not wait (it could not). */
static void unwatch_self(cancel_fd_watch *w, void *arg)
{
    struct counter *c = arg;
    CHECK(cancel_unwatch_fd(w));
    atomic_fetch_add(&c->runs, 1);
    test_gate_open(&c->ran);
}
static void unwatch_from_the_handler(void)
{
    int p[2];
    CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    struct counter c = {p[0], 0, 0, TEST_GATE_INIT};
    cancel_fd_watch w;
    CHECK_EQ(cancel_watch_fd(&w, p[0], unwatch_self, &c), 0);
    CHECK(write(p[1], "x", 1) == 1); /* never consumed: only the unwatch stops it */
    CHECK(test_gate_wait_for(&c.ran, 20LL * 1000000000));
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    CHECK_EQ(atomic_load(&c.runs), 1);
    close(p[0]);
    close(p[1]);
}

/* The library thread's wake-up descriptor is never closed while others may
 * write to it: a number closed and reused (here by pipes) would receive the
 * wake-ups' bytes. Threads cycle watches and stops, post asynchronous
 * cancels, and make pipes that must stay empty. */
static _Atomic int churn;
static void nop(cancel_fd_watch *w, void *arg)
{
    (void)w;
    (void)arg;
}
static void *cycle_watch(void *arg)
{
    (void)arg;
    int efd = eventfd(0, EFD_CLOEXEC);
    CHECK(efd >= 0);
    while (!atomic_load(&churn)) {
        cancel_fd_watch w;
        if (cancel_watch_fd(&w, efd, nop, NULL) == 0)
            cancel_unwatch_fd(&w);
        (void)cancel_quiesce(CANCEL_INFINITE);
    }
    close(efd);
    return NULL;
}
static void *kick(void *arg)
{
    (void)arg;
    while (!atomic_load(&churn)) {
        cancel_source *s = cancel_source_new();
        cancel_source_cancel_async(s);
        cancel_source_free(s);
    }
    return NULL;
}
static void wake_ups_land_nowhere_else(void)
{
    cancel_source *keep = cancel_source_new();
    cancel_registration r; /* so that async cancels are queued and kick */
    CHECK_EQ(cancel_register(cancel_source_token(keep), &r, test_never, NULL), 0);
    atomic_store(&churn, 0);
    pthread_t a = test_spawn(cycle_watch, NULL), b = test_spawn(kick, NULL);
    long foreign = 0;
    for (int i = 0; i < TEST_SCALE(100000); i++) {
        int p[2];
        CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
        char buf[16];
        if (read(p[0], buf, sizeof buf) > 0)
            foreign++;
        close(p[0]);
        close(p[1]);
    }
    atomic_store(&churn, 1);
    test_join(a);
    test_join(b);
    CHECK_EQ(foreign, 0);
    CHECK(cancel_unregister(&r));
    cancel_source_free(keep);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
}

int main(void)
{
    RUN(bad_arguments);
    RUN(runs_on_the_library_thread);
    RUN(unwatch_waits_for_a_running_handler);
    RUN(unwatch_from_the_handler);
    RUN(wake_ups_land_nowhere_else);
    return 0;
}
