/*
 * Allocation and thread-start failures in the task layer: the library's
 * calls to the allocator and to pthread_create go through the wrappers of
 * alloc_inject.h. Each scenario runs with the N-th allocation made on the test's
 * thread failing, for every N until the scenario no longer makes that
 * many: every call must report its documented error, fn must not run for a
 * refused task, the objects must stay usable, and nothing may leak
 * (LeakSanitizer, in the ASan build; pool threads are counted in
 * /proc/self/task).
 */
#include "../check.h"
#include "alloc_inject.h"

#include <cancel.h>
#include <cancel/task.h>
#include <errno.h>

#include "task/task_internal.h" /* to count the slabs a group gives back */

static int count_run(void *arg, cancel_token tok)
{
    (void)tok;
    atomic_fetch_add((_Atomic int *)arg, 1);
    return 0;
}

static void pool_new(long n)
{
    (void)n;
    errno = 0;
    cancel_pool *p = cancel_pool_new(2, "pool");
    if (!p) {
        CHECK_EQ(errno, ENOMEM);
        return;
    }
    cancel_pool_free(p);
}

static cancel_pool *shared; /* for the scenarios below, made without failures */

static void task_run(long n)
{
    fail_at = 0; /* the caller's token is the caller's business */
    cancel_source *s = cancel_source_new();
    fail_at = n;
    _Atomic int runs = 0;
    cancel_task *t = (cancel_task *)1;
    int r = cancel_task_run(shared, cancel_source_token(s), count_run, &runs, "t", &t);
    long made = seen;
    fail_at = 0;
    if (r == 0) {
        CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
        CHECK_EQ(atomic_load(&runs), 1);
        cancel_task_free(t);
    } else {
        CHECK_EQ(r, ENOMEM);
        CHECK(t == NULL);
        CHECK_EQ(atomic_load(&runs), 0);
    }
    cancel_source_free(s);
    seen = made;
}

static void task_run_plain(long n)
{
    (void)n;
    _Atomic int runs = 0;
    cancel_task *t = (cancel_task *)1;
    int r = cancel_task_run(shared, CANCEL_TOKEN_NONE, count_run, &runs, NULL, &t);
    long made = seen;
    fail_at = 0;
    if (r == 0) {
        CHECK_EQ(cancel_task_wait(CANCEL_TOKEN_NONE, t, CANCEL_INFINITE), 0);
        CHECK_EQ(atomic_load(&runs), 1);
        cancel_task_free(t);
    } else {
        CHECK_EQ(r, ENOMEM);
        CHECK(t == NULL);
    }
    seen = made;
}

static void group_new_spawn_report(long n)
{
    (void)n;
    long made;
    errno = 0;
    cancel_group *g = cancel_group_new(shared, CANCEL_TOKEN_NONE, "group");
    if (!g) {
        CHECK_EQ(errno, ENOMEM);
        return;
    }
    _Atomic int runs = 0;
    int r = cancel_group_spawn(g, count_run, &runs, "task");
    CHECK(r == 0 || r == ENOMEM);
    int r2 = cancel_group_spawn(g, count_run, &runs, "task 2");
    CHECK(r2 == 0 || r2 == ENOMEM);
    FILE *devnull = fopen("/dev/null", "w");
    int rr = cancel_group_report(g, devnull, CANCEL_REPORT_JSON);
    CHECK(rr == 0 || rr == ENOMEM);
    rr = cancel_group_report(g, devnull, CANCEL_REPORT_TEXT);
    CHECK(rr == 0 || rr == ENOMEM);
    made = seen;
    fail_at = 0;
    fclose(devnull);
    CHECK_EQ(cancel_group_wait(g), 0); /* a refused spawn leaves nothing to wait for */
    CHECK_EQ(atomic_load(&runs), (r == 0) + (r2 == 0));
    cancel_group_stats st;
    CHECK_EQ(cancel_group_stats_get(g, &st), 0);
    CHECK_EQ(st.completed, (size_t)((r == 0) + (r2 == 0)));
    /* Every slab of the group comes back to the pool's cache: no slot of a
     * refused spawn is forgotten. */
    uint32_t kept = atomic_load(&shared->nslabs), slabs = 0;
    for (struct cancel__slab *sl = atomic_load(&g->slab); sl; sl = sl->next)
        slabs++;
    cancel_group_free(g);
    /* A pool thread drops its reference to a task just after counting it
     * out of its group: the last slab may come back a moment later. */
    for (int tries = 0; atomic_load(&shared->nslabs) != kept + slabs; tries++) {
        CHECK(tries < 10000); /* 10 s: a slab was lost */
        test_sleep_ns(1000 * 1000);
    }
    seen = made;
}

