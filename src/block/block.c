/*
 * What every blocking call shares: its end (token and timeout) and the
 * thread's blocked-in word. See block.h.
 */
#include "block.h"

#include <limits.h>
#include <time.h>

int cancel__until_begin(struct cancel__until *u, cancel_token tok, int64_t timeout_ns)
{
    u->caller = tok;
    u->tok = tok;
    u->timer = NULL;
    u->deadline = CANCEL_INFINITE;
    u->kernel_deadline = -1;
    if (cancel_token_is_requested(tok))
        return ECANCELED;
    if (timeout_ns < 0 && timeout_ns != CANCEL_INFINITE)
        return EINVAL;
    if (timeout_ns == CANCEL_INFINITE)
        return 0;
    u->deadline = cancel__add_sat(cancel_now(), timeout_ns);
    if (timeout_ns == 0)
        return 0; /* try once: check reports ETIMEDOUT */
    if (!cancel_clock_is_manual()) {
        u->kernel_deadline = u->deadline;
        return 0;
    }
    /* The manual clock: the timeout becomes a deadline the clock fires. */
    u->timer = cancel_source_new_child(tok, timeout_ns, NULL);
    if (!u->timer)
        return errno == EINVAL ? EINVAL : ENOMEM;
    u->tok = cancel_source_token(u->timer);
    return 0;
}

int cancel__until_check(const struct cancel__until *u)
{
    if (cancel_token_is_requested(u->caller))
        return ECANCELED;
    if (u->timer) {
        if (!cancel_token_is_requested(u->tok))
            return 0;
        /* The timer is the caller's child: a cancellation of the caller
         * between our two looks reached it too, and wins. */
        return cancel_token_is_requested(u->caller) ? ECANCELED : ETIMEDOUT;
    }
    if (u->deadline != CANCEL_INFINITE && cancel_now() >= u->deadline)
        return ETIMEDOUT;
    return 0;
}

/* A call begun on the real clock, with the manual clock switched on since:
 * its deadline is the manual clock's to decide now, and the kernel cannot
 * keep it; so it waits for its other conditions (and, documented, for no
 * timeout) rather than spin on a kernel deadline already past. */
static bool kernel_deadline_void(const struct cancel__until *u)
{
    return u->kernel_deadline >= 0 && cancel_clock_is_manual();
}

int64_t cancel__until_kernel_deadline(const struct cancel__until *u)
{
    return kernel_deadline_void(u) ? -1 : u->kernel_deadline;
}

struct timespec *cancel__until_timespec(const struct cancel__until *u, struct timespec *ts)
{
    if ((u->kernel_deadline < 0 && (u->deadline == CANCEL_INFINITE || u->timer)) || kernel_deadline_void(u))
        return NULL;
    int64_t left = u->kernel_deadline < 0 ? 0 : u->kernel_deadline - cancel__clock_ns();
    if (left < 0)
        left = 0;
    ts->tv_sec = (time_t)(left / 1000000000);
    ts->tv_nsec = (long)(left % 1000000000);
    return ts;
}

void cancel__until_end(struct cancel__until *u)
{
    if (u->timer) {
        cancel_source_free(u->timer);
        u->timer = NULL;
    }
}

static _Thread_local struct cancel__blocked blocked;

struct cancel__blocked *cancel__blocked_here(void)
{
    return &blocked;
}
