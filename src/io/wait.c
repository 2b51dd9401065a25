/*
 * Waiting for a descriptor OR a token OR a timeout.
 *
 * Locking and lifetime. Nothing here is shared between threads except the
 * token: its descriptor (cancel_token_fd) is one eventfd per source, made
 * once by the core and read-only for us, so any number of calls poll it at
 * once without registering anything. A waiting call holds a reference on the
 * caller's token (cancel_token_retain) from before it asks for the
 * descriptor until it stops polling: the core keeps the descriptor open while
 * a reference exists, so an owner that frees the source mid-wait never closes
 * a descriptor under our ppoll. That reference is the only write to memory
 * the token shares, and it is made only by calls that really wait.
 *
 * The descriptor turns readable on cancellation and also when the source is
 * freed uncancelled. In the second case the token can never be cancelled any
 * more, so the descriptor is dropped from the poll set for the rest of the
 * call: it would otherwise stay readable and make us spin.
 *
 * On the manual clock, a finite timeout is a child source carrying it as its
 * deadline (block.h), and we poll that child's descriptor instead: moving the
 * clock past the deadline cancels the child, which wakes us, and
 * cancel__until_check tells the timeout from the caller's cancellation.
 */
#include "wait.h"

#include <errno.h>
#include <poll.h>
#include <time.h>

int cancel__io_wait_begin(struct cancel__io_wait *w, cancel_token tok, int64_t timeout_ns)
{
    w->tfd = -1;
    w->held = false;
    int err = cancel__until_begin(&w->u, tok, timeout_ns);
    if (err)
        return err;
    cancel_token t = cancel__until_token(&w->u);
    if (timeout_ns == 0 || !cancel_token_can_be_canceled(t))
        return 0;
    cancel_token_retain(w->u.caller);
    w->held = true;
    int saved = errno;
    w->tfd = cancel_token_fd(t);
    if (w->tfd < 0) {
        err = errno;
        errno = saved;
        cancel__io_wait_end(w);
        return err;
    }
    return 0;
}

/* The shorter of the call's time left and the nap's, for ppoll. */
static struct timespec *time_left(const struct cancel__io_wait *w, int64_t nap_end, struct timespec *ts)
{
    struct timespec *t = cancel__until_timespec(&w->u, ts);
    if (nap_end < 0)
        return t;
    int64_t left = nap_end - cancel__clock_ns();
    if (left < 0)
        left = 0;
    if (t && (int64_t)t->tv_sec * 1000000000 + t->tv_nsec <= left)
        return t;
    ts->tv_sec = (time_t)(left / 1000000000);
    ts->tv_nsec = (long)(left % 1000000000);
    return ts;
}

int cancel__io_wait_ready(struct cancel__io_wait *w, int fd, short events, const char *what, int nap_ms)
{
    struct pollfd p[2];
    nfds_t n = 0;
    if (nap_ms == 0)
        p[n++] = (struct pollfd){fd, events, 0};
    nfds_t ti = n; /* the token's entry, when n > ti */
    if (w->tfd >= 0)
        p[n++] = (struct pollfd){w->tfd, POLLIN, 0};
    int64_t nap_end = nap_ms > 0 ? cancel__clock_ns() + (int64_t)nap_ms * 1000000 : -1;
    int saved = errno;
    int err;
    cancel__blocked_enter(what, fd);
    for (;;) {
        struct timespec ts;
        int r = ppoll(p, n, time_left(w, nap_end, &ts), NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        if (n > ti && p[ti].revents) {
            err = cancel__until_check(&w->u);
            if (err)
                break;
            /* Freed uncancelled: it can never mean cancellation now. */
            w->tfd = -1;
            n = ti;
        }
        if (nap_ms == 0 && p[0].revents) {
            err = 0;
            break;
        }
        if (r == 0) {
            err = cancel__until_check(&w->u);
            if (err)
                break;
            if (nap_end >= 0 && cancel__clock_ns() >= nap_end) {
                err = EAGAIN;
                break;
            }
        }
    }
    cancel__blocked_leave();
    errno = saved;
    return err;
}

void cancel__io_wait_end(struct cancel__io_wait *w)
{
    if (w->held) {
        cancel_token_release(w->u.caller);
        w->held = false;
    }
    cancel__until_end(&w->u);
}
