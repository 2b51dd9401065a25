/*
 * The operating-system primitives the library uses, behind one small
 * interface: the bottom layer, used by the core and by every other layer.
 * src/platform/linux.c implements it; a port adds one file beside it.
 *
 * Every function here leaves errno as it found it, so that library calls
 * never disturb the caller's errno, and none is a pthread cancellation
 * point unless it says so (the library never cancels threads, but its
 * callers may: a call of ours must not be where their thread unwinds).
 */
#ifndef CANCEL_PLATFORM_H
#define CANCEL_PLATFORM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CANCEL_HIDDEN __attribute__((visibility("hidden")))
#define cancel__likely(x) __builtin_expect(!!(x), 1)
#define cancel__unlikely(x) __builtin_expect(!!(x), 0)

/* Sleeps while *word == expected, until woken or until the absolute
 * CLOCK_MONOTONIC time abs_deadline_ns (-1: no deadline). Returns 0 (woken,
 * possibly spuriously), EAGAIN (*word != expected), EINTR or ETIMEDOUT. */
CANCEL_HIDDEN int cancel__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t abs_deadline_ns);
/* Wakes up to n threads sleeping on word. AS-safe. */
CANCEL_HIDDEN void cancel__futex_wake(_Atomic uint32_t *word, int n);

/* CLOCK_MONOTONIC in nanoseconds. AS-safe. */
CANCEL_HIDDEN int64_t cancel__clock_ns(void);

/* A descriptor that turns readable once signalled (EFD_CLOEXEC |
 * EFD_NONBLOCK); returns it or -errno. */
CANCEL_HIDDEN int cancel__eventfd_open(void);
/* Makes it readable. AS-safe. */
CANCEL_HIDDEN void cancel__eventfd_signal(int fd);
/* Closes a descriptor through the C library (so that sanitizers see it),
 * with pthread cancellation held off. Not AS-safe. */
CANCEL_HIDDEN void cancel__fd_close(int fd);

/* Starts a joinable thread with every signal blocked, named `name`. Returns
 * 0 or an errno; *out receives the thread. */
#include <pthread.h>
CANCEL_HIDDEN int cancel__thread_start(pthread_t *out, void *(*fn)(void *), void *arg, const char *name);

/* Joins a thread started by cancel__thread_start, waiting at most until
 * abs_deadline_ns (-1: forever). Returns 0 or ETIMEDOUT. */
CANCEL_HIDDEN int cancel__thread_join(pthread_t t, int64_t abs_deadline_ns);

/* The thread id (gettid) of the thread that holds `m`, 0 if it is
 * unlocked, or -1 where the C library does not record it. glibc records it
 * in every mutex it locks (pthread_mutex_t.__data.__owner), except when lock
 * elision is on, which leaves it 0; other C libraries return -1. One
 * atomic load, no system call, no lock: a snapshot that the owner may change
 * at any moment. Callers must cope with -1 and with 0 for a held mutex
 * (sync/cond.c falls back to bounded sleeps then). The C library writes the
 * field with plain stores, so reading it synchronizes with nothing: what
 * the releasing thread did before clearing it is visible to the reader only
 * where CANCEL__STORES_IN_ORDER says so. AS-safe. */
CANCEL_HIDDEN int cancel__mutex_owner(pthread_mutex_t *m);

/* 1 where every thread sees the stores of another in the order it made
 * them, locked read-modify-writes included (x86's total store order), so
 * that a load that sees a plain store also sees everything its writer did
 * before; 0 elsewhere (aarch64, POWER, RISC-V...). */
#if defined(__x86_64__) || defined(__i386__)
#define CANCEL__STORES_IN_ORDER 1
#else
#define CANCEL__STORES_IN_ORDER 0
#endif

/* A per-thread identity: the address of a thread-local object. */
CANCEL_HIDDEN const void *cancel__self(void);

/* Runs fn(arg) when the calling thread exits (not at process exit). While
 * such a call is pending, the library cannot be unmapped by dlclose. */
CANCEL_HIDDEN void cancel__thread_atexit(void (*fn)(void *), void *arg);

/* The library thread's descriptor multiplexer (epoll on Linux): made on
 * first use by whoever watches a descriptor. */
CANCEL_HIDDEN int cancel__poller_open(void);                       /* fd or -errno */
CANCEL_HIDDEN int cancel__poller_add(int poller, int fd, void *key); /* 0 or errno; readable/hang-up */
CANCEL_HIDDEN int cancel__poller_del(int poller, int fd);            /* 0 or errno */
/* Waits for one ready descriptor until abs_deadline_ns (-1: forever);
 * returns 1 with *key set, 0 on timeout or interruption. */
