/*
 * Linux implementation of platform.h: futex, membarrier, eventfd, epoll,
 * the clock, thread identity, the library thread's creation, and the
 * per-thread io_uring rings of accept and connect (at the end; their
 * locking and lifetime are described there).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "platform.h"

#include <errno.h>
#include <linux/futex.h>
#include <linux/io_uring.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
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

/* ------------------------------------------------------------------------
 * Per-thread io_uring rings (cancel__ring_*), through the raw system calls.
 *
 * Locking and lifetime. A ring belongs to one thread (`owner`): made on its
 * first prepare, freed when it exits (cancel__thread_atexit). Its SQ has
 * two producers, the owner (the operation) and whichever thread runs the
 * cancellation callback (an IORING_OP_ASYNC_CANCEL entry): `mu` is held
 * around writing an entry and advancing the tail, and around every change
 * of an op's state, never across a system call. Each producer then calls
 * io_uring_enter with to_submit = 1; the kernel submits the oldest entries
 * first and never more than are there, so whichever enter runs first
 * submits the operation, and every entry pushed is submitted by some enter
 * before the owner's run returns (the canceller's enter is part of its
 * callback, which the caller's cancel_unregister waits for). At most two
 * entries are ever pending (the operation and one cancel), of RING_ENTRIES.
 * Only the owner reaps the CQ. Every operation has a fresh user_data (a
 * per-ring count, owner only) and cancel entries carry RING_CANCEL_TAG, so
 * their completions, and any that arrive after their operation ended, are
 * skipped.
 *
 * A fork child shares its parent's rings with the parent (the same kernel
 * instance): it must never use one. `rings` lists every ring of the process
 * under `rings_mu`; the fork handler holds rings_mu across fork, and the
 * child unmaps, closes and forgets them all, the forking thread's too.
 *
 * `ring_broken`: once making a ring failed in a way that will not change
 * (no io_uring, refused by seccomp or kernel.io_uring_disabled, memlock
 * limits), the errno, so that later calls do not try again.
 * ------------------------------------------------------------------------ */

#define RING_ENTRIES 4
#define RING_CANCEL_TAG ((uint64_t)1 << 63)

enum { OP_READY, OP_PUSHED, OP_CANCELLED, OP_DONE }; /* cancel__ring_op.state */

struct cancel__ring {
    int fd;
    pthread_mutex_t mu;
    uint64_t last_id; /* owner only */
    void *map;        /* SQ and CQ rings (IORING_FEAT_SINGLE_MMAP) */
    size_t map_len;
    struct io_uring_sqe *sqes;
    _Atomic unsigned *sq_tail, *cq_head, *cq_tail;
    unsigned sq_mask, cq_mask;
    struct io_uring_cqe *cqes;
    struct cancel__ring *next, **prevp; /* in `rings`, under rings_mu */
};

static pthread_mutex_t rings_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cancel__ring *rings;
static _Thread_local struct cancel__ring *my_ring;
static _Thread_local bool my_ring_exit; /* ring_exit registered for this thread */
static _Atomic int ring_broken;
static pthread_once_t rings_once = PTHREAD_ONCE_INIT;

