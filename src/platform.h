/*
 * The operating-system primitives the library uses, behind one small
 * interface. src/platform/linux.c implements it; a port adds one file.
 */
#ifndef CANCEL_PLATFORM_H
#define CANCEL_PLATFORM_H

#include "internal.h"

/* Sleeps while *word == expected, until woken or until the absolute
 * CLOCK_MONOTONIC time abs_deadline_ns (-1: no deadline). Returns 0 (woken,
 * possibly spuriously), EAGAIN (*word != expected), EINTR or ETIMEDOUT.
 * Not a pthread cancellation point. Like every function here, it leaves
 * errno as it found it, so that library calls never disturb the caller's. */
CANCEL_HIDDEN int cancel__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t abs_deadline_ns);
/* Wakes up to n threads sleeping on word. AS-safe. */
CANCEL_HIDDEN void cancel__futex_wake(_Atomic uint32_t *word, int n);

/* CLOCK_MONOTONIC in nanoseconds. AS-safe. */
CANCEL_HIDDEN int64_t cancel__clock_ns(void);


/* A descriptor that turns readable once signalled; returns it or -errno. */
CANCEL_HIDDEN int cancel__eventfd_open(void);
/* Makes it readable. AS-safe, not a cancellation point. */
CANCEL_HIDDEN void cancel__eventfd_signal(int fd);
/* Closes a descriptor; not a cancellation point. */
CANCEL_HIDDEN void cancel__fd_close(int fd);

/* Starts a detached thread with every signal blocked. Returns 0 or an errno. */
CANCEL_HIDDEN int cancel__thread_start(void *(*fn)(void *), void *arg);

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

#endif /* CANCEL_PLATFORM_H */
