/*
 * A minimal test harness: typed checks that print both operands, a runner
 * that names each case, and small threading helpers. Each test file is one
 * program (one CTest test, run in its own process under a timeout).
 */
#ifndef CANCEL_TEST_CHECK_H
#define CANCEL_TEST_CHECK_H

#include <cancel.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
            abort();                                                                    \
        }                                                                               \
    } while (0)

#define CHECK_EQ(a, b)                                                                  \
    do {                                                                                \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                 \
        if (check_a_ != check_b_) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s == %s (%lld vs %lld)\n", __FILE__, \
                    __LINE__, #a, #b, check_a_, check_b_);                              \
            abort();                                                                    \
        }                                                                               \
    } while (0)

#define CHECK_STR(a, b)                                                                 \
    do {                                                                                \
        const char *check_a_ = (a), *check_b_ = (b);                                    \
        if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) {                \
            fprintf(stderr, "%s:%d: check failed: %s == %s (\"%s\" vs \"%s\")\n",       \
                    __FILE__, __LINE__, #a, #b, check_a_ ? check_a_ : "(null)",         \
                    check_b_ ? check_b_ : "(null)");                                    \
            abort();                                                                    \
        }                                                                               \
    } while (0)

#define RUN(test)                                                                       \
    do {                                                                                \
        fprintf(stderr, "-- %s\n", #test);                                              \
        test();                                                                         \
    } while (0)

static inline int64_t test_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void test_sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* A deterministic pseudo-random generator (xorshift) for race tests. */
static inline uint32_t test_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return (uint32_t)(x >> 32);
}

/* Spins for a random number of iterations in [0, max): widens race windows. */
static inline void test_jitter(uint64_t *state, uint32_t max)
{
    uint32_t n = max ? test_rand(state) % max : 0;
    for (volatile uint32_t i = 0; i < n; i++) {
    }
}

/* 1 under ThreadSanitizer (gcc says so with a macro, clang with a feature
 * test): a child of a threaded parent's fork may not start threads there. */
#if defined(__SANITIZE_THREAD__)
#define TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif
#ifndef TEST_TSAN
#define TEST_TSAN 0
#endif

/* Iteration counts scale down under sanitizers, which run 5-20x slower. */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define TEST_SANITIZED 1
#endif
#endif
#ifndef TEST_SANITIZED
#define TEST_SANITIZED 0
#endif
#define TEST_SCALE(n) (TEST_SANITIZED ? (n) / 10 : (n))

/* A one-shot gate threads can wait on. */
typedef struct test_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open;
} test_gate;
#define TEST_GATE_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0}
static inline void test_gate_open(test_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}
/* As a cancellation callback. */
static inline void test_gate_open_cb(void *g)
{
    test_gate_open(g);
}
static inline void test_gate_wait(test_gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}
/* Waits at most `ns` for the gate; false if it did not open in time (the
 * bound turns a hang into a failure with a message, never into a pass). */
static inline bool test_gate_wait_for(test_gate *g, int64_t ns)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + ns;
    ts.tv_sec = (time_t)(t / 1000000000);
    ts.tv_nsec = (long)(t % 1000000000);
    pthread_mutex_lock(&g->mu);
    int rc = 0;
    while (!g->open && rc == 0)
        rc = pthread_cond_clockwait(&g->cv, &g->mu, CLOCK_MONOTONIC, &ts);
    int o = g->open;
    pthread_mutex_unlock(&g->mu);
    return o;
}
static inline int test_gate_is_open(test_gate *g)
{
    pthread_mutex_lock(&g->mu);
    int o = g->open;
    pthread_mutex_unlock(&g->mu);
    return o;
}

/* A callback that must never run. */
static inline void test_never(void *arg)
{
    fprintf(stderr, "a callback that must not run ran (arg %p)\n", arg);
    abort();
}

/* A callback that counts its runs in an _Atomic int. */
static inline void test_count(void *arg)
{
    atomic_fetch_add((_Atomic int *)arg, 1);
}

/* Polls `pred` (every 100 us) until it holds or `ns` passed: a positive
 * signal with a bound. Returns whether it held. */
static inline bool test_wait_until(bool (*pred)(void *), void *arg, int64_t ns)
{
    int64_t end = test_now_ns() + ns;
    while (!pred(arg)) {
        if (test_now_ns() > end)
            return false;
        test_sleep_ns(100 * 1000);
    }
    return true;
}

