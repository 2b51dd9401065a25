/*
 * Descriptor I/O that wakes on cancellation: read, write, recv, send,
 * accept, connect, and the all-or-EOF loops. <cancel/io.h> states the
 * mechanism per descriptor kind; this file says why.
 *
 * Every transfer is "try without blocking, wait, try again" (wait.c). The
 * try must never block, since another thread may take the data between our
 * wake-up and our transfer (two readers, two acceptors). How a try avoids
 * blocking, cheapest first (enum mode):
 *
 *  - M_NOWAIT: a flag of the call itself, MSG_DONTWAIT for recv/send,
 *    RWF_NOWAIT with preadv2/pwritev2 for read/write. Nothing shared is
 *    touched. For a file that cannot honour RWF_NOWAIT the kernel answers
 *    EOPNOTSUPP before doing anything; fstat then picks one of the three
 *    below (classify).
 *  - M_PLAIN: regular files, block devices and directories are always
 *    "ready", and O_NONBLOCK means nothing to them: the plain call, which no
 *    flag could make cancellable. (Also where RWF_NOWAIT says EAGAIN on a
 *    file that polls ready: a page to read from the disk.) A per-thread
 *    hint remembers the descriptor last found so, per kind of call, which
 *    saves the failed try next time: a write to a file is then fstat and
 *    write(2).
 *  - M_PRIVATE: ttys (pty masters excepted) and FIFOs can be opened again,
 *    through /proc/thread-self/fd/N, with O_NONBLOCK: a private open file
 *    description of the same terminal or pipe, on which the plain call
 *    cannot block and whose flags nobody else sees. It is opened at the
 *    first try that needs it and closed when the call ends. The shared
 *    description is never changed: a background job stopped by SIGTTIN in
 *    the read leaves the terminal as it was. A pty master cannot be opened
 *    again (that makes a new pty; ioctl(TIOCGPTN) succeeds on masters
 *    alone), nor can sockets and anonymous files such as eventfds.
 *  - M_FLIP: the rest, all of them types that honour O_NONBLOCK: accept and
 *    connect where no ring serves (below; sockets have no per-call flag for
 *    them), pty masters, eventfd writes, character devices without
 *    RWF_NOWAIT, and a tty or FIFO whose
 *    reopening was refused (permissions, no /proc, EMFILE). A descriptor
 *    already non-blocking gets the plain call. A blocking one is first
 *    duplicated (F_DUPFD_CLOEXEC, kept for the call): the duplicate pins
 *    the open file description, and the flags are read, O_NONBLOCK set, the
 *    one transfer system call made and the flags restored through it, so
 *    that if the caller's number is closed and reused meanwhile, the
 *    restore cannot land on the newcomer.
 *
 * accept and connect with a token that can be cancelled do not try, wait
 * and try again: each is one IORING_OP_ACCEPT or IORING_OP_CONNECT on the
 * calling thread's io_uring ring (platform.h, cancel__ring_*), which waits
 * in the kernel, on a blocking socket as on a non-blocking one, and never
 * touches the description's flags; a callback registered on the token
 * (cancel_register) cancels it from the cancelling thread, and
 * cancel_unregister waits for that callback, so the operation on our stack
 * outlives it. Uncancelled, the call is one io_uring_enter. An accept that
 * completed although a cancel raced it returns its descriptor (the
 * connection is taken); a connect cancelled mid-way is aborted (connect with
 * AF_UNSPEC), so no half-open connection remains. The old path serves
 * where no ring can be had (no io_uring, refused by seccomp or
 * kernel.io_uring_disabled, out of descriptors), for CANCEL_TOKEN_NONE and
 * tokens that can never be cancelled (nothing would interrupt the call),
 * for Unix-domain connects (a full backlog answers EAGAIN at once and is
 * waited for with naps), and after an EAGAIN from the ring (a kernel whose
 * accept does not wait on a non-blocking socket).
 *
 * Locking and lifetime. A flip is a read-modify-restore of state that every
 * descriptor of the description shares, so two of our calls must never flip
 * one description at once: the second would save the first one's temporary
 * O_NONBLOCK as the original, or take it for the caller's own, make the
 * plain call, and block once the first restored. A flip, and a look that
 * finds a descriptor non-blocking while a flip of ours may be under way,
 * therefore run in a section exclusive per inode (st_dev, st_ino), the
 * finest identity of a description that user space can read. Descriptions
 * that share an inode (every eventfd shares one anonymous inode, every pty
 * master the ptmx inode; two opens of one device) are serialised together:
 * safe, only coarser. `flip_mu` guards the list of sections in progress
 * (`busy`: one record per section, on its caller's stack) and `waiters`,
 * and is held for a few instructions, never across a system call. (While no
 * flip of ours is in progress anywhere, the look needs no section:
 * look_without_section.) A call whose inode is busy waits on `flip_cv` for
 * a section of another thread, which is a few system calls that cannot wait
 * for I/O; it does not listen to its token meanwhile, and need not.
 * Different inodes never wait for each other, so a transfer that stalls
 * inside its section (a page fault on the caller's buffer served by FUSE or
 * userfaultfd, a driver that ignores O_NONBLOCK) holds up flips of its own
 * inode only, and never fork.
 * pthread_atfork holds flip_mu across fork; the child empties the list (its
 * sections belong to threads the child does not have), forgets the flips
 * in progress for the same reason, and makes flip_cv anew.
 *
 * Across processes nothing serialises a flip: another process sharing the
 * description sees O_NONBLOCK for the duration of one system call, and two
 * processes flipping one blocking description can leave one of them in a
 * blocking call, deaf to its token. <cancel/io.h> therefore asks for
 * non-blocking descriptors there where no ring serves accept and connect
 * (with a ring, pre-forked workers sharing one blocking listener are safe:
 * nothing is switched). The per-thread hints are thread-local: no sharing.
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
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <termios.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * One transfer attempt that does not block.
 * ------------------------------------------------------------------------ */

