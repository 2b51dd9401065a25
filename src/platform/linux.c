/*
 * Linux implementation of platform.h: futex, membarrier, eventfd, epoll,
 * the clock, thread identity and the library thread's creation.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "platform.h"

#include <errno.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int cancel__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t abs_deadline_ns)
{
    struct timespec ts, *tsp = NULL;
    if (abs_deadline_ns >= 0) {
        ts.tv_sec = (time_t)(abs_deadline_ns / 1000000000);
        ts.tv_nsec = (long)(abs_deadline_ns % 1000000000);
        tsp = &ts;
    }
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, so a retry
     * after EINTR never stretches the deadline. */
    int saved = errno;
    long r = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected, tsp,
                     NULL, FUTEX_BITSET_MATCH_ANY);
    int e = r == 0 ? 0 : errno == EAGAIN || errno == ETIMEDOUT ? errno : EINTR;
    errno = saved;
    return e;
}

void cancel__futex_wake(_Atomic uint32_t *word, int n)
{
    int saved = errno;
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0);
    errno = saved;
}

int64_t cancel__clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int cancel__eventfd_open(void)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd >= 0 ? fd : -errno;
}

void cancel__eventfd_signal(int fd)
{
    int saved = errno;
    uint64_t one = 1;
    /* The counter cannot overflow: it is written at most twice per source.
     * A raw system call: AS-safe, and not a pthread cancellation point
     * (write(2) is one), so that a cancel never unwinds a thread from the
     * middle of a cancellation. */
    (void)syscall(SYS_write, fd, &one, sizeof one);
    errno = saved;
}

void cancel__fd_close(int fd)
{
    /* Through the C library, so that sanitizers see the descriptor go (a
     * number reused afterwards is no race to them), with pthread
     * cancellation held off: close(2) is a cancellation point. */
    int saved = errno, old;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    close(fd);
    pthread_setcancelstate(old, NULL);
    errno = saved;
}

int cancel__thread_start(pthread_t *out, void *(*fn)(void *), void *arg, const char *name)
{
    sigset_t all, old;
    /* The thread inherits this mask: user signal handlers never run on it. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(out, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err == 0)
        pthread_setname_np(*out, name);
    return err;
}

int cancel__thread_join(pthread_t t, int64_t abs_deadline_ns)
{
    int saved = errno;
    int err;
    if (abs_deadline_ns < 0) {
        err = pthread_join(t, NULL);
    } else {
        /* pthread_timedjoin_np (CLOCK_REALTIME) rather than clockjoin: the
         * one sanitizers know. The deadline is converted through the time
         * left, so a jump of the real clock can only shift it. */
        int64_t left = abs_deadline_ns - cancel__clock_ns();
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        int64_t t_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec + (left > 0 ? left : 0);
        struct timespec ts = {(time_t)(t_ns / 1000000000), (long)(t_ns % 1000000000)};
        err = pthread_timedjoin_np(t, NULL, &ts);
    }
    errno = saved;
    return err == 0 ? 0 : ETIMEDOUT;
}

int cancel__mutex_owner(pthread_mutex_t *m)
{
#ifdef __GLIBC__
    /* glibc writes __owner with plain stores just after taking its lock
     * word and just before releasing it; reading it atomically makes the
     * read one load that cannot tear. It pairs with no release: the field
     * is cleared with a plain store. Acquire only keeps the caller's later
     * loads (a condvar broadcast's) after this one; whether the clearing
     * thread's earlier stores are visible is the hardware's to say
     * (CANCEL__STORES_IN_ORDER, and sync/cond.c). */
    return __atomic_load_n(&m->__data.__owner, __ATOMIC_ACQUIRE);
#else
    (void)m;
    return -1;
#endif
}

static _Thread_local char self_tag;
const void *cancel__self(void)
{
    return &self_tag;
}

/* glibc's hook for C++ thread_local destructors: it keeps the object that
 * registered (`__dso_handle`) loaded until the destructor has run. */
extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *arg, void *dso);
extern void *__dso_handle;

void cancel__thread_atexit(void (*fn)(void *), void *arg)
{
    (void)__cxa_thread_atexit_impl(fn, arg, &__dso_handle);
}

int cancel__poller_open(void)
{
    int saved = errno;
    int fd = epoll_create1(EPOLL_CLOEXEC);
    int r = fd >= 0 ? fd : -errno;
    errno = saved;
    return r;
}

int cancel__poller_add(int poller, int fd, void *key)
{
    int saved = errno;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = key};
    int r = epoll_ctl(poller, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : errno;
    errno = saved;
    return r;
}

int cancel__poller_del(int poller, int fd)
{
    int saved = errno;
    int r = epoll_ctl(poller, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : errno;
    errno = saved;
    return r;
}

int cancel__poller_wait(int poller, int64_t abs_deadline_ns, void **key)
{
    int saved = errno;
    struct timespec ts, *tsp = NULL;
    if (abs_deadline_ns >= 0) {
        int64_t left = abs_deadline_ns - cancel__clock_ns();
        if (left < 0)
            left = 0;
        ts.tv_sec = (time_t)(left / 1000000000);
        ts.tv_nsec = (long)(left % 1000000000);
        tsp = &ts;
    }
    struct epoll_event ev;
    /* epoll_pwait2 takes nanoseconds, so deadlines keep their precision;
     * kernels before 5.11 get milliseconds, rounded up (never early). */
    int n = epoll_pwait2(poller, &ev, 1, tsp, NULL);
    if (n < 0 && errno == ENOSYS) {
        int ms = !tsp ? -1 : ts.tv_sec >= 2000000 ? 2000000000 : (int)(ts.tv_sec * 1000 + (ts.tv_nsec + 999999) / 1000000);
        n = epoll_wait(poller, &ev, 1, ms);
    }
    errno = saved;
    if (n == 1) {
        *key = ev.data.ptr;
        return 1;
    }
    return 0;
}

_Atomic int cancel__membarrier_ready;
static pthread_once_t membarrier_once = PTHREAD_ONCE_INIT;

static void membarrier_register(void)
{
    long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (q > 0 && (q & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        atomic_store_explicit(&cancel__membarrier_ready, 1, memory_order_relaxed);
}

void cancel__fence_setup(void)
{
    int saved = errno;
    pthread_once(&membarrier_once, membarrier_register);
    errno = saved;
}

bool cancel__fence_heavy(void)
{
    int saved = errno;
    pthread_once(&membarrier_once, membarrier_register);
    /* Full fence for this thread in any case; then, if registered, force one
     * on every other running thread of the process, which is what lets their
     * cancel__fence_light() be a compiler barrier. Threads that read the flag
     * as 0 used a full fence themselves. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&cancel__membarrier_ready, memory_order_relaxed) &&
        syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
        /* Cannot happen once registered (the registration is inherited by
         * fork children too); should it, fall back to full fences for good
         * and tell the caller not to trust this round. */
        atomic_store_explicit(&cancel__membarrier_ready, 0, memory_order_relaxed);
        errno = saved;
        return false;
    }
    errno = saved;
    return true;
}