/* Threads of this process, from /proc/self/task. */
static inline int test_thread_count(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    CHECK(d);
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static inline bool test_thread_count_is(void *n)
{
    return test_thread_count() == *(int *)n;
}

/* Waits (up to 20 s) until the process has `n` threads: a joined thread can
 * still be listed for a moment, since the kernel wakes the joiner before it
 * unlists the thread. */
static inline bool test_thread_count_becomes(int n)
{
    return test_wait_until(test_thread_count_is, &n, 20LL * 1000000000);
}

/* The calling thread's id, and whether thread `*tidp` of this process is
 * asleep (state S in /proc): a positive signal that it blocked. */
static inline int test_tid(void)
{
    return (int)syscall(SYS_gettid);
}
static inline bool test_thread_sleeps(void *tidp)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", *(int *)tidp);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] == 'S';
}

/* Returns once the library thread has run everything queued before the call
 * (cancel_quiesce: the library's own answer; EBUSY only says deadlines are
 * still armed, so the thread stays). */
static inline void test_drain_library_thread(void)
{
    int rc = cancel_quiesce(CANCEL_INFINITE);
    CHECK(rc == 0 || rc == EBUSY);
}

/* Start/join helpers. */
static inline pthread_t test_spawn(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    CHECK(pthread_create(&t, NULL, fn, arg) == 0);
    return t;
}
static inline void test_join(pthread_t t)
{
    CHECK(pthread_join(t, NULL) == 0);
}

/* Waits while *v == value: spins a little (the change is usually a few
 * microseconds away and a race test wants to see it at once), then naps. */
static inline void test_wait_while(_Atomic int *v, int value)
{
    for (int i = 0; atomic_load(v) == value; i++) {
        if (i < 1000)
            sched_yield();
        else
            test_sleep_ns(20 * 1000);
    }
}

/* A thread that cancels one source per round at a random moment, to race a
 * cancellation against the end of an operation. The delay is log-uniform,
 * up to 2^log2_max iterations of test_jitter, so every scale is tried.
 *   test_racer r; test_racer_start(&r, seed, 20);
 *   per round: test_racer_go(&r, src); ...operation...; test_racer_wait(&r);
 *   test_racer_stop(&r); */
typedef struct test_racer {
    cancel_source *_Atomic src;
    _Atomic int go; /* 1: a round to act in; 0: acted; -1: leave */
    uint64_t rng;
    unsigned log2_max;
    pthread_t thread;
} test_racer;
static inline void *test_racer_main(void *arg)
{
    test_racer *r = arg;
    for (;;) {
        test_wait_while(&r->go, 0);
        if (atomic_load(&r->go) < 0)
            return NULL;
        test_jitter(&r->rng, 1u << (test_rand(&r->rng) % (r->log2_max + 1)));
        cancel_source_cancel(atomic_load(&r->src));
        atomic_store(&r->go, 0);
    }
}
static inline void test_racer_start(test_racer *r, uint64_t seed, unsigned log2_max)
{
    atomic_init(&r->src, NULL);
    atomic_init(&r->go, 0);
    r->rng = seed;
    r->log2_max = log2_max;
    r->thread = test_spawn(test_racer_main, r);
}
/* Starts a round: src will be cancelled soon, from the racer's thread. */
static inline void test_racer_go(test_racer *r, cancel_source *src)
{
    atomic_store(&r->src, src);
    atomic_store(&r->go, 1);
}
/* Returns once the round's cancel has returned (src may then be freed). */
static inline void test_racer_wait(test_racer *r)
{
    test_wait_while(&r->go, 1);
}
static inline void test_racer_stop(test_racer *r)
{
    atomic_store(&r->go, -1);
    test_join(r->thread);
}

/* Runs `fn` in a child of fork and checks that it returned (exit status 0):
 * whatever the child changes of its process (seccomp filters, fork state)
 * dies with it. */
static inline void test_in_child(void (*fn)(void))
{
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        fn();
        _exit(0);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        CHECK_EQ(errno, EINTR);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "the child %s %d\n", WIFEXITED(st) ? "exited with" : "died of signal",
                WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        abort();
    }
}

#endif