enum kind { K_READ, K_WRITE, K_RECV, K_SEND, K_ACCEPT, K_CONNECT };

enum mode { M_NOWAIT = 0, M_PLAIN, M_PRIVATE, M_FLIP }; /* see the top */

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
    int own;     /* M_PRIVATE: the private description; M_FLIP: the pin; else -1 */
    bool keyed;  /* M_FLIP: dev and ino are fd's */
    dev_t dev;
    ino_t ino;
};

/* M_NOWAIT unless told otherwise (it is 0), nothing of its own yet. */
#define XFER(...) ((struct xfer){.own = -1, __VA_ARGS__})

/* Ends a call's use of x: closes what it opened. */
static void xfer_end(struct xfer *x)
{
    if (x->own >= 0) {
        int e = errno;
        close(x->own);
        errno = e;
        x->own = -1;
    }
}

/* The plain system call on `fd`. */
static ssize_t plain(const struct xfer *x, int fd)
{
    switch (x->kind) {
    case K_READ:
        return read(fd, x->buf, x->len);
    case K_WRITE:
        return write(fd, x->buf, x->len);
    case K_RECV:
        return recv(fd, x->buf, x->len, x->flags);
    case K_SEND:
        return send(fd, x->buf, x->len, x->flags);
    case K_ACCEPT:
        return accept4(fd, x->addr, x->addrlen, x->flags);
    case K_CONNECT:
        return connect(fd, x->caddr, x->caddrlen);
    }
    errno = EINVAL;
    return -1;
}

/* The sections, exclusive per inode (see the top). */
struct section {
    dev_t dev;
    ino_t ino;
    struct section *next;
};

static pthread_mutex_t flip_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t flip_cv = PTHREAD_COND_INITIALIZER;
static struct section *busy; /* under flip_mu */
static int waiters;          /* under flip_mu: calls waiting on flip_cv */
static pthread_once_t flip_once = PTHREAD_ONCE_INIT;