static void ring_unmap(struct cancel__ring *r)
{
    munmap(r->sqes, RING_ENTRIES * sizeof *r->sqes);
    munmap(r->map, r->map_len);
    cancel__fd_close(r->fd);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static void rings_lock(void)
{
    pthread_mutex_lock(&rings_mu);
}
static void rings_unlock(void)
{
    pthread_mutex_unlock(&rings_mu);
}
static void rings_child(void)
{
    /* The parent's rings, this thread's among them: the parent may still
     * use them, so the child only lets go of its references. */
    while (rings) {
        struct cancel__ring *r = rings;
        rings = r->next;
        ring_unmap(r);
    }
    my_ring = NULL;
    pthread_mutex_unlock(&rings_mu);
}
static void rings_setup(void)
{
    pthread_atfork(rings_lock, rings_unlock, rings_child);
}

static void ring_exit(void *unused)
{
    (void)unused;
    struct cancel__ring *r = my_ring;
    if (!r)
        return;
    my_ring = NULL;
    pthread_mutex_lock(&rings_mu);
    *r->prevp = r->next;
    if (r->next)
        r->next->prevp = r->prevp;
    pthread_mutex_unlock(&rings_mu);
    ring_unmap(r);
}

/* Makes the calling thread's ring: 0 or an errno. */
static int ring_new(void)
{
#ifndef __NR_io_uring_setup
    return ENOSYS;
#else
    struct cancel__ring *r = calloc(1, sizeof *r);
    if (!r)
        return EAGAIN; /* not for good */
    struct io_uring_params p = {0};
    /* The descriptor is always close-on-exec. */
    int fd = (int)syscall(__NR_io_uring_setup, RING_ENTRIES, &p);
    if (fd < 0) {
        int err = errno;
        free(r);
        return err;
    }
    int err = 0;
    /* Single mmap (5.4) and fast poll (5.7): accept and connect wait on the
     * socket's wait queue rather than in a kernel worker, and exist. */
    if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_FAST_POLL)) {
        err = ENOSYS;
        goto fail;
    }
    /* A filter may allow the ring but refuse entering it: find out now,
     * not with an operation of the caller's in the queue. */
    if (syscall(__NR_io_uring_enter, fd, 0, 0, 0, NULL, 0) < 0) {
        err = errno == EINTR ? EAGAIN : errno;
        goto fail;
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    r->map_len = sq_len > cq_len ? sq_len : cq_len;
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (r->map == MAP_FAILED) {
        err = ENOMEM;
        goto fail;
    }
    r->sqes = mmap(NULL, RING_ENTRIES * sizeof *r->sqes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        munmap(r->map, r->map_len);
        err = ENOMEM;
        goto fail;
    }
    char *m = r->map;
    r->sq_tail = (_Atomic unsigned *)(m + p.sq_off.tail);
    r->sq_mask = *(unsigned *)(m + p.sq_off.ring_mask);
    unsigned *array = (unsigned *)(m + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++)
        array[i] = i; /* entry i is always slot i */
    r->cq_head = (_Atomic unsigned *)(m + p.cq_off.head);
    r->cq_tail = (_Atomic unsigned *)(m + p.cq_off.tail);
    r->cq_mask = *(unsigned *)(m + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(m + p.cq_off.cqes);
    r->fd = fd;
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_lock(&rings_mu);
    r->next = rings;
    r->prevp = &rings;
    if (rings)
        rings->prevp = &r->next;
    rings = r;
    pthread_mutex_unlock(&rings_mu);
    my_ring = r;
    if (!my_ring_exit) {
        my_ring_exit = true;
        cancel__thread_atexit(ring_exit, NULL);
    }
    return 0;
fail:
    cancel__fd_close(fd);
    free(r);
    return err;
#endif
}

int cancel__ring_prepare(struct cancel__ring_op *op, enum cancel__ring_kind kind, int fd, void *addr,
                         void *addrlen, unsigned len, int flags)
{
    /* relaxed: a hint about the kernel; it publishes nothing else. */
    int err = atomic_load_explicit(&ring_broken, memory_order_relaxed);
    if (err)
        return err;
    if (!my_ring) {
        int saved = errno;
        pthread_once(&rings_once, rings_setup);
        err = ring_new();
        errno = saved;
        if (err == EMFILE || err == ENFILE || err == EAGAIN)
            return err == EAGAIN ? ENOMEM : err;
        if (err) {
            atomic_store_explicit(&ring_broken, err, memory_order_relaxed); /* see the load */
            return err;
        }
    }
    struct cancel__ring *r = my_ring;
    *op = (struct cancel__ring_op){.ring = r, .id = ++r->last_id, .state = OP_READY, .kind = kind,
                                   .fd = fd, .addr = addr, .addrlen = addrlen, .len = len, .flags = flags};
    return 0;
}

/* Writes one entry and publishes it; under r->mu. */
static void ring_push(struct cancel__ring *r, const struct io_uring_sqe *e)
{
    /* relaxed: only producers write the tail, under mu, which orders them. */
    unsigned tail = atomic_load_explicit(r->sq_tail, memory_order_relaxed);
    r->sqes[tail & r->sq_mask] = *e;
    /* release: pairs with the kernel's acquire load of the tail: the entry
     * is written before the kernel can see it. */
    atomic_store_explicit(r->sq_tail, tail + 1, memory_order_release);
}

/* 100 us without being a pthread cancellation point (nanosleep is one): the
 * canceller naps inside a cancellation callback, the owner with its
 * operation pushed and its callback registered, where unwinding must not
 * start. */
static void ring_nap(void)
{
    _Atomic uint32_t never = 0;
    int64_t until = cancel__clock_ns() + 100 * 1000;
    while (cancel__futex_wait(&never, 0, until) != ETIMEDOUT) {
    }
}

static long ring_enter(int fd, unsigned submit, unsigned wait)
{
    long n = syscall(__NR_io_uring_enter, fd, submit, wait, wait ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
    return n < 0 ? -errno : n;
}

void cancel__ring_cancel(struct cancel__ring_op *op)
{
    struct cancel__ring *r = op->ring;
    bool pushed = false;
    pthread_mutex_lock(&r->mu);
    if (op->state == OP_READY) {
        op->state = OP_CANCELLED; /* run will not submit */
    } else if (op->state == OP_PUSHED) {
        struct io_uring_sqe e = {.opcode = IORING_OP_ASYNC_CANCEL, .fd = -1, .addr = op->id,
                                 .user_data = op->id | RING_CANCEL_TAG};
        ring_push(r, &e);
        op->state = OP_CANCELLED;
        pushed = true;
    }
    pthread_mutex_unlock(&r->mu);
    if (pushed) {
        int saved = errno;
        long n;
        /* Without memory for the request (EAGAIN, ENOMEM) the cancel would
         * be lost and the owner sleep on: nap and try again. */
        while ((n = ring_enter(r->fd, 1, 0)) == -EINTR || n == -EAGAIN || n == -ENOMEM || n == -EBUSY) {
            if (n != -EINTR)
                ring_nap();
        }
        errno = saved;
    }
}

/* Takes every completion there is; true with *res once op's is among them. */
static bool ring_reap(struct cancel__ring *r, uint64_t id, long *res)
{
    bool found = false;
    /* relaxed: the owner is the head's only writer. */
    unsigned head = atomic_load_explicit(r->cq_head, memory_order_relaxed);
    /* acquire: pairs with the kernel's release store of the tail: the
     * entries below it are written. */
    unsigned tail = atomic_load_explicit(r->cq_tail, memory_order_acquire);
    if (head == tail)
        return false;
    for (; head != tail; head++) {
        const struct io_uring_cqe *c = &r->cqes[head & r->cq_mask];
        if (c->user_data == id) {
            *res = c->res;
            found = true;
        }
    }
    /* release: pairs with the kernel's acquire load of the head: our reads
     * of the entries are done before it may write them again. */
    atomic_store_explicit(r->cq_head, head, memory_order_release);
    return found;
}

long cancel__ring_run(struct cancel__ring_op *op)
{
    struct cancel__ring *r = op->ring;
    struct io_uring_sqe e = {.fd = op->fd, .user_data = op->id};
    if (op->kind == CANCEL__RING_ACCEPT) {
        e.opcode = IORING_OP_ACCEPT;
        e.addr = (uintptr_t)op->addr;
        e.addr2 = (uintptr_t)op->addrlen;
        e.accept_flags = (uint32_t)op->flags;
    } else {
        e.opcode = IORING_OP_CONNECT;
        e.addr = (uintptr_t)op->addr;
        e.off = op->len;
    }
    pthread_mutex_lock(&r->mu);
    bool cancelled = op->state == OP_CANCELLED;
    if (!cancelled) {
        ring_push(r, &e);
        op->state = OP_PUSHED;
        op->submitted = true; /* owner only: no other thread reads it */
    }
    pthread_mutex_unlock(&r->mu);
    if (cancelled)
        return -ECANCELED;
    int saved = errno;
    long res = 0;
    for (;;) {
        /* to_submit 1: the kernel submits what is there, oldest first, at
         * most one: ours, unless a canceller's enter took it, then the
         * cancel behind it (which its own enter would submit otherwise). */
        long n = ring_enter(r->fd, 1, 1);
        if (ring_reap(r, op->id, &res))
            break;
        if (n < 0 && n != -EINTR) {
            /* Without memory for the request (EAGAIN), or an error that
             * cannot happen on a ring made here: the operation may hold the
             * caller's memory, so wait for it rather than return; never
             * spin. */
            ring_nap();
        }
    }
    pthread_mutex_lock(&r->mu);
    op->state = OP_DONE; /* a later callback has nothing to cancel */
    pthread_mutex_unlock(&r->mu);
    errno = saved;
    return res;
}
