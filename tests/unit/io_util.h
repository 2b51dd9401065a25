/*
 * Helpers shared by the tests of <cancel/io.h>: a call run on its own thread,
 * with a positive signal that it is blocked (the thread's blocked-in word,
 * which every blocking call writes just before it waits), and descriptor
 * makers.
 */
#ifndef CANCEL_TEST_IO_UTIL_H
#define CANCEL_TEST_IO_UTIL_H

#include "../check.h"

#include "block/block.h"

#include <cancel/io.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pty.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

struct call {
    ssize_t (*fn)(struct call *c);
    cancel_token tok;
    int fd;
    char buf[512];
    size_t len;
    int flags;
    int64_t timeout;
    size_t done;
    struct pollfd pfd[20];
    nfds_t nfds;
    _Atomic(struct cancel__blocked *) where;
    _Atomic int finished;
    ssize_t result;
    int err;
    pthread_t th;
};

static void *call_main(void *arg)
{
    struct call *c = arg;
    atomic_store(&c->where, cancel__blocked_here());
    errno = 0;
    c->result = c->fn(c);
    c->err = errno;
    atomic_store(&c->finished, 1);
    return NULL;
}

static inline void call_start(struct call *c)
{
    atomic_store(&c->where, NULL);
    atomic_store(&c->finished, 0);
    c->th = test_spawn(call_main, c);
}

/* Returns true once the call is blocked in `what` (it is then in, or about
 * to enter, its wait), false if it returned instead. */
static inline bool call_blocked_or_done(struct call *c, const char *what)
{
    for (;;) {
        struct cancel__blocked *b = atomic_load(&c->where);
        const char *w = b ? atomic_load(&b->what) : NULL;
        if (w) {
            CHECK_STR(w, what);
            return true;
        }
        if (atomic_load(&c->finished))
            return false;
        test_sleep_ns(100 * 1000);
    }
}

/* Returns once the call is blocked in `what`; fails if it returned. */
static inline void call_wait_blocked(struct call *c, const char *what)
{
    if (!call_blocked_or_done(c, what)) {
        fprintf(stderr, "the call returned %zd (errno %d) instead of blocking\n", c->result, c->err);
        abort();
    }
}

static inline void call_join(struct call *c)
{
    test_join(c->th);
}

/* CPU time a thread used, for the "does not spin" checks. */
static inline int64_t thread_cpu_ns(pthread_t th)
{
    clockid_t cid;
    CHECK_EQ(pthread_getcpuclockid(th, &cid), 0);
    struct timespec ts;
    CHECK_EQ(clock_gettime(cid, &ts), 0);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A thread that keeps waiting must not spin: over 50 ms of wall time it
 * uses far less than 25 ms of CPU. (One-sided: a loaded machine can only
 * make a spinning thread look better, never a sleeping one worse.) */
static inline void check_not_spinning(struct call *c)
{
    int64_t cpu0 = thread_cpu_ns(c->th);
    test_sleep_ns(50 * 1000 * 1000);
    CHECK(!atomic_load(&c->finished));
    CHECK(thread_cpu_ns(c->th) - cpu0 < 25 * 1000 * 1000);
}

static inline ssize_t do_read(struct call *c)
{
    return cancel_io_read(c->tok, c->fd, c->buf, c->len);
}
static inline ssize_t do_write(struct call *c)
{
    return cancel_io_write(c->tok, c->fd, c->buf, c->len);
}
static inline ssize_t do_recv(struct call *c)
{
    return cancel_io_recv(c->tok, c->fd, c->buf, c->len, c->flags);
}
static inline ssize_t do_send(struct call *c)
{
    return cancel_io_send(c->tok, c->fd, c->buf, c->len, c->flags);
}
static inline ssize_t do_accept(struct call *c)
{
    return cancel_io_accept(c->tok, c->fd, NULL, NULL, c->flags);
}
static inline ssize_t do_poll(struct call *c)
{
    return cancel_io_poll(c->tok, c->pfd, c->nfds, c->timeout);
}
static inline ssize_t do_sleep(struct call *c)
{
    int e = cancel_sleep(c->tok, c->timeout);
    errno = e;
    return e ? -1 : 0;
}

static inline bool is_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0);
    return fl & O_NONBLOCK;
}
static inline void set_nonblocking(int fd, bool on)
{
    int fl = fcntl(fd, F_GETFL);
    CHECK(fl >= 0);
    CHECK_EQ(fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK), 0);
}

