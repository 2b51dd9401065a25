/*
 * cancel_io_poll and cancel_sleep.
 *
 * Locking and lifetime: nothing shared but the token (see wait.c for its
 * descriptor and the reference held while waiting). cancel_io_poll copies
 * the caller's array with the token's descriptor appended, on the stack up to
 * 15 entries, from the heap beyond; the copy never outlives the call.
 * cancel_sleep waits on the token's futex (cancel_token_wait), which needs no
 * descriptor, and holds nothing of its own.
 */
#include "wait.h"

#include "cancel/io.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define POLL_STACK 16

int cancel_io_poll(cancel_token tok, struct pollfd *fds, nfds_t nfds, int64_t timeout_ns)
{
    if (cancel_token_is_requested(tok)) {
        errno = ECANCELED;
        return -1;
    }
    if (nfds > 0 && !fds) {
        errno = EFAULT;
        return -1;
    }
    int saved = errno;
    struct cancel__io_wait w;
    int err = cancel__io_wait_begin(&w, tok, timeout_ns);
    if (err) {
        errno = err;
        return -1;
    }
    int result = -1;
    if (timeout_ns == 0) {
        while ((result = poll(fds, nfds, 0)) < 0 && errno == EINTR) {
        }
        err = result < 0 ? errno : 0;
        goto out;
    }
    struct pollfd stack[POLL_STACK], *p = stack;
    if (nfds >= POLL_STACK) {
        p = nfds < ((size_t)-1) / sizeof *p - 1 ? malloc((nfds + 1) * sizeof *p) : NULL;
        if (!p) {
            err = ENOMEM;
            goto out;
        }
    }
    if (nfds)
        memcpy(p, fds, nfds * sizeof *p);
    nfds_t n = nfds;
    if (w.tfd >= 0)
        p[n++] = (struct pollfd){w.tfd, POLLIN, 0};
    cancel__blocked_enter("cancel_io_poll", nfds == 1 ? fds[0].fd : -1);
    for (;;) {
        struct timespec ts;
        int r = ppoll(p, n, cancel__until_timespec(&w.u, &ts), NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        if (n > nfds && p[nfds].revents) {
            r--;
            err = cancel__until_check(&w.u);
            if (err == ECANCELED)
                break;
            if (err == ETIMEDOUT) {
                err = 0;
                result = r;
                break;
            }
            /* The source was freed uncancelled: stop watching it. */
            n = nfds;
        }
        if (r > 0) {
            result = r;
            break;
        }
        if (r == 0) {
            err = cancel__until_check(&w.u);
            if (err == ETIMEDOUT) {
                err = 0;
                result = 0;
                break;
            }
            if (err)
                break;
        }
    }
    cancel__blocked_leave();
    for (nfds_t i = 0; i < nfds; i++)
        fds[i].revents = err ? 0 : p[i].revents;
    if (p != stack)
        free(p);
out:
    cancel__io_wait_end(&w);
    if (err) {
        errno = err;
        return -1;
    }
    errno = saved;
    return result;
}

/* A sleep until `deadline` on the manual clock: on a private child of tok
 * (a source of its own for a token that cannot be cancelled) whose deadline
 * is exactly `deadline`. It is armed with the time left and armed again
 * while the clock moved between our reading and the arming: another thread
 * moves this clock, and a relative timeout read before its move would land
 * late, so that the sleep outlasted its end. A free of tok's source only
 * unhooks the child, so the rest is slept on. Without memory for the child,
 * nap on the real clock and look again: returning would end the sleep
 * early. Returns 0 or ECANCELED. */
static int manual_sleep(cancel_token tok, int64_t deadline)
{
    for (;;) {
        if (cancel_token_is_requested(tok))
            return ECANCELED;
        int64_t now = cancel_now();
        if (now >= deadline)
            return 0;
        cancel_source *t = cancel_source_new_child(tok, deadline - now, NULL);
        if (!t) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
            continue;
        }
        bool wait = true, nap = false;
        for (int64_t seen = now;;) {
            int64_t after = cancel_now();
            if (after >= deadline) {
                wait = false; /* passed: t may be armed later, do not wait for it */
                break;
            }
            if (after == seen)
                break; /* nobody moved the clock around the arming: armed at `deadline` */
            int err = cancel_source_cancel_after(t, deadline - after);
            if (err == ENOMEM || err == EAGAIN) {
                wait = false; /* armed late: drop it, nap, start again */
                nap = true;
                break;
            }
            seen = after; /* or ECANCELED: t is cancelled, the wait returns */
        }
        if (wait)
            (void)cancel_token_wait(cancel_source_token(t), CANCEL_INFINITE);
        cancel_source_free(t);
        if (nap) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

/* Sleeps until `deadline` on cancel_now()'s clock, with nothing to cancel
 * it: the token cannot be cancelled (any more). */
static void sleep_until(int64_t deadline)
{
    if (deadline != CANCEL_INFINITE && cancel_clock_is_manual()) {
        (void)manual_sleep(CANCEL_TOKEN_NONE, deadline);
        return;
    }
    if (deadline == CANCEL_INFINITE) {
        for (;;)
            pause();
    }
    struct timespec ts = {(time_t)(deadline / 1000000000), (long)(deadline % 1000000000)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
    }
}

int cancel_sleep(cancel_token tok, int64_t ns)
{
    if (cancel_token_is_requested(tok))
        return ECANCELED;
    if (ns < 0 && ns != CANCEL_INFINITE)
        return EINVAL;
    if (ns == 0)
        return 0;
    int saved = errno;
    int64_t deadline = ns == CANCEL_INFINITE ? CANCEL_INFINITE : cancel__add_sat(cancel_now(), ns);
    int err = 0;
    cancel__blocked_enter("cancel_sleep", -1);
    if (deadline != CANCEL_INFINITE && cancel_clock_is_manual()) {
        err = manual_sleep(tok, deadline);
        goto out;
    }
    for (;;) {
        if (!cancel_token_can_be_canceled(tok)) {
            /* CANCEL_TOKEN_NONE, or its source was freed uncancelled:
             * sleep the rest. */
            if (deadline == CANCEL_INFINITE || cancel_now() < deadline)
                sleep_until(deadline);
            break;
        }
        int64_t left = deadline == CANCEL_INFINITE ? CANCEL_INFINITE : deadline - cancel_now();
        if (left != CANCEL_INFINITE && left <= 0)
            break;
        if (cancel_token_wait(tok, left)) {
            err = ECANCELED;
            break;
        }
    }
out:
    cancel__blocked_leave();
    errno = saved;
    return err;
}
