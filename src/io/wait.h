/*
 * The wait every call of <cancel/io.h> shares: a descriptor's readiness OR
 * the token OR the timeout, with ppoll(2). See wait.c.
 */
#ifndef CANCEL_IO_WAIT_H
#define CANCEL_IO_WAIT_H

#include "block/block.h"

#include <stdbool.h>

struct cancel__io_wait {
    struct cancel__until u;
    int tfd;   /* the token's descriptor, -1 when there is none to watch */
    bool held; /* a reference on u.caller is held */
};

/* Starts a call that may wait: the timeout (cancel__until_begin), then the
 * token's descriptor and a reference on the caller's token, so that the
 * descriptor stays open even if the owner frees the source meanwhile.
 * Returns 0, ECANCELED, EINVAL, ENOMEM, or the error of cancel_token_fd
 * (EMFILE, ENFILE); nothing is left on failure. A timeout of 0 takes no
 * descriptor. */
CANCEL_HIDDEN int cancel__io_wait_begin(struct cancel__io_wait *w, cancel_token tok, int64_t timeout_ns);

/* Waits until `fd` polls with any of `events` (or an error or hang-up), the
 * token is cancelled (ECANCELED), or the timeout passed (ETIMEDOUT). With
 * nap_ms > 0 it ignores `fd` and returns EAGAIN after nap_ms of real time
 * unless the token or the timeout ends it first. Returns 0 when `fd` is
 * ready, or an error of ppoll. EINTR is retried; the blocked-in word names
 * `what` and `fd` meanwhile. */
CANCEL_HIDDEN int cancel__io_wait_ready(struct cancel__io_wait *w, int fd, short events, const char *what,
                                        int nap_ms);

CANCEL_HIDDEN void cancel__io_wait_end(struct cancel__io_wait *w);

#endif