static void flip_lock(void)
{
    pthread_mutex_lock(&flip_mu);
}
static void flip_unlock(void)
{
    pthread_mutex_unlock(&flip_mu);
}
static _Atomic uint64_t flips; /* see below, above flip_begin */
#define FLIP_ACTIVE 0xffffffffu

static void flip_child(void)
{
    busy = NULL;
    waiters = 0;
    /* Flips in progress belong to threads the child does not have: left
     * counted, they would send every look of the child through a section
     * for good. (The section would not guard against the parent's flip of
     * a shared description either: nothing does across processes.) The
     * count begun stays. relaxed: the child has one thread. */
    atomic_fetch_and_explicit(&flips, ~(uint64_t)FLIP_ACTIVE, memory_order_relaxed);
    pthread_cond_init(&flip_cv, NULL); /* its waiters stayed in the parent */
    pthread_mutex_unlock(&flip_mu);
}
static void flip_setup(void)
{
    pthread_atfork(flip_lock, flip_unlock, flip_child);
}

static void section_enter(struct section *s)
{
    pthread_once(&flip_once, flip_setup);
    pthread_mutex_lock(&flip_mu);
    for (;;) {
        struct section *b = busy;
        while (b && (b->dev != s->dev || b->ino != s->ino))
            b = b->next;
        if (!b)
            break;
        waiters++;
        pthread_cond_wait(&flip_cv, &flip_mu);
        waiters--;
    }
    s->next = busy;
    busy = s;
    pthread_mutex_unlock(&flip_mu);
}

static void section_leave(struct section *s)
{
    int e = errno;
    pthread_mutex_lock(&flip_mu);
    struct section **pp = &busy;
    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    if (waiters)
        pthread_cond_broadcast(&flip_cv);
    pthread_mutex_unlock(&flip_mu);
    errno = e;
}

/* `flips` (declared above, for the fork handler): our flips in progress
 * (low 32 bits) and flips begun (high 32 bits), so that a look at a
 * descriptor's flags can tell, without a section, that no flip of ours
 * can have set the O_NONBLOCK it sees: none was in progress
 * before the look and none began during it. That is the common case of a
 * non-blocking listener, whose accept then costs one system call more (the
 * look), not three. */
#define FLIP_BEGUN ((uint64_t)1 << 32)

static void flip_begin(void)
{
    atomic_fetch_add_explicit(&flips, FLIP_BEGUN + 1, memory_order_relaxed);
    /* Pairs with the fence in look_without_section: a look that sees the
     * O_NONBLOCK set after this fence sees the count begun before it. */
    atomic_thread_fence(memory_order_seq_cst);
}

static void flip_end(void)
{
    /* release: the restore of the flags comes first, for a look that reads
     * this with acquire and finds nothing in progress. */
    atomic_fetch_sub_explicit(&flips, 1, memory_order_release);
}

/* What a look at a descriptor's flags outside a section can tell. */
enum look { LOOK_FAILED = -1, LOOK_UNKNOWN, LOOK_BLOCKING, LOOK_NONBLOCKING };

/* Looks at fd's O_NONBLOCK without a section. LOOK_NONBLOCKING: set by the
 * caller (no flip of ours was in progress when we looked, nor began while
 * we did). LOOK_BLOCKING: clear, which is the caller's setting too, since
 * our flips only ever set the flag for a while. LOOK_UNKNOWN: a flip was
 * in progress; take the section. LOOK_FAILED: F_GETFL failed (errno). */
