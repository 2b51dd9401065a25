/*
 * Descriptor I/O that wakes on cancellation: read, write, recv, send,
 * accept, connect, and the all-or-EOF loops. The mechanism per descriptor
 * kind is documented in <cancel/io.h>; this file says why.
 *
 * Every transfer is "try without blocking, wait, try again" (wait.c). The
 * try must never block, since another thread may take the data between our
 * wake-up and our transfer (two readers, two acceptors), so it uses what the
 * kernel offers per call: MSG_DONTWAIT for recv/send, RWF_NOWAIT with
 * preadv2/pwritev2 for read/write (sockets, pipes, eventfd reads...). The
 * kernel answers EOPNOTSUPP for files that cannot honour RWF_NOWAIT (ttys,
 * FIFOs, eventfd writes), never blocking instead, and regular files are
 * always "ready", so a failed RWF_NOWAIT there is turned into a plain call.
 * accept and connect have no per-call flag at all.
 *
 * Locking and lifetime. The only lock is `flip_mu`, process-wide, for
 * descriptors with no per-call non-blocking transfer: under it a call reads
 * the file status flags, sets O_NONBLOCK if it was clear, makes the one
 * transfer system call, which cannot block, and restores the flags. Holding
 * it across the whole read-modify-restore keeps two of our calls on one open
 * file description (possibly under two descriptor numbers, so nothing
 * narrower than the process would do) from saving each other's temporary
 * flag as the original. Nothing that waits runs under it, and no user code.
 * pthread_atfork handlers hold it across fork, so a child never inherits it
 * taken. The per-thread hints below are thread-local: no sharing.
 *
 * The uncancelled path, data already there: one inline load of the token's
 * word, then the transfer: one system call, no write to any shared memory.
 */
#include "wait.h"

#include "cancel/io.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * One transfer attempt that does not block.
 * ------------------------------------------------------------------------ */

enum kind { K_READ, K_WRITE, K_RECV, K_SEND, K_ACCEPT, K_CONNECT };

enum mode {
    M_NOWAIT, /* RWF_NOWAIT (read/write) or MSG_DONTWAIT (recv/send) */
    M_FLIP,   /* the plain call, O_NONBLOCK set for its duration if it was clear */
    M_PLAIN,  /* the plain call: regular files and block devices */
};

struct xfer {
    enum kind kind;
    enum mode mode;
    int fd;
    void *buf;
    size_t len;
    int flags; /* recv/send flags; accept4 flags */
    struct sockaddr *addr;
    socklen_t *addrlen;
    const struct sockaddr *caddr; /* connect */
    socklen_t caddrlen;
};

static pthread_mutex_t flip_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t flip_once = PTHREAD_ONCE_INIT;

static void flip_lock(void)
{
    pthread_mutex_lock(&flip_mu);
}
static void flip_unlock(void)
{
    pthread_mutex_unlock(&flip_mu);
}
static void flip_setup(void)
{
    pthread_atfork(flip_lock, flip_unlock, flip_unlock);
}

/* The plain system call. */
static ssize_t plain(const struct xfer *x)
{
    switch (x->kind) {
    case K_READ:
        return read(x->fd, x->buf, x->len);
    case K_WRITE:
        return write(x->fd, x->buf, x->len);
    case K_RECV:
        return recv(x->fd, x->buf, x->len, x->flags);
    case K_SEND:
        return send(x->fd, x->buf, x->len, x->flags);
    case K_ACCEPT:
        return accept4(x->fd, x->addr, x->addrlen, x->flags);
    case K_CONNECT:
        return connect(x->fd, x->caddr, x->caddrlen);
    }
    errno = EINVAL;
    return -1;
}

/* The plain call with O_NONBLOCK set on the open file description for its
 * duration (unless it is set already); see the locking paragraph. */
