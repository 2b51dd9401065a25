/*
 * Allocation-failure injection: the library's calls to the allocator and to
 * pthread_create go through the wrappers of alloc_inject.h. Each scenario runs with the N-th allocation
 * failing, for every N until the scenario no longer allocates that many:
 * every call must report its documented error, the objects must stay usable,
 * and nothing may leak (LeakSanitizer, in the ASan build).
 *
 * What is covered, exactly: the N-th-allocation scenarios count the calling
 * thread's allocations only (create, linked create, descriptor, names, fail
 * messages, arming and re-arming deadlines, thread start). The library
 * thread's allocations (cascading deadlines down the wheel, keeping fired
 * deadlines for cancel_token_deadline)
 * are covered by refusing every allocation of every thread while they
 * happen: cascade_without_memory (real clock) and fire_without_memory
 * (manual clock, where firing happens in cancel_clock_advance).
 */
#include "../check.h"
#include "alloc_inject.h"

#include <cancel.h>
#include <errno.h>
#include <poll.h>
#include <cancel/io.h>
#include <cancel/process.h>

static bool readable(int fd)
{
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1;
}

/* The library thread cannot be started: registration still succeeds,
 * synchronous cancellation works, deadlines report EAGAIN; async callbacks
 * wait for the thread, which the next registration starts. Runs first,
 * before anything has started the thread. */
static void thread_start_fails(void)
{
    atomic_store(&refuse_threads, 1);
    cancel_source *s = cancel_source_new();
    _Atomic int n = 0;
    cancel_registration r;
    CHECK_EQ(cancel_register(cancel_source_token(s), &r, test_count, &n), 0);
    CHECK_EQ(cancel_source_cancel_after(s, 1000000), EAGAIN);
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK(!st.thread_running);
    CHECK_EQ(st.deadlines_pending, 0);
    CHECK(cancel_source_cancel_async(s)); /* queued */
    CHECK(cancel_token_is_requested(cancel_source_token(s)));
    atomic_store(&refuse_threads, 0);
    cancel_source *other = cancel_source_new();
    cancel_registration r2;
    CHECK_EQ(cancel_register(cancel_source_token(other), &r2, test_never, NULL), 0); /* starts it */
    cancel_get_stats(&st);
    CHECK(st.thread_running);
    while (!atomic_load(&n)) /* the queued dispatch runs on the new thread */
        test_sleep_ns(1000000);
    cancel_unregister(&r);
    CHECK_EQ(atomic_load(&n), 1);
    CHECK(cancel_unregister(&r2));
    cancel_source_free(other);
    cancel_source_free(s);
}

static void create(long n)
{
    (void)n;
    errno = 0;
    cancel_source *s = cancel_source_new();
    if (!s) {
        CHECK_EQ(errno, ENOMEM);
        return;
    }
    CHECK(cancel_source_cancel(s));
    cancel_source_free(s);
}

static cancel_source *parent1, *parent2;
static void linked_create(long n)
{
    (void)n;
    cancel_token p[2] = {cancel_source_token(parent1), cancel_source_token(parent2)};
    errno = 0;
    cancel_source *c = cancel_source_new_linked(p, 2);
    cancel_source_info info;
    if (!c) {
        CHECK_EQ(errno, ENOMEM);
        CHECK_EQ(cancel_source_get_info(parent1, &info), 0);
        CHECK_EQ(info.children, 0); /* nothing half-linked */
        return;
    }
    CHECK_EQ(cancel_source_get_info(parent1, &info), 0);
    CHECK_EQ(info.children, 1);
    cancel_source_free(c);
}

/* new_child: one call, one error path, nothing left behind. */
static void new_child(long n)
{
    (void)n;
    cancel_stats st;
    cancel_get_stats(&st);
    size_t pending_before = st.deadlines_pending;
    errno = 0;
    cancel_source *c = cancel_source_new_child(cancel_source_token(parent1), 3600LL * 1000000000, "named");
    cancel_source_info info;
    if (!c) {
        CHECK_EQ(errno, ENOMEM);
        CHECK_EQ(cancel_source_get_info(parent1, &info), 0);
        CHECK_EQ(info.children, 0);
        cancel_get_stats(&st);
        CHECK_EQ(st.deadlines_pending, pending_before); /* nothing armed */
        return;
    }
    CHECK_STR(cancel_source_name(c), "named");
    CHECK_EQ(cancel_source_get_info(c, &info), 0);
    CHECK(info.deadline_ns > 0);
    cancel_source_free(c);
}

/* Exporting and receiving a token: -1/NULL with ENOMEM, or working. */
/* A token exported and received; with a deadline, its origin travels too:
 * without memory for that name only the name is lost, never the deadline. */