/* A pty pair in raw mode, so that each byte written to the master is
 * readable on the slave at once. */
static inline void open_pty(int *master, int *slave)
{
    CHECK_EQ(openpty(master, slave, NULL, NULL, NULL), 0);
    struct termios t;
    CHECK_EQ(tcgetattr(*slave, &t), 0);
    cfmakeraw(&t);
    CHECK_EQ(tcsetattr(*slave, TCSANOW, &t), 0);
}

/* A TCP listener on 127.0.0.1, port chosen by the kernel. */
static inline int tcp_listener(int backlog, struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_EQ(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ(listen(fd, backlog), 0);
    socklen_t l = sizeof *addr;
    CHECK_EQ(getsockname(fd, (struct sockaddr *)addr, &l), 0);
    return fd;
}

static inline ssize_t do_connect(struct call *c)
{
    return cancel_io_connect(c->tok, c->fd, (const struct sockaddr *)c->buf, (socklen_t)c->len);
}

/* Starts c on another thread, cancels s once c is blocked in `what`, and
 * checks that the call returned ECANCELED. */
static inline void call_cancel_blocked(struct call *c, cancel_source *s, const char *what)
{
    call_start(c);
    call_wait_blocked(c, what);
    cancel_source_cancel(s);
    call_join(c);
    CHECK_EQ(c->result, -1);
    CHECK_EQ(c->err, ECANCELED);
}

/* cancel_io_connect(tok, cl, a) on another thread, cancelled once it is
 * blocked there: it must return ECANCELED. */
static inline void connect_cancel_blocked(cancel_source *s, int cl, const void *a, size_t alen)
{
    struct call c;
    memset(&c, 0, sizeof c);
    c.fn = do_connect;
    c.tok = cancel_source_token(s);
    c.fd = cl;
    memcpy(c.buf, a, alen);
    c.len = alen;
    call_cancel_blocked(&c, s, "cancel_io_connect");
}

/* Connects cl to the listener l at a, then accepts through
 * cancel_io_accept(tok) with SOCK_NONBLOCK: the flag and the peer's address
 * pass through. Closes both ends. */
static inline void accept_passes_peer(cancel_token tok, int l, int cl, const struct sockaddr_in *a)
{
    CHECK_EQ(connect(cl, (const struct sockaddr *)a, sizeof *a), 0);
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    int fd = cancel_io_accept(tok, l, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK);
    CHECK(fd >= 0);
    CHECK(is_nonblocking(fd));
    CHECK_EQ(pl, sizeof peer);
    CHECK_EQ(peer.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    close(fd);
    close(cl);
}

/* The TCP state of a socket (TCP_ESTABLISHED, TCP_CLOSE...). */
static inline int tcp_state(int fd)
{
    struct tcp_info ti;
    socklen_t l = sizeof ti;
    CHECK_EQ(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l), 0);
    return ti.tcpi_state;
}

/* A TCP listener on 127.0.0.1 whose accept queue is full: the kernel drops
 * further SYNs, so a connect to it waits. The connections that fill it are
 * left in filler[0..*nfill) (at most 4), for the caller to close. */
static inline int full_tcp_listener(struct sockaddr_in *a, int *filler, int *nfill)
{
    int l = tcp_listener(0, a);
    *nfill = 0;
    for (;;) {
        int f = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        CHECK(f >= 0);
        int r = connect(f, (struct sockaddr *)a, sizeof *a);
        CHECK(r == 0 || errno == EINPROGRESS);
        struct pollfd p = {f, POLLOUT, 0};
        if (poll(&p, 1, 200) == 1) {
            CHECK(*nfill < 4);
            filler[(*nfill)++] = f;
            continue;
        }
        close(f);
        return l;
    }
}

static inline int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

#endif