static enum look look_without_section(int fd)
{
    /* acquire: pairs with flip_end's release (the restore is visible). */
    uint64_t before = atomic_load_explicit(&flips, memory_order_acquire);
    if (before & FLIP_ACTIVE)
        return LOOK_UNKNOWN;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return LOOK_FAILED;
    if (!(fl & O_NONBLOCK))
        return LOOK_BLOCKING;
    /* Pairs with flip_begin's fence: had our look seen a flip's temporary
     * O_NONBLOCK, the load below would see that flip begun. */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t after = atomic_load_explicit(&flips, memory_order_relaxed);
    bool none_began = (after & ~(uint64_t)FLIP_ACTIVE) == (before & ~(uint64_t)FLIP_ACTIVE);
    return none_began ? LOOK_NONBLOCKING : LOOK_UNKNOWN;
}

/* The plain call with O_NONBLOCK set on the open file description for its
 * duration, unless it is set already (M_FLIP at the top). */
static ssize_t flipped(struct xfer *x)
{
    enum look seen = x->own < 0 ? look_without_section(x->fd) : LOOK_UNKNOWN;
    if (seen == LOOK_FAILED)
        return -1;
    if (seen == LOOK_NONBLOCKING)
        return plain(x, x->fd);
    if (!x->keyed) {
        struct stat st;
        if (fstat(x->fd, &st) != 0)
            return -1;
        x->dev = st.st_dev;
        x->ino = st.st_ino;
        x->keyed = true;
    }
    struct section s = {x->dev, x->ino, NULL};
    section_enter(&s);
    int fd = x->own >= 0 ? x->own : x->fd;
    /* Seen blocking: pin at once (the flags are read on the pin). */
    int fl = seen == LOOK_BLOCKING ? 0 : fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK) && x->own < 0) {
        /* Blocking: pin the description, and read its flags there (the
         * number may have been reused since the look above). */
        fd = x->own = fcntl(x->fd, F_DUPFD_CLOEXEC, 0);
        fl = fd < 0 ? -1 : fcntl(fd, F_GETFL);
    }
    ssize_t r = -1;
    if (fl < 0) {
        r = -1;
    } else if (fl & O_NONBLOCK) {
        /* The caller's own setting: no call of ours flips a non-blocking
         * description, so it stays set through the transfer. */
        section_leave(&s);
        return plain(x, fd);
    } else {
        flip_begin();
        if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0) {
            r = plain(x, fd);
            int e = errno;
            (void)fcntl(fd, F_SETFL, fl); /* on the pin: cannot fail */
            errno = e;
        }
        flip_end();
    }
    section_leave(&s);
    return r;
}

/* Per thread and kind (read, write): the descriptor last found to be a
 * regular file, block device or directory after RWF_NOWAIT was refused. A
 * call on it checks the type (fstat) and makes the plain call at once; a
 * stale entry (the number reused) costs that fstat once. */
static _Thread_local int plain_hint[2] = {-1, -1};

static bool plain_type(mode_t m)
{
    return S_ISREG(m) || S_ISBLK(m) || S_ISDIR(m);
}

/* RWF_NOWAIT was refused: chooses M_PLAIN, M_PRIVATE or M_FLIP for x.
 * Returns 0 or an error of fstat. */
static int classify(struct xfer *x)
{
    struct stat st;
    if (fstat(x->fd, &st) != 0)
        return errno;
    if (plain_type(st.st_mode)) {
        x->mode = M_PLAIN;
        plain_hint[x->kind] = x->fd;
        return 0;
    }
    x->mode = M_FLIP;
    x->dev = st.st_dev;
    x->ino = st.st_ino;
    x->keyed = true;
    struct termios t;
    unsigned ptn;
    if (S_ISFIFO(st.st_mode) ||
        (S_ISCHR(st.st_mode) && tcgetattr(x->fd, &t) == 0 && ioctl(x->fd, TIOCGPTN, &ptn) != 0)) {
        char path[40];
        snprintf(path, sizeof path, "/proc/thread-self/fd/%d", x->fd);
        int acc = x->kind == K_READ ? O_RDONLY : O_WRONLY;
        int fd = open(path, acc | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0) {
            x->own = fd;
            x->mode = M_PRIVATE;
        }
    }
    return 0;
}