static void export_import_of(cancel_source *src)
{
    errno = 0;
    int fd = cancel_token_export_fd(cancel_source_token(src));
    if (fd < 0) {
        CHECK(errno == ENOMEM || errno == EAGAIN);
        return;
    }
    errno = 0;
    cancel_source *r = cancel_source_new_from_fd(fd);
    if (!r) {
        CHECK_EQ(errno, ENOMEM);
        return;
    }
    CHECK_EQ(cancel_token_deadline(cancel_source_token(r)), cancel_token_deadline(cancel_source_token(src)));
    cancel_source_free(r);
}
static void export_import(long n)
{
    (void)n;
    export_import_of(parent2);
}
static cancel_source *timed; /* made and freed around the scenario */
static void export_import_deadline(long n)
{
    (void)n;
    export_import_of(timed);
}

static void descriptor(long n)
{
    (void)n;
    cancel_source *s = cancel_source_new();
    if (!s)
        return;
    errno = 0;
    int fd = cancel_token_fd(cancel_source_token(s));
    if (fd < 0)
        CHECK_EQ(errno, ENOMEM);
    CHECK(cancel_source_cancel(s)); /* usable either way */
    if (fd >= 0)
        CHECK(readable(fd));
    cancel_source_free(s);
}

static void names(long n)
{
    (void)n;
    cancel_source *s = cancel_source_new();
    if (!s)
        return;
    int rc = cancel_source_set_name(s, "named");
    CHECK(rc == 0 || rc == ENOMEM);
    CHECK(cancel_source_cancel(s));
    cancel_cause c = cancel_token_cause(cancel_source_token(s));
    if (rc == 0)
        CHECK_STR(c.origin, "named");
    else
        CHECK(c.origin == NULL);
    cancel_source_free(s);
}

static void fail_message(long n)
{
    (void)n;
    cancel_source *s = cancel_source_new();
    if (!s)
        return;
    errno = 0;
    CHECK(cancel_source_fail(s, EPIPE, "a message")); /* cancels even without memory */
    CHECK_EQ(errno, 0); /* a bool's true leaves errno alone */
    cancel_cause c = cancel_token_cause(cancel_source_token(s));
    CHECK_EQ(c.reason, CANCEL_REASON_FAILED);
    CHECK_EQ(c.code, EPIPE);
    CHECK(c.message); /* the message, or what happened to it: never silently none */
    if (strcmp(c.message, "a message") != 0)
        CHECK_STR(c.message, "(message lost: out of memory)");
    cancel_source_free(s);
}

/* Deadlines: the wheel's bucket arrays grow (and shrinks) as deadlines come and go. */
static cancel_source *pending[100];
static void deadlines(long n)
{
    (void)n;
    int armed = 0;
    for (int i = 0; i < 100; i++) {
        pending[i] = cancel_source_new();
        if (!pending[i])
            continue;
        int rc = cancel_source_cancel_after(pending[i], 3600LL * 1000000000);
        CHECK(rc == 0 || rc == ENOMEM);
        /* Re-armed far away (another bucket): a failure keeps the first. */
        int rc2 = cancel_source_cancel_after(pending[i], 86400LL * 1000000000 * (1 + i % 7));
        CHECK(rc2 == 0 || rc2 == ENOMEM);
        armed += rc == 0 || rc2 == 0;
    }
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, (size_t)armed);
    for (int i = 0; i < 100; i++)
        cancel_source_free(pending[i]);
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 0);
}

/* The library thread files deadlines again as their time nears (timer.c);
 * without memory it must neither fire them early, nor lose them, nor spin:
 * it retries every millisecond. On the real clock, since only then does the
 * library thread sleep until a time of its own choosing. */
static long library_thread_cpu_ns(void)
{
    char path[96], comm[32];
    long found = -1;
    for (int tid = 1; tid < 4194304 && found < 0; tid++) {
        snprintf(path, sizeof path, "/proc/self/task/%d/comm", tid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof comm, f) && strncmp(comm, "cancel", 6) == 0) {
            snprintf(path, sizeof path, "/proc/self/task/%d/schedstat", tid);
            FILE *g = fopen(path, "r");
            if (g && fscanf(g, "%ld", &found) != 1)
                found = -1;
            if (g)
                fclose(g);
        }
        fclose(f);
    }
    return found;
}
static bool refused_some(void *unused)
{
    (void)unused;
    return atomic_load(&failed_everywhere) > 0;
}
static void cascade_without_memory(void)
{
    enum { N = 40 };
    const int64_t base = 300 * 1000000; /* filed above level 0, cascaded within 300 ms */
    cancel_source *s[N];
    int64_t armed = test_now_ns();
    for (int i = 0; i < N; i++) {
        s[i] = cancel_source_new();
        CHECK_EQ(cancel_source_cancel_after(s[i], base + (int64_t)i * 3000000), 0);
    }
    atomic_store(&fail_everywhere, 1);
    /* A positive signal that the library thread met the refusal (the
     * cascades need memory), however late it runs on a loaded machine. */
    CHECK(test_wait_until(refused_some, NULL, 20LL * 1000000000));
    long cpu0 = library_thread_cpu_ns();
    test_sleep_ns(200 * 1000000); /* retrying without memory meanwhile */
    long cpu1 = library_thread_cpu_ns();
    atomic_store(&fail_everywhere, 0);
    int fired = 0;
    for (int i = 0; i < N; i++)
        fired += cancel_token_is_requested(cancel_source_token(s[i]));
    fprintf(stderr, "   library thread CPU while out of memory: %.1f ms in 200 ms; %ld allocations refused; "
            "%d of %d fired meanwhile\n", (cpu1 - cpu0) / 1e6, atomic_load(&failed_everywhere), fired, N);
    CHECK(cpu0 >= 0 && cpu1 - cpu0 < 100 * 1000000); /* retrying, not spinning */
    for (int i = 0; i < N; i++) {
        CHECK(cancel_token_wait(cancel_source_token(s[i]), 10LL * 1000000000)); /* none lost */
        CHECK(test_now_ns() >= armed + base + (int64_t)i * 3000000);          /* none early */
        cancel_source_free(s[i]);
    }
}

