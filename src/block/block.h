/*
 * What every blocking call of the layers above the core shares (block.c):
 *
 *  - its end: the caller's token and timeout, turned into what to wait on.
 *    On the real clock that is the caller's token and an absolute
 *    CLOCK_MONOTONIC deadline for the kernel; on the manual clock
 *    (cancel_clock_use_manual) the kernel cannot keep the deadline, so the
 *    call waits on a child of the caller's token that carries the timeout
 *    as its own deadline instead, and no kernel deadline. The call then
 *    waits for its own condition OR the token returned by
 *    cancel__until_token() OR the kernel deadline, and asks
 *    cancel__until_check() why it woke.
 *
 *  - the thread's "blocked in" word: what a thread is blocked in right now
 *    (cancel_io_read on fd 7, cancel_sleep...), written by every blocking
 *    call while it blocks and read by the task layer's reports. This is the
 *    one internal hook between layers (docs/design.md); everything else goes
 *    through the public headers.
 *
 * Uses the core only through <cancel.h>.
 */
#ifndef CANCEL_BLOCK_H
#define CANCEL_BLOCK_H

#include "cancel.h"
#include "platform/platform.h"

struct cancel__until {
    cancel_token caller; /* the caller's token */
    cancel_token tok;    /* what to wait on: `caller`, or `timer`'s token */
    cancel_source *timer; /* manual clock, finite timeout: a child of `caller` */
    int64_t deadline;    /* absolute, on cancel_now()'s clock; CANCEL_INFINITE for none */
    int64_t kernel_deadline; /* absolute CLOCK_MONOTONIC for the kernel, -1 for none */
};

/* Starts a blocking call. Returns 0; ECANCELED if `tok` is already
 * cancelled (checked first, before the timeout); EINVAL for a negative
 * timeout other than CANCEL_INFINITE; ENOMEM (manual clock only). A timeout
 * of 0 is "try once": cancel__until_check then reports ETIMEDOUT at once. */
CANCEL_HIDDEN int cancel__until_begin(struct cancel__until *u, cancel_token tok, int64_t timeout_ns);
/* Why the wait should end now: ECANCELED (the caller's token is cancelled:
 * it wins over the timeout), ETIMEDOUT, or 0 (neither: wait again). */
CANCEL_HIDDEN int cancel__until_check(const struct cancel__until *u);
/* The token to wait on (registrations, descriptors). */
static inline cancel_token cancel__until_token(const struct cancel__until *u)
{
    return u->tok;
}
/* The absolute CLOCK_MONOTONIC deadline for a kernel wait (futex, condvar),
 * -1 for none. Read it for each wait, never keep it: it turns to -1 when the
 * manual clock is switched on during the call (the kernel cannot keep such
 * a deadline; the call then waits for its other conditions). */
CANCEL_HIDDEN int64_t cancel__until_kernel_deadline(const struct cancel__until *u);
/* The time left for ppoll(2) and the like in *ts; NULL for none. */
struct timespec;
CANCEL_HIDDEN struct timespec *cancel__until_timespec(const struct cancel__until *u, struct timespec *ts);
/* Ends the call; nothing is left behind. */
CANCEL_HIDDEN void cancel__until_end(struct cancel__until *u);

/* The blocked-in word of the calling thread. `what` is a static string
 * naming the call ("cancel_io_read"), `fd` a descriptor or -1. Writers are
 * the blocking calls, on their own thread; readers are other threads
 * (task reports), through the address cancel__blocked_here() gave them. */
struct cancel__blocked {
    const char *_Atomic what; /* NULL while not blocked in a library call */
    _Atomic int fd;
};
CANCEL_HIDDEN struct cancel__blocked *cancel__blocked_here(void);
static inline void cancel__blocked_enter(const char *what, int fd)
{
    struct cancel__blocked *b = cancel__blocked_here();
    /* release: a reader whose acquire load of `what` reads it sees this fd
     * (or a later call's); a report is a snapshot, nothing else hangs on it. */
    atomic_store_explicit(&b->fd, fd, memory_order_relaxed);
    atomic_store_explicit(&b->what, what, memory_order_release);
}
static inline void cancel__blocked_leave(void)
{
    atomic_store_explicit(&cancel__blocked_here()->what, NULL, memory_order_relaxed);
}

#endif