static ssize_t try_once(struct xfer *x)
{
    struct iovec v = {x->buf, x->len};
    switch (x->mode) {
    case M_PLAIN:
        return plain(x, x->fd);
    case M_PRIVATE:
        return plain(x, x->own);
    case M_FLIP:
        return flipped(x);
    case M_NOWAIT:
        break;
    }
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

    if ((x->kind == K_READ || x->kind == K_WRITE) && plain_hint[x->kind] == x->fd) {
        struct stat st;
        if (fstat(x->fd, &st) == 0 && plain_type(st.st_mode))
            x->mode = M_PLAIN;
        else
            plain_hint[x->kind] = -1;
    }
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
            err = classify(x); /* no RWF_NOWAIT for this kind of file */
            if (err)
                break;
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
                if (fstat(x->fd, &st) == 0 && plain_type(st.st_mode)) {
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
    xfer_end(x);
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
    struct xfer x = XFER(.kind = K_READ, .fd = fd, .buf = buf, .len = len);
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
    struct xfer x = XFER(.kind = K_WRITE, .fd = fd, .buf = (void *)buf, .len = len);
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
    bool once = flags & MSG_DONTWAIT;
    bool all = (flags & MSG_WAITALL) && !once;
    /* Peeking, the loop below would take the same bytes again; waiting for
     * more than a partial peek has nothing to poll for (POLLIN stays set). */
    if (all && (flags & MSG_PEEK))
        return fail(EINVAL);
    int saved = errno;
    struct xfer x = XFER(.kind = K_RECV, .fd = fd, .buf = buf, .len = len,
                         .flags = flags & ~(MSG_WAITALL | MSG_DONTWAIT));
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
    struct xfer x = XFER(.kind = K_SEND, .fd = fd, .buf = (void *)buf, .len = len, .flags = flags & ~MSG_DONTWAIT);
    ssize_t r = run(tok, &x, "cancel_io_send", once);
    if (r >= 0)
        errno = saved;
    return r;
}

/* ------------------------------------------------------------------------
 * accept and connect through the thread's io_uring ring (see the top).
 * ------------------------------------------------------------------------ */

static void ring_cancel_cb(void *op)
{
    cancel__ring_cancel(op);
}

/* Runs op, prepared, while the token can cancel it. Returns the result of
 * the system call (>= 0 or -errno). */
static long ring_call(cancel_token tok, struct cancel__ring_op *op, const char *what)
{
    cancel_registration reg;
    /* Already cancelled: the callback ran inline and nothing is submitted. */
    int reg_err = cancel_register(tok, &reg, ring_cancel_cb, op);
    cancel__blocked_enter(what, op->fd);
    long r = cancel__ring_run(op);
    cancel__blocked_leave();
    /* Waits for a callback running on another thread: op outlives it. */
    if (reg_err == 0)
        (void)cancel_unregister(&reg);
    return r;
}

/* Whether the ring is used: a token that can be cancelled (else nothing
 * would ever need to interrupt the call, and the plain path is as good). */
static bool ring_wanted(cancel_token tok)
{
    return cancel_token_can_be_canceled(tok);
}

int cancel_io_accept(cancel_token tok, int fd, struct sockaddr *addr, socklen_t *addrlen, int flags)
{
    if (cancel_token_is_requested(tok))
        return (int)fail(ECANCELED);
    int saved = errno;
    struct cancel__ring_op op;
    while (ring_wanted(tok) &&
           cancel__ring_prepare(&op, CANCEL__RING_ACCEPT, fd, addr, addrlen, 0, flags) == 0) {
        long r = ring_call(tok, &op, "cancel_io_accept");
        if (r >= 0) {
            /* Also when a cancel raced it: the connection is taken now. */
            errno = saved;
            return (int)r;
        }
        if ((r == -ECANCELED || r == -EINTR) && cancel_token_is_requested(tok))
            return (int)fail(ECANCELED);
        if (r == -EINTR)
            continue; /* not ours: try again */
        if (r != -EAGAIN)
            return (int)fail((int)-r);
        break; /* a kernel that does not wait on this socket: poll instead */
    }
    struct xfer x = XFER(.kind = K_ACCEPT, .mode = M_FLIP, .fd = fd, .addr = addr, .addrlen = addrlen,
                         .flags = flags);
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
    /* Unix-domain sockets take the path below: their full backlog (EAGAIN)
     * is waited for with naps there. */
    struct cancel__ring_op op;
    if (ring_wanted(tok) && !(addr && addrlen >= sizeof addr->sa_family && addr->sa_family == AF_UNIX) &&
        cancel__ring_prepare(&op, CANCEL__RING_CONNECT, fd, (void *)addr, NULL, addrlen, 0) == 0) {
        long r = ring_call(tok, &op, "cancel_io_connect");
        if (r == 0) {
            errno = saved;
            return 0;
        }
        if ((r == -ECANCELED || r == -EINTR) && cancel_token_is_requested(tok)) {
            /* Abort the attempt, so that no half-open connection remains;
             * but only one the kernel was given: cancelled before, the
             * socket may be connected already (by an earlier call), and
             * a disconnect would reset that connection. */
            if (op.submitted) {
                struct sockaddr unspec = {.sa_family = AF_UNSPEC};
                (void)connect(fd, &unspec, sizeof unspec);
            }
            return (int)fail(ECANCELED);
        }
        if (r != -EAGAIN && r != -EINTR)
            return (int)fail((int)-r);
        /* EAGAIN: no local port free (TCP), which the path below reports;
         * EINTR, not ours: the path below starts again (EALREADY there). */
    }
    /* The token's descriptor first: an EMFILE must leave the socket as it
     * was, not with a connection under way. */
    struct cancel__io_wait w;
    int err = cancel__io_wait_begin(&w, tok, CANCEL_INFINITE);
    if (err)
        return (int)fail(err);
    struct xfer x = XFER(.kind = K_CONNECT, .mode = M_FLIP, .fd = fd, .caddr = addr, .caddrlen = addrlen);
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
        if (err != EAGAIN || addr->sa_family != AF_UNIX)
            break;
        /* A Unix-domain listener with a full backlog: nothing to poll for,
         * so nap and retry. (For TCP, EAGAIN means no local port is free:
         * the caller's answer, as connect(2) gives it.) */
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
    xfer_end(&x);
    cancel__io_wait_end(&w);
    if (err)
        return (int)fail(err);
    errno = saved;
    return 0;
}

/* Moves all len bytes through read or write calls; *done counts them on
 * every path, so a cancelled transfer loses nothing. A read of 0 is the end
 * of the data (success, short); a write of 0 will not progress (EIO). */
static int transfer_all(cancel_token tok, int fd, char *buf, size_t len, size_t *done, bool writing)
{
    size_t total = 0;
    int err = 0;
    int saved = errno;
    if (cancel_token_is_requested(tok))
        err = ECANCELED;
    else if (len > 0 && !buf)
        err = EFAULT;
    while (!err && total < len) {
        ssize_t n = writing ? cancel_io_write(tok, fd, buf + total, len - total)
                            : cancel_io_read(tok, fd, buf + total, len - total);
        if (n < 0)
            err = errno;
        else if (n == 0 && writing)
            err = EIO; /* no progress, and nothing to wait for */
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

int cancel_io_write_all(cancel_token tok, int fd, const void *buf, size_t len, size_t *done)
{
    /* the buffer is only read on this path: the cast lends it to the one loop */
    return transfer_all(tok, fd, (char *)(uintptr_t)buf, len, done, true);
}

int cancel_io_read_full(cancel_token tok, int fd, void *buf, size_t len, size_t *done)
{
    return transfer_all(tok, fd, buf, len, done, false);
}
