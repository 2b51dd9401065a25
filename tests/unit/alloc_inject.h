/*
 * Allocation and thread-start failure injection, for the programs linked
 * with -Wl,--wrap for malloc, calloc, realloc, strdup, strndup,
 * aligned_alloc, open_memstream and pthread_create (tests/CMakeLists.txt), so that the library's own calls go
 * through the wrappers below. Included by one file of each such program.
 *
 * Three ways to refuse:
 *   each_failure(name, scenario)  the N-th allocation of the calling thread
 *                                 fails, for N = 1, 2, ... until a run makes
 *                                 fewer than N (ENOMEM)
 *   fail_everywhere = 1           every allocation of every thread fails
 *                                 (counted in failed_everywhere)
 *   refuse_threads = 1            every pthread_create fails (EAGAIN);
 *   threads_fail_at = N           the N-th of the calling thread fails
 */
#ifndef CANCEL_TEST_ALLOC_INJECT_H
#define CANCEL_TEST_ALLOC_INJECT_H

#include "../check.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

void *__real_malloc(size_t);
void *__real_calloc(size_t, size_t);
void *__real_realloc(void *, size_t);
char *__real_strdup(const char *);
char *__real_strndup(const char *, size_t);
void *__real_aligned_alloc(size_t, size_t);
FILE *__real_open_memstream(char **, size_t *);
int __real_pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
void *__wrap_malloc(size_t);
void *__wrap_calloc(size_t, size_t);
void *__wrap_realloc(void *, size_t);
char *__wrap_strdup(const char *);
char *__wrap_strndup(const char *, size_t);
void *__wrap_aligned_alloc(size_t, size_t);
FILE *__wrap_open_memstream(char **, size_t *);
int __wrap_pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

static _Thread_local long fail_at; /* 0: never; counts on the test's thread only */
static _Thread_local long seen;
static _Atomic int fail_everywhere;
static _Atomic long failed_everywhere;
static _Atomic int refuse_threads;
static _Thread_local long threads_fail_at; /* 0: never */
static _Thread_local long threads_seen;
static long points; /* allocation points exercised, over all scenarios */

static bool inject(void)
{
    /* relaxed: the test sets and clears the flag around the calls it makes,
     * ordered by those calls' own synchronisation */
    if (atomic_load_explicit(&fail_everywhere, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&failed_everywhere, 1, memory_order_relaxed);
        return true;
    }
    return fail_at != 0 && ++seen == fail_at;
}
void *__wrap_malloc(size_t n)
{
    return inject() ? (errno = ENOMEM, NULL) : __real_malloc(n);
}
void *__wrap_calloc(size_t a, size_t b)
{
    return inject() ? (errno = ENOMEM, NULL) : __real_calloc(a, b);
}
void *__wrap_realloc(void *p, size_t n)
{
    return inject() ? (errno = ENOMEM, NULL) : __real_realloc(p, n);
}
char *__wrap_strdup(const char *s)
{
    return inject() ? (errno = ENOMEM, NULL) : __real_strdup(s);
}
char *__wrap_strndup(const char *s, size_t n)
{
    return inject() ? (errno = ENOMEM, NULL) : __real_strndup(s, n);
}
void *__wrap_aligned_alloc(size_t a, size_t n)
{
    return inject() ? (errno = ENOMEM, NULL) : __real_aligned_alloc(a, n);
}
/* (the stream's own growth happens inside libc, out of reach) */
FILE *__wrap_open_memstream(char **buf, size_t *len)
{
    return inject() ? (errno = ENOMEM, NULL) : __real_open_memstream(buf, len);
}
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
    if (atomic_load_explicit(&refuse_threads, memory_order_relaxed) ||
        (threads_fail_at != 0 && ++threads_seen == threads_fail_at))
        return EAGAIN;
    return __real_pthread_create(t, a, fn, arg);
}

/* Runs scenario(n) with the n-th allocation of this thread failing, for
 * n = 1, 2, ... until a run makes fewer allocations than n. */
static void each_failure(const char *name, void (*scenario)(long n))
{
    long n;
    for (n = 1;; n++) {
        seen = 0;
        fail_at = n;
        scenario(n);
        long made = seen;
        fail_at = 0;
        if (made < n)
            break;
    }
    points += n - 1;
    fprintf(stderr, "   %s: %ld allocation points\n", name, n - 1);
}

#endif