CANCEL_HIDDEN int cancel__poller_wait(int poller, int64_t abs_deadline_ns, void **key);

/*
 * Asymmetric fences for Dekker-style handshakes where one side is hot (it
 * runs on every lock release) and the other is rare (a thread about to sleep
 * on a contended lock). The hot side pays a compiler barrier when the kernel
 * offers an expedited process-wide barrier (membarrier), which the rare side
 * issues; otherwise both sides pay a full fence.
 */
extern CANCEL_HIDDEN _Atomic int cancel__membarrier_ready;
static inline void cancel__fence_light(void)
{
    if (cancel__likely(atomic_load_explicit(&cancel__membarrier_ready, memory_order_relaxed)))
        atomic_signal_fence(memory_order_seq_cst);
    else
        atomic_thread_fence(memory_order_seq_cst);
}
/* False if the process-wide barrier failed (then waits must not be unbounded). */
CANCEL_HIDDEN bool cancel__fence_heavy(void);
/* Registers for the expedited process-wide barrier, so that the light fence
 * becomes a compiler barrier. Idempotent; one system call the first time. */
CANCEL_HIDDEN void cancel__fence_setup(void);

static inline void cancel__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Saturating addition of nanosecond times. */
static inline int64_t cancel__add_sat(int64_t a, int64_t b)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return r;
}

/*
 * One accept or connect run through a per-thread io_uring ring (Linux), so
 * that a blocking socket waits without its O_NONBLOCK ever being switched,
 * and another thread can cancel the wait. A thread's ring is made on its
 * first prepare and kept until the thread exits; a fork child never uses a
 * ring it inherited (it makes its own). Use:
 *
 *     struct cancel__ring_op op;
 *     if (cancel__ring_prepare(&op, CANCEL__RING_ACCEPT, fd, addr, len, flags) == 0) {
 *         register cancel__ring_cancel(&op) as a callback on the token;
 *         long r = cancel__ring_run(&op);   // the only system call: io_uring_enter
 *         unregister (waits for a running callback);
 *     } else: no ring here; do without.
 *
 * The op lives on the caller's stack from prepare until run returned and
 * the callback can no longer run.
 */
enum cancel__ring_kind { CANCEL__RING_ACCEPT, CANCEL__RING_CONNECT };
struct cancel__ring;
struct cancel__ring_op {
    struct cancel__ring *ring;
    uint64_t id;   /* user_data of the operation's entry */
    int state;     /* under the ring's mutex; see linux.c */
    enum cancel__ring_kind kind;
    int fd;
    void *addr;    /* accept: struct sockaddr * out; connect: in */
    void *addrlen; /* accept: socklen_t *; connect: unused */
    unsigned len;  /* connect: the address's length */
    int flags;     /* accept4 flags */
    bool submitted; /* set by run: the operation reached the ring */
};
/* Prepares op on the calling thread's ring, making the ring first if need
 * be (io_uring_setup, two mmap and one empty io_uring_enter, once per
 * thread). Returns 0; or ENOSYS, EPERM, ENOMEM from the kernel (no ring in
 * this process: this is remembered, and later calls fail at once); EMFILE,
 * ENFILE, or ENOMEM for want of memory here (no ring now).
 * Leaves errno alone. Not AS-safe. */
CANCEL_HIDDEN int cancel__ring_prepare(struct cancel__ring_op *op, enum cancel__ring_kind kind, int fd,
                                       void *addr, void *addrlen, unsigned len, int flags);
/* Submits op and waits for its completion (EINTR retried): returns what the
 * system call would, as the result (>= 0) or -errno; -ECANCELED without
 * submitting anything (op->submitted stays false) if cancel__ring_cancel
 * came first. One system call
 * (io_uring_enter) when nothing else happens. Owner thread only, once per
 * prepare. Leaves errno alone. */
CANCEL_HIDDEN long cancel__ring_run(struct cancel__ring_op *op);
/* Asks for op's cancellation, from any thread, at any time between prepare
 * and run's return (a cancellation callback): before the submission, run
 * submits nothing; during the wait, the kernel cancels the operation, which
 * then completes with -ECANCELED unless it had completed already. At most
 * one system call. Leaves errno alone. */
CANCEL_HIDDEN void cancel__ring_cancel(struct cancel__ring_op *op);

#endif /* CANCEL_PLATFORM_H */