static ssize_t flipped(const struct xfer *x)
{
    pthread_once(&flip_once, flip_setup);
    pthread_mutex_lock(&flip_mu);
    ssize_t r;
    int fl = fcntl(x->fd, F_GETFL);
    if (fl < 0) {
        r = -1;
    } else if (fl & O_NONBLOCK) {
        r = plain(x);
    } else if (fcntl(x->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        r = -1;
    } else {
        r = plain(x);
        int e = errno;
        /* Fails only if another thread closed the descriptor meanwhile. */
        (void)fcntl(x->fd, F_SETFL, fl);
        errno = e;
    }
    pthread_mutex_unlock(&flip_mu);
    return r;
}

static ssize_t try_once(const struct xfer *x)
{
    if (x->mode == M_FLIP)
        return flipped(x);
    if (x->mode == M_PLAIN)
        return plain(x);
    struct iovec v = {x->buf, x->len};
    switch (x->kind) {
    case K_READ:
        return preadv2(x->fd, &v, 1, -1, RWF_NOWAIT);
    case K_WRITE:
        return pwritev2(x->fd, &v, 1, -1, RWF_NOWAIT);
    case K_RECV:
        return recv(x->fd, x->buf, x->len, x->flags | MSG_DONTWAIT);
    case K_SEND:
        return send(x->fd, x->buf, x->len, x->flags | MSG_DONTWAIT);
    default:
        return flipped(x);
    }
}

/* ------------------------------------------------------------------------
 * Try, wait, try again.
 * ------------------------------------------------------------------------ */

/* Per thread and kind of call: the descriptor whose last such call from
 * this thread had to wait. The next one on it polls first, which saves the
 * failed try when traffic goes in turns (a request, then a wait for the
 * next). A call that fills its whole buffer clears it: more data is likely
 * waiting. A stale entry (the number closed and reused) costs one early
 * poll; its only visible effect is on a call that fails whatever the
 * readiness (a read of a descriptor opened for writing only: EBADF), which
 * then fails once the descriptor polls ready rather than at once. */
static _Thread_local int hints[K_CONNECT] = {-1, -1, -1, -1, -1};

/* Returns the count or -1 with errno. `once`: the caller's MSG_DONTWAIT. */
static ssize_t run(cancel_token tok, struct xfer *x, const char *what, bool once)
{
    bool in = x->kind == K_READ || x->kind == K_RECV || x->kind == K_ACCEPT;
    int *hint = &hints[x->kind];
    short events = in ? POLLIN : POLLOUT;
    struct cancel__io_wait w;
    bool waiting = false; /* w was begun */
    bool ready = false;   /* the last wait reported the descriptor ready */
    bool typed = false;   /* fstat was asked already */
    int idle = 0;         /* transfers that found nothing right after "ready" */
    int err = 0;
    ssize_t r = -1;

    if (!once && x->fd >= 0 && *hint == x->fd) {
        /* Poll first; if the wait cannot begin (no descriptor for the
         * token), try: a call that need not wait needs none. */
        *hint = -1;
        if (cancel__io_wait_begin(&w, tok, CANCEL_INFINITE) == 0) {
            waiting = true;
            *hint = x->fd;
            err = cancel__io_wait_ready(&w, x->fd, events, what, 0);
            if (err)
                goto out;
            ready = true;
        }
    }
    for (;;) {
        if (cancel_token_is_requested(tok)) {
            err = ECANCELED;
            break;
        }
        r = try_once(x);
        if (r >= 0)
            break;
        err = errno;
        if (err == EINTR)
            continue;
        if (err == EOPNOTSUPP && x->mode == M_NOWAIT && (x->kind == K_READ || x->kind == K_WRITE)) {
            x->mode = M_FLIP; /* no RWF_NOWAIT for this kind of file */
            continue;
        }
        if ((err != EAGAIN && err != EWOULDBLOCK) || once)
            break;
        int nap = 0;
        if (ready) {
            /* Ready, yet nothing to transfer. A regular file is always ready
             * and RWF_NOWAIT fails when it must wait for the disk: make the
             * plain call. Otherwise another thread took the data (try
             * again), or the kernel's readiness is coarser than the call
             * (an eventfd write of more than the room left): after a few,
             * nap instead of spinning. */
            struct stat st;
            if (!typed && x->mode == M_NOWAIT && (x->kind == K_READ || x->kind == K_WRITE)) {
                typed = true;
                if (fstat(x->fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
                    x->mode = M_PLAIN;
                    continue;
                }
            }
            if (++idle >= 3)
                nap = idle - 3 >= 6 ? 64 : 1 << (idle - 3);
        }
        if (!waiting) {
            err = cancel__io_wait_begin(&w, tok, CANCEL_INFINITE);
            if (err)
                break;
            waiting = true;
        }
        *hint = x->fd;
        err = cancel__io_wait_ready(&w, x->fd, events, what, nap);
        if (err == EAGAIN) {
            ready = false;
            continue;
        }
        if (err)
            break;
        ready = true;
    }
out:
    if (waiting)
        cancel__io_wait_end(&w);
    if (r >= 0) {
        if ((size_t)r == x->len && *hint == x->fd)
            *hint = -1;
        return r;
    }
    errno = err;
    return -1;
}

/* ------------------------------------------------------------------------
 * The calls.
 * ------------------------------------------------------------------------ */

static ssize_t fail(int err)
{
    errno = err;
    return -1;
}

ssize_t cancel_io_read(cancel_token tok, int fd, void *buf, size_t len)
{
    if (cancel_token_is_requested(tok))
        return fail(ECANCELED);
    if (len == 0)
        return 0;
    if (!buf)
        return fail(EFAULT);
    int saved = errno;
    struct xfer x = {.kind = K_READ, .mode = M_NOWAIT, .fd = fd, .buf = buf, .len = len};
    ssize_t r = run(tok, &x, "cancel_io_read", false);
    if (r >= 0)
        errno = saved;
    return r;
}

ssize_t cancel_io_write(cancel_token tok, int fd, const void *buf, size_t len)
{
    if (cancel_token_is_requested(tok))
        return fail(ECANCELED);
    if (len == 0)
        return 0;
    if (!buf)
        return fail(EFAULT);
    int saved = errno;
    struct xfer x = {.kind = K_WRITE, .mode = M_NOWAIT, .fd = fd, .buf = (void *)buf, .len = len};
    ssize_t r = run(tok, &x, "cancel_io_write", false);
    if (r >= 0)
        errno = saved;
    return r;
}

ssize_t cancel_io_recv(cancel_token tok, int fd, void *buf, size_t len, int flags)
{
    if (cancel_token_is_requested(tok))
        return fail(ECANCELED);
    if (len > 0 && !buf)
        return fail(EFAULT);
    int saved = errno;
    bool once = flags & MSG_DONTWAIT;
    bool all = (flags & MSG_WAITALL) && !once;
    struct xfer x = {.kind = K_RECV, .mode = M_NOWAIT, .fd = fd, .buf = buf, .len = len,
                     .flags = flags & ~(MSG_WAITALL | MSG_DONTWAIT)};
    ssize_t r = run(tok, &x, "cancel_io_recv", once);
    if (all && r > 0 && (size_t)r < len) {
        /* MSG_WAITALL cannot be combined with a non-blocking try, so it is
         * a loop here: on stream sockets only, as the kernel does. */
        int type = 0;
        socklen_t tl = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM) {
            size_t total = (size_t)r;
            while (total < len) {
                x.buf = (char *)buf + total;
                x.len = len - total;
                ssize_t n = run(tok, &x, "cancel_io_recv", false);
                if (n <= 0)
                    break; /* EOF, error or cancellation: the next call reports it */
                total += (size_t)n;
            }
            r = (ssize_t)total;
        }
    }
    if (r >= 0)
        errno = saved;
    return r;
}

ssize_t cancel_io_send(cancel_token tok, int fd, const void *buf, size_t len, int flags)
{
    if (cancel_token_is_requested(tok))
        return fail(ECANCELED);
    if (len > 0 && !buf)
        return fail(EFAULT);
    int saved = errno;
    bool once = flags & MSG_DONTWAIT;
    struct xfer x = {.kind = K_SEND, .mode = M_NOWAIT, .fd = fd, .buf = (void *)buf, .len = len,
                     .flags = flags & ~MSG_DONTWAIT};
    ssize_t r = run(tok, &x, "cancel_io_send", once);
    if (r >= 0)
        errno = saved;
    return r;
}

int cancel_io_accept(cancel_token tok, int fd, struct sockaddr *addr, socklen_t *addrlen, int flags)
{
    if (cancel_token_is_requested(tok))
        return (int)fail(ECANCELED);
    int saved = errno;
    struct xfer x = {.kind = K_ACCEPT, .mode = M_FLIP, .fd = fd, .addr = addr, .addrlen = addrlen,
                     .flags = flags};
    ssize_t r = run(tok, &x, "cancel_io_accept", false);
    if (r >= 0)
        errno = saved;
    return (int)r;
}

int cancel_io_connect(cancel_token tok, int fd, const struct sockaddr *addr, socklen_t addrlen)
{
    if (cancel_token_is_requested(tok))
        return (int)fail(ECANCELED);
    int saved = errno;
    /* The token's descriptor first: an EMFILE must leave the socket as it
     * was, not with a connection under way. */
    struct cancel__io_wait w;
    int err = cancel__io_wait_begin(&w, tok, CANCEL_INFINITE);
    if (err)
        return (int)fail(err);
    struct xfer x = {.kind = K_CONNECT, .mode = M_FLIP, .fd = fd, .caddr = addr, .caddrlen = addrlen};
    int nap = 0;
    bool started = false;
    for (;;) {
        if (cancel_token_is_requested(tok)) {
            err = ECANCELED;
            break;
        }
        if (flipped(&x) == 0) {
            err = 0;
            break;
        }
        err = errno;
        if (err == EINPROGRESS || err == EINTR || err == EALREADY) {
            started = true;
            break;
        }
        if (err != EAGAIN)
            break;
        /* A Unix-domain listener with a full backlog (or, for TCP, no free
         * local port): nothing to poll for, so nap and retry. */
        nap = nap == 0 ? 1 : nap >= 64 ? 64 : nap * 2;
        err = cancel__io_wait_ready(&w, fd, 0, "cancel_io_connect", nap);
        if (err != EAGAIN)
            break;
    }
    if (started) {
        err = cancel__io_wait_ready(&w, fd, POLLOUT, "cancel_io_connect", 0);
        if (err == 0) {
            int so = 0;
            socklen_t sl = sizeof so;
            err = getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) < 0 ? errno : so;
        } else {
            /* Abort the attempt, so that no half-open connection remains. */
            struct sockaddr unspec = {.sa_family = AF_UNSPEC};
            (void)connect(fd, &unspec, sizeof unspec);
        }
    }
    cancel__io_wait_end(&w);
    if (err)
        return (int)fail(err);
    errno = saved;
    return 0;
}

int cancel_io_write_all(cancel_token tok, int fd, const void *buf, size_t len, size_t *done)
{
    size_t total = 0;
    int err = 0;
    int saved = errno;
    if (cancel_token_is_requested(tok))
        err = ECANCELED;
    else if (len > 0 && !buf)
        err = EFAULT;
    while (!err && total < len) {
        ssize_t n = cancel_io_write(tok, fd, (const char *)buf + total, len - total);
        if (n < 0)
            err = errno;
        else
            total += (size_t)n;
    }
    if (done)
        *done = total;
    errno = saved;
    return err;
}

int cancel_io_read_full(cancel_token tok, int fd, void *buf, size_t len, size_t *done)
{
    size_t total = 0;
    int err = 0;
    int saved = errno;
    if (cancel_token_is_requested(tok))
        err = ECANCELED;
    else if (len > 0 && !buf)
        err = EFAULT;
    while (!err && total < len) {
        ssize_t n = cancel_io_read(tok, fd, (char *)buf + total, len - total);
        if (n < 0)
            err = errno;
        else if (n == 0)
            break;
        else
            total += (size_t)n;
    }
    if (done)
        *done = total;
    errno = saved;
    return err;
}