/* Deadlines fire with no memory at all: none is lost or late, and what
 * could not be kept is only the report of the deadline (the kept level's
 * arrays must grow, and cannot). Run for deadlines a microsecond ahead and
 * for deadlines 134 ms ahead: the wheel files the second above its finest
 * level, so reaching them means moving them down, which needs memory that
 * is not there; the first may be filed either way, depending on where the
 * wheel stands. */
static void fire_without_memory_at(int64_t ahead)
{
    enum { N = 200 };
    cancel_clock_use_manual(true);
    cancel_source *s[N];
    for (int i = 0; i < N; i++) {
        s[i] = cancel_source_new();
        CHECK_EQ(cancel_source_cancel_after(s[i], ahead + i), 0);
    }
    atomic_store(&fail_everywhere, 1);
    cancel_clock_advance(ahead + N);
    atomic_store(&fail_everywhere, 0);
    for (int i = 0; i < N; i++) {
        CHECK(cancel_token_is_requested(cancel_source_token(s[i]))); /* none lost */
        int64_t d = cancel_token_deadline(cancel_source_token(s[i]));
        CHECK(d == CANCEL_INFINITE || d == cancel_now() - N + i); /* kept, or forgotten */
    }
    cancel_stats st;
    cancel_get_stats(&st);
    CHECK_EQ(st.deadlines_pending, 0);
    for (int i = 0; i < N; i++)
        cancel_source_free(s[i]);
    cancel_clock_use_manual(false);
}
static void fire_without_memory(void)
{
    fire_without_memory_at(1000);
    fire_without_memory_at(INT64_C(1) << 27);
}

/* cancel_sleep on the manual clock with no memory for the source it sleeps
 * on: it naps and tries again, and returns only once the clock has reached
 * its end (before, it returned after one nap). The clock is moved once the
 * sleeper has been refused three times. */
static void *advance_after_refusals(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100000 && atomic_load(&failed_everywhere) < 3; i++)
        test_sleep_ns(100 * 1000);
    cancel_clock_advance(10 * 1000 * 1000);
    return NULL;
}

static void manual_sleep_without_memory(void)
{
    cancel_clock_use_manual(true);
    int64_t end = cancel_now() + 10 * 1000 * 1000;
    atomic_store(&failed_everywhere, 0);
    atomic_store(&fail_everywhere, 1);
    pthread_t th = test_spawn(advance_after_refusals, NULL);
    CHECK_EQ(cancel_sleep(CANCEL_TOKEN_NONE, 10 * 1000 * 1000), 0);
    CHECK(cancel_now() >= end); /* not before its time */
    atomic_store(&fail_everywhere, 0);
    test_join(th);
    cancel_clock_use_manual(false);
}

int main(void)
{
    RUN(thread_start_fails);
    parent1 = cancel_source_new();
    parent2 = cancel_source_new();
    each_failure("create", create);
    each_failure("linked create", linked_create);
    each_failure("new child", new_child);
    each_failure("export and receive", export_import);
    timed = cancel_source_new_child(CANCEL_TOKEN_NONE, 3600LL * 1000000000, "timed");
    each_failure("export and receive a deadline", export_import_deadline);
    cancel_source_free(timed);
    each_failure("descriptor", descriptor);
    each_failure("names", names);
    each_failure("fail messages", fail_message);
    each_failure("deadlines", deadlines);
    RUN(cascade_without_memory);
    RUN(fire_without_memory);
    RUN(manual_sleep_without_memory);
    cancel_source_free(parent1);
    cancel_source_free(parent2);
    fprintf(stderr, "   %ld allocation points exercised\n", points);
    return 0;
}