/* A name too long for its slab's name space is allocated apart: here the
 * only allocation made under injection (the group and its slab exist). */
static void long_name_spawn(long n)
{
    (void)n;
    fail_at = 0;
    cancel_group *g = cancel_group_new(shared, CANCEL_TOKEN_NONE, "group");
    _Atomic int runs = 0;
    CHECK_EQ(cancel_group_spawn(g, count_run, &runs, "short"), 0);
    static char long_name[2048];
    memset(long_name, 'x', sizeof long_name - 1);
    seen = 0;
    fail_at = n;
    int r = cancel_group_spawn(g, count_run, &runs, long_name);
    long made = seen;
    fail_at = 0;
    CHECK(r == 0 || r == ENOMEM);
    CHECK_EQ(cancel_group_wait(g), 0);
    CHECK_EQ(atomic_load(&runs), 1 + (r == 0));
    uint32_t kept = atomic_load(&shared->nslabs), slabs = 0;
    for (struct cancel__slab *sl = atomic_load(&g->slab); sl; sl = sl->next)
        slabs++;
    cancel_group_free(g);
    for (int tries = 0; atomic_load(&shared->nslabs) != kept + slabs; tries++) {
        CHECK(tries < 10000); /* 10 s: a slab was lost */
        test_sleep_ns(1000 * 1000);
    }
    seen = made;
}

/* A pool of more threads than can be started: the error of pthread_create,
 * every thread started so far joined, nothing leaked. */
static void thread_start_failure(void)
{
    int before = test_thread_count();
    for (long k = 1; k <= 4; k++) {
        threads_seen = 0;
        threads_fail_at = k;
        errno = 0;
        CHECK(cancel_pool_new(4, "refused") == NULL);
        CHECK_EQ(errno, EAGAIN);
        threads_fail_at = 0;
        CHECK(test_thread_count_becomes(before));
    }
    cancel_pool *p = cancel_pool_new(4, "fine");
    CHECK(p);
    CHECK_EQ(test_thread_count(), before + 4);
    cancel_pool_free(p);
    CHECK(test_thread_count_becomes(before));
}

int main(void)
{
    /* Start the library thread first, so that its start is not one of the
     * allocations counted. */
    cancel_source *warm = cancel_source_new();
    cancel_registration r;
    cancel_register(cancel_source_token(warm), &r, test_never, NULL);
    cancel_unregister(&r);
    cancel_source_free(warm);

    RUN(thread_start_failure);
    each_failure("cancel_pool_new", pool_new);
    shared = cancel_pool_new(2, "shared");
    CHECK(shared);
    each_failure("cancel_task_run with a token", task_run);
    each_failure("cancel_task_run", task_run_plain);
    each_failure("cancel_group_new, spawn, report", group_new_spawn_report);
    each_failure("cancel_group_spawn, a long name", long_name_spawn);
    cancel_pool_free(shared);
    fprintf(stderr, "%ld allocation points in all\n", points);
    CHECK(points >= 8);
    CHECK_EQ(cancel_quiesce(CANCEL_INFINITE), 0);
    return 0;
}
