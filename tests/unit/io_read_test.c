/* cancel_io_read, _write, _recv, _send, _read_full, _write_all: every kind of
 * descriptor, blocking and non-blocking, cancelled before and while blocked,
 * success, timeout, bad input, EINTR, EMFILE, SIGPIPE. */
#include "io_util.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* PTY reads the slave and writes the master; PTYM the other way round. */
enum kind { PIPE, UNIX, TCP, EVENTFD, PTY, PTYM, FIFO, NKINDS };
static const char *const kind_name[] = {"pipe", "unix", "tcp", "eventfd", "pty", "pty master", "fifo"};

/* Read tests read `rd` and feed through `wr`; write tests write `wr` and
 * drain through `rd`. For an eventfd both are the same descriptor. */
struct pair {
    enum kind k;
    int rd, wr;
};

static char fifo_dir[64];

static struct pair make_pair(enum kind k, bool nonblocking)
{
    struct pair p = {k, -1, -1};
    int fds[2];
    switch (k) {
    case PIPE:
        CHECK_EQ(pipe2(fds, O_CLOEXEC), 0);
        p.rd = fds[0], p.wr = fds[1];
        break;
    case UNIX:
        CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
        p.rd = fds[0], p.wr = fds[1];
        break;
    case TCP: {
        struct sockaddr_in a;
        int l = tcp_listener(4, &a);
        p.wr = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK_EQ(connect(p.wr, (struct sockaddr *)&a, sizeof a), 0);
        p.rd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        CHECK(p.rd >= 0);
        close(l);
        break;
    }
    case EVENTFD:
        p.rd = p.wr = eventfd(0, EFD_CLOEXEC);
        CHECK(p.rd >= 0);
        break;
    case PTY:
        open_pty(&p.wr, &p.rd);
        break;
    case PTYM:
        open_pty(&p.rd, &p.wr);
        break;
    case FIFO: {
        char path[96];
        snprintf(path, sizeof path, "%s/fifo", fifo_dir);
        unlink(path);
        CHECK_EQ(mkfifo(path, 0600), 0);
        p.rd = open(path, O_RDWR | O_CLOEXEC);
        p.wr = open(path, O_WRONLY | O_CLOEXEC);
        CHECK(p.rd >= 0 && p.wr >= 0);
        unlink(path);
        break;
    }
    default:
        abort();
    }
    set_nonblocking(p.rd, nonblocking);
    set_nonblocking(p.wr, nonblocking);
    return p;
}

static void close_pair(struct pair p)
{
    close(p.rd);
    if (p.wr != p.rd)
        close(p.wr);
}

static size_t unit(enum kind k)
{
    return k == EVENTFD ? 8 : 1;
}

static void feed(struct pair p)
{
    uint64_t one = 1;
    CHECK_EQ(write(p.wr, p.k == EVENTFD ? (void *)&one : "x", unit(p.k)), (ssize_t)unit(p.k));
}

/* Reads whatever is there without blocking; returns the byte count. */
static size_t drain(struct pair p)
{
    bool nb = is_nonblocking(p.rd);
    set_nonblocking(p.rd, true);
    size_t total = 0;
    char buf[65536];
    ssize_t n;
    while ((n = read(p.rd, buf, sizeof buf)) > 0)
        total += (size_t)n;
    set_nonblocking(p.rd, nb);
    return total;
}

/* Fills `wr` until a write of one unit would block. */
static void fill(struct pair p)
{
    bool nb = is_nonblocking(p.wr);
    set_nonblocking(p.wr, true);
    if (p.k == EVENTFD) {
        uint64_t v = 0xfffffffffffffffeULL, old;
        (void)!read(p.wr, &old, 8); /* back to 0, then the maximum */
        CHECK_EQ(write(p.wr, &v, 8), 8);
    } else {
        /* Until a round writes nothing: a pty's line discipline takes data
         * from the master's buffer asynchronously, making room again. */
        static char junk[65536];
        for (bool wrote = true; wrote;) {
            wrote = false;
            for (size_t sz = sizeof junk; sz >= 1; sz /= 16)
                while (write(p.wr, junk, sz) > 0)
                    wrote = true;
            CHECK(errno == EAGAIN);
            if (wrote)
                test_sleep_ns(10 * 1000 * 1000);
        }
    }
    set_nonblocking(p.wr, nb);
}

static void init_call(struct call *c, ssize_t (*fn)(struct call *), cancel_token tok, int fd, size_t len)
{
    memset(c, 0, sizeof *c);
    c->fn = fn;
    c->tok = tok;
    c->fd = fd;
    c->len = len;
    if (len == 8)
        memcpy(c->buf, &(uint64_t){1}, 8);
    else
        memset(c->buf, 'y', len);
}

/* Starts a write of one unit on a full `wr`, returning once it is blocked.
 * The kernel may make room after the fill (a TCP window update, a pty's
 * line discipline catching up): then the write goes through, and we fill
 * and try again. */
static void start_blocked_write(struct call *c, struct pair p, cancel_token tok)
{
    for (int tries = 0;; tries++) {
        CHECK(tries < 100);
        fill(p);
        init_call(c, do_write, tok, p.wr, unit(p.k));
        call_start(c);
        if (call_blocked_or_done(c, "cancel_io_write"))
            return;
        call_join(c);
        CHECK_EQ(c->result, (ssize_t)unit(p.k));
    }
}

/* Every kind, both modes: blocked reads wake on data and on cancellation;
 * a cancelled token leaves the data where it is; flags never change. */
static void read_every_kind(void)
{
    for (int k = 0; k < NKINDS; k++) {
        for (int nb = 0; nb < 2; nb++) {
            fprintf(stderr, "   %s, %s\n", kind_name[k], nb ? "non-blocking" : "blocking");
            struct pair p = make_pair(k, nb);
            size_t u = unit(k);
            struct call c;

            /* data arrives while blocked */
            cancel_source *s = cancel_source_new();
            init_call(&c, do_read, cancel_source_token(s), p.rd, u);
            call_start(&c);
            call_wait_blocked(&c, "cancel_io_read");
            feed(p);
            call_join(&c);
            CHECK_EQ(c.result, (ssize_t)u);
            CHECK_EQ(is_nonblocking(p.rd), nb);

            /* cancelled while blocked */
            init_call(&c, do_read, cancel_source_token(s), p.rd, u);
            call_cancel_blocked(&c, s, "cancel_io_read");
            CHECK_EQ(is_nonblocking(p.rd), nb);

            /* cancelled before: the data stays */
            feed(p);
            char buf[8];
            errno = 0;
            CHECK_EQ(cancel_io_read(cancel_source_token(s), p.rd, buf, u), -1);
            CHECK_EQ(errno, ECANCELED);
            cancel_source_free(s);
            errno = 1234;
            CHECK_EQ(cancel_io_read(CANCEL_TOKEN_NONE, p.rd, buf, u), (ssize_t)u);
            CHECK_EQ(errno, 1234); /* left alone on success */
            close_pair(p);
        }
    }
}

static void write_every_kind(void)
{
    for (int k = 0; k < NKINDS; k++) {
        for (int nb = 0; nb < 2; nb++) {
            fprintf(stderr, "   %s, %s\n", kind_name[k], nb ? "non-blocking" : "blocking");
            struct pair p = make_pair(k, nb);
            size_t u = unit(k);
            struct call c;
            cancel_source *s = cancel_source_new();

            start_blocked_write(&c, p, cancel_source_token(s));
            cancel_source_cancel(s);
            call_join(&c);
            CHECK_EQ(c.result, -1);
            CHECK_EQ(c.err, ECANCELED);
            CHECK_EQ(is_nonblocking(p.wr), nb);
            cancel_source_free(s);

            s = cancel_source_new();
            start_blocked_write(&c, p, cancel_source_token(s));
            /* room appears: the writer goes on (the kernel may want a few
             * reads before it wakes a writer) */
            while (!atomic_load(&c.finished)) {
                drain(p);
                test_sleep_ns(1000 * 1000);
            }
            call_join(&c);
            CHECK_EQ(c.result, (ssize_t)u);
            CHECK_EQ(is_nonblocking(p.wr), nb);
            cancel_source_free(s);
            close_pair(p);
        }
    }
}

/* Two readers of one descriptor: the one that loses the data must go back
 * to waiting (and stay cancellable), not block in the kernel. */
static void two_readers_never_hang(void)
{
    enum kind kinds[] = {PIPE, UNIX, EVENTFD, PTY, PTYM, FIFO};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        enum kind k = kinds[i];
        fprintf(stderr, "   %s\n", kind_name[k]);
        struct pair p = make_pair(k, false);
        for (int iter = 0; iter < TEST_SCALE(40) + 4; iter++) {
            cancel_source *s = cancel_source_new();
            struct call c[2];
            for (int j = 0; j < 2; j++) {
                init_call(&c[j], do_read, cancel_source_token(s), p.rd, unit(k));
                call_start(&c[j]);
            }
            for (int j = 0; j < 2; j++)
                call_wait_blocked(&c[j], "cancel_io_read");
            feed(p);
            while (!atomic_load(&c[0].finished) && !atomic_load(&c[1].finished))
                test_sleep_ns(100 * 1000);
            cancel_source_cancel(s); /* the other one must return */
            for (int j = 0; j < 2; j++)
                call_join(&c[j]);
            int got = 0;
            for (int j = 0; j < 2; j++) {
                if (c[j].result == (ssize_t)unit(k))
                    got++;
                else
                    CHECK(c[j].result == -1 && c[j].err == ECANCELED);
            }
            CHECK_EQ(got, 1);
            cancel_source_free(s);
        }
        CHECK(!is_nonblocking(p.rd));
        close_pair(p);
    }
}

/* A deadline on the token ends a call that has no timeout argument. */
static void deadline_on_token_times_out(void)
{
    struct pair p = make_pair(PIPE, false);
    /* the deadline counts from the source's making, so the clock is read
     * before it: read after, a preemption in between let the check fail */
    int64_t t0 = test_now_ns();
    cancel_source *s = cancel_source_new_child(CANCEL_TOKEN_NONE, 20 * 1000 * 1000, NULL);
    char b;
    errno = 0;
    CHECK_EQ(cancel_io_read(cancel_source_token(s), p.rd, &b, 1), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK(test_now_ns() - t0 >= 20 * 1000 * 1000);
    CHECK_EQ(cancel_token_cause(cancel_source_token(s)).reason, CANCEL_REASON_TIMEOUT);
    cancel_source_free(s);
    close_pair(p);
}

static ssize_t do_read_full(struct call *c);
static ssize_t do_write_all(struct call *c);

/* Every call without a timeout argument, blocked, ends through a deadline
 * on the token: ECANCELED with cause TIMEOUT. */
static ssize_t do_send_nosig(struct call *c)
{
    return cancel_io_send(c->tok, c->fd, c->buf, c->len, MSG_NOSIGNAL);
}
static void deadline_ends_every_call(void)
{
    struct pair pipe_ = make_pair(PIPE, false), sock = make_pair(UNIX, false);
    struct pair fullpipe = make_pair(PIPE, false), fullsock = make_pair(UNIX, false);
    fill(fullpipe);
    fill(fullsock);
    struct {
        ssize_t (*fn)(struct call *);
        int fd;
    } cases[] = {{do_read, pipe_.rd},        {do_write, fullpipe.wr},     {do_recv, sock.rd},
                 {do_send_nosig, fullsock.wr}, {do_read_full, pipe_.rd}, {do_write_all, fullpipe.wr}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cancel_source *s = cancel_source_new_child(CANCEL_TOKEN_NONE, 5 * 1000 * 1000, NULL);
        struct call c;
        init_call(&c, cases[i].fn, cancel_source_token(s), cases[i].fd, 1);
        call_start(&c);
        call_join(&c);
        CHECK_EQ(c.result, -1);
        CHECK_EQ(c.err, ECANCELED);
        CHECK_EQ(cancel_token_cause(c.tok).reason, CANCEL_REASON_TIMEOUT);
        cancel_source_free(s);
    }
    close_pair(pipe_);
    close_pair(sock);
    close_pair(fullpipe);
    close_pair(fullsock);
}

/* A retained token whose source is freed uncancelled: the call waits on,
 * without spinning, and returns the data. */
static void freed_source_keeps_waiting(void)
{
    enum kind kinds[] = {PIPE, PTY};
    for (size_t i = 0; i < 2; i++) {
        struct pair p = make_pair(kinds[i], false);
        cancel_source *s = cancel_source_new();
        cancel_token t = cancel_token_retain(cancel_source_token(s));
        struct call c;
        init_call(&c, do_read, t, p.rd, 1);
        call_start(&c);
        call_wait_blocked(&c, "cancel_io_read");
        cancel_source_free(s);
        check_not_spinning(&c);
        feed(p);
        call_join(&c);
        CHECK_EQ(c.result, 1);
        cancel_token_release(t);
        close_pair(p);
    }
}

static void bad_input(void)
{
    char buf[4];
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    errno = 0;
    CHECK_EQ(cancel_io_read(t, -1, buf, 1), -1);
    CHECK_EQ(errno, EBADF);
    CHECK_EQ(cancel_io_write(t, -1, buf, 1), -1);
    CHECK_EQ(errno, EBADF);
    CHECK_EQ(cancel_io_recv(t, -1, buf, 1, 0), -1);
    CHECK_EQ(errno, EBADF);
    CHECK_EQ(cancel_io_send(t, -1, buf, 1, 0), -1);
    CHECK_EQ(errno, EBADF);
    CHECK_EQ(cancel_io_read(t, 0, NULL, 1), -1);
    CHECK_EQ(errno, EFAULT);
    CHECK_EQ(cancel_io_write(t, 1, NULL, 1), -1);
    CHECK_EQ(errno, EFAULT);
    CHECK_EQ(cancel_io_recv(t, 0, NULL, 1, 0), -1);
    CHECK_EQ(errno, EFAULT);
    CHECK_EQ(cancel_io_send(t, 0, NULL, 1, 0), -1);
    CHECK_EQ(errno, EFAULT);
    CHECK_EQ(cancel_io_read_full(t, 0, NULL, 1, NULL), EFAULT);
    CHECK_EQ(cancel_io_write_all(t, 0, NULL, 1, NULL), EFAULT);
    size_t done = 99;
    CHECK_EQ(cancel_io_read_full(t, -1, buf, 1, &done), EBADF);
    CHECK_EQ(done, 0);
    /* zero length: 0 at once, whatever the descriptor */
    CHECK_EQ(cancel_io_read(t, -1, NULL, 0), 0);
    CHECK_EQ(cancel_io_write(t, -1, NULL, 0), 0);
    CHECK_EQ(cancel_io_write_all(t, -1, NULL, 0, &done), 0);
    CHECK_EQ(done, 0);
    struct pair sp = make_pair(UNIX, false);
    /* recv and send give zero lengths to the kernel, which for a stream
     * socket means: nothing sent; wait for data, take none */
    CHECK_EQ(cancel_io_send(t, sp.wr, NULL, 0, 0), 0);
    CHECK_EQ(cancel_io_send(t, sp.wr, "z", 1, 0), 1);
    CHECK_EQ(cancel_io_recv(t, sp.rd, NULL, 0, 0), 0);
    CHECK_EQ(cancel_io_recv(t, sp.rd, buf, 1, 0), 1);
    close_pair(sp);
    /* a pipe's wrong end, a pipe for recv */
    struct pair p = make_pair(PIPE, false);
    CHECK_EQ(cancel_io_read(t, p.wr, buf, 1), -1);
    CHECK_EQ(errno, EBADF);
    CHECK_EQ(cancel_io_recv(t, p.rd, buf, 1, 0), -1);
    CHECK_EQ(errno, ENOTSOCK);
    /* a cancelled token wins over everything */
    cancel_source_cancel(s);
    CHECK_EQ(cancel_io_read(t, -1, NULL, 5), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(cancel_io_write(t, -1, NULL, 0), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(cancel_io_recv(t, -1, NULL, 5, 0), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(cancel_io_send(t, -1, NULL, 5, 0), -1);
    CHECK_EQ(errno, ECANCELED);
    CHECK_EQ(cancel_io_read_full(t, -1, NULL, 5, &done), ECANCELED);
    CHECK_EQ(cancel_io_write_all(t, -1, NULL, 5, &done), ECANCELED);
    CHECK_EQ(done, 0);
    cancel_source_free(s);
    close_pair(p);
}

static _Atomic int usr1_count, pipe_count;
static void on_usr1(int sig)
{
    (void)sig;
    atomic_fetch_add(&usr1_count, 1);
}
static void on_pipe(int sig)
{
    (void)sig;
    atomic_fetch_add(&pipe_count, 1);
}

/* A signal handler installed without SA_RESTART does not end the call. */
static void eintr_is_retried(void)
{
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_usr1;
    CHECK_EQ(sigaction(SIGUSR1, &sa, &old), 0);
    struct pair p = make_pair(PIPE, false);
    cancel_source *s = cancel_source_new();
    struct call c;
    init_call(&c, do_read, cancel_source_token(s), p.rd, 1);
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_read");
    for (int i = 1; i <= 3; i++) {
        pthread_kill(c.th, SIGUSR1);
        while (atomic_load(&usr1_count) < i && !atomic_load(&c.finished))
            test_sleep_ns(100 * 1000);
    }
    feed(p);
    call_join(&c);
    CHECK_EQ(c.result, 1);
    cancel_source_free(s);
    close_pair(p);
    CHECK_EQ(sigaction(SIGUSR1, &old, NULL), 0);
}

/* SIGPIPE: write raises it as write(2) does; send with MSG_NOSIGNAL does
 * not; the disposition is never changed. */
static void sigpipe_as_posix(void)
{
    struct sigaction sa = {0}, before, after;
    sa.sa_handler = on_pipe;
    CHECK_EQ(sigaction(SIGPIPE, &sa, &before), 0);
    CHECK_EQ(sigaction(SIGPIPE, NULL, &before), 0);
    struct pair p = make_pair(PIPE, false);
    close(p.rd);
    errno = 0;
    CHECK_EQ(cancel_io_write(CANCEL_TOKEN_NONE, p.wr, "x", 1), -1);
    CHECK_EQ(errno, EPIPE);
    CHECK_EQ(atomic_load(&pipe_count), 1);
    close(p.wr);
    p = make_pair(UNIX, false);
    close(p.rd);
    CHECK_EQ(cancel_io_send(CANCEL_TOKEN_NONE, p.wr, "x", 1, MSG_NOSIGNAL), -1);
    CHECK_EQ(errno, EPIPE);
    CHECK_EQ(atomic_load(&pipe_count), 1);
    CHECK_EQ(cancel_io_write_all(CANCEL_TOKEN_NONE, p.wr, "x", 1, NULL), EPIPE);
    CHECK_EQ(atomic_load(&pipe_count), 2);
    close(p.wr);
    CHECK_EQ(sigaction(SIGPIPE, NULL, &after), 0);
    CHECK(after.sa_handler == before.sa_handler && after.sa_flags == before.sa_flags);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
}

static ssize_t do_read_full(struct call *c)
{
    int e = cancel_io_read_full(c->tok, c->fd, c->buf, c->len, &c->done);
    errno = e;
    return e ? -1 : 0;
}

static ssize_t do_write_all(struct call *c)
{
    static char big[300000];
    int e = cancel_io_write_all(c->tok, c->fd, big, sizeof big, &c->done);
    errno = e;
    return e ? -1 : 0;
}

static void read_full_and_write_all(void)
{
    struct pair p = make_pair(PIPE, false);
    size_t done = 0;
    char buf[8];
    /* all of it */
    CHECK_EQ(write(p.wr, "abcde", 5), 5);
    CHECK_EQ(cancel_io_read_full(CANCEL_TOKEN_NONE, p.rd, buf, 5, &done), 0);
    CHECK_EQ(done, 5);
    CHECK(memcmp(buf, "abcde", 5) == 0);
    /* cancelled after a part: the part is in the buffer and counted */
    cancel_source *s = cancel_source_new();
    struct call c;
    init_call(&c, do_read_full, cancel_source_token(s), p.rd, 5);
    CHECK_EQ(write(p.wr, "xyz", 3), 3);
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_read");
    cancel_source_cancel(s);
    call_join(&c);
    CHECK_EQ(c.err, ECANCELED);
    CHECK_EQ(c.done, 3);
    CHECK(memcmp(c.buf, "xyz", 3) == 0);
    cancel_source_free(s);
    /* EOF first */
    CHECK_EQ(write(p.wr, "12", 2), 2);
    close(p.wr);
    CHECK_EQ(cancel_io_read_full(CANCEL_TOKEN_NONE, p.rd, buf, 5, &done), 0);
    CHECK_EQ(done, 2);
    CHECK_EQ(cancel_io_read_full(CANCEL_TOKEN_NONE, p.rd, buf, 5, NULL), 0);
    close(p.rd);

    /* write_all: cancelled once the pipe is full; everything written is
     * counted and arrives */
    p = make_pair(PIPE, false);
    s = cancel_source_new();
    init_call(&c, do_write_all, cancel_source_token(s), p.wr, 0);
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_write");
    cancel_source_cancel(s);
    call_join(&c);
    CHECK_EQ(c.err, ECANCELED);
    CHECK(c.done > 0 && c.done < 300000);
    CHECK_EQ(drain(p), c.done);
    cancel_source_free(s);
    /* and to the end while the reader drains */
    init_call(&c, do_write_all, CANCEL_TOKEN_NONE, p.wr, 0);
    call_start(&c);
    size_t got = 0;
    while (got < 300000) {
        char tmp[65536];
        ssize_t n = read(p.rd, tmp, sizeof tmp);
        CHECK(n > 0);
        got += (size_t)n;
    }
    call_join(&c);
    CHECK_EQ(c.result, 0);
    CHECK_EQ(c.done, 300000);
    close_pair(p);
}

static void recv_and_send_flags(void)
{
    struct pair p = make_pair(UNIX, false);
    char buf[8];
    cancel_source *s = cancel_source_new();
    cancel_token t = cancel_source_token(s);
    /* MSG_DONTWAIT: try once */
    errno = 0;
    CHECK_EQ(cancel_io_recv(t, p.rd, buf, 1, MSG_DONTWAIT), -1);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    /* MSG_PEEK passes through */
    CHECK_EQ(cancel_io_send(t, p.wr, "pq", 2, 0), 2);
    CHECK_EQ(cancel_io_recv(t, p.rd, buf, 2, MSG_PEEK), 2);
    CHECK_EQ(cancel_io_recv(t, p.rd, buf, 2, 0), 2);
    CHECK(memcmp(buf, "pq", 2) == 0);
    /* MSG_PEEK with MSG_WAITALL is refused, the data left where it is; with
     * MSG_DONTWAIT it is one peek */
    CHECK_EQ(write(p.wr, "abc", 3), 3);
    errno = 0;
    CHECK_EQ(cancel_io_recv(t, p.rd, buf, 8, MSG_PEEK | MSG_WAITALL), -1);
    CHECK_EQ(errno, EINVAL);
    CHECK_EQ(cancel_io_recv(t, p.rd, buf, 8, MSG_PEEK | MSG_WAITALL | MSG_DONTWAIT), 3);
    CHECK_EQ(cancel_io_recv(t, p.rd, buf, 8, 0), 3);
    CHECK(memcmp(buf, "abc", 3) == 0);
    /* MSG_WAITALL waits for all of it */
    struct call c;
    init_call(&c, do_recv, t, p.rd, 6);
    c.flags = MSG_WAITALL;
    CHECK_EQ(write(p.wr, "abc", 3), 3);
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_recv");
    CHECK_EQ(write(p.wr, "def", 3), 3);
    call_join(&c);
    CHECK_EQ(c.result, 6);
    CHECK(memcmp(c.buf, "abcdef", 6) == 0);
    /* ... and returns the part it has when cancelled; the next call says why */
    init_call(&c, do_recv, t, p.rd, 6);
    c.flags = MSG_WAITALL;
    CHECK_EQ(write(p.wr, "ghi", 3), 3);
    call_start(&c);
    call_wait_blocked(&c, "cancel_io_recv");
    cancel_source_cancel(s);
    call_join(&c);
    CHECK_EQ(c.result, 3);
    CHECK_EQ(cancel_io_recv(t, p.rd, buf, 1, 0), -1);
    CHECK_EQ(errno, ECANCELED);
    cancel_source_free(s);
    /* send: blocked on a full socket, cancelled; MSG_DONTWAIT tries once */
    fill((struct pair){UNIX, p.rd, p.wr});
    CHECK_EQ(cancel_io_send(CANCEL_TOKEN_NONE, p.wr, "x", 1, MSG_DONTWAIT), -1);
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
    s = cancel_source_new();
    init_call(&c, do_send, cancel_source_token(s), p.wr, 1);
    c.flags = MSG_NOSIGNAL;
    call_cancel_blocked(&c, s, "cancel_io_send");
    cancel_source_free(s);
    close_pair(p);
}

/* Request/response in turns: after a wait the next read polls first; all
 * paths stay correct and cancellable. */
struct pingpong {
    cancel_token tok;
    int fd;
    int rounds;
    int err;
    _Atomic(struct cancel__blocked *) where;
};
static void *ponger(void *arg)
{
    struct pingpong *pp = arg;
    atomic_store(&pp->where, cancel__blocked_here());
    for (;;) {
        char b[16];
        ssize_t n = cancel_io_read(pp->tok, pp->fd, b, sizeof b);
        if (n <= 0) {
            pp->err = n < 0 ? errno : 0;
            return NULL;
        }
        CHECK_EQ(cancel_io_write_all(pp->tok, pp->fd, b, (size_t)n, NULL), 0);
        pp->rounds++;
    }
}
static void ping_pong(void)
{
    struct pair p = make_pair(UNIX, false);
    cancel_source *s = cancel_source_new();
    struct pingpong pp = {cancel_source_token(s), p.rd, 0, 0, NULL};
    pthread_t th = test_spawn(ponger, &pp);
    int n = TEST_SCALE(2000) + 10;
    for (int i = 0; i < n; i++) {
        char b[4] = {(char)i, 1, 2, 3}, r[4];
        CHECK_EQ(write(p.wr, b, 4), 4);
        size_t got = 0;
        while (got < 4) {
            ssize_t k = read(p.wr, r + got, 4 - got);
            CHECK(k > 0);
            got += (size_t)k;
        }
        CHECK(memcmp(b, r, 4) == 0);
    }
    struct cancel__blocked *b;
    while (!(b = atomic_load(&pp.where)) || !atomic_load(&b->what))
        test_sleep_ns(100 * 1000);
    cancel_source_cancel(s);
    test_join(th);
    CHECK_EQ(pp.rounds, n);
    CHECK_EQ(pp.err, ECANCELED);
    cancel_source_free(s);
    close_pair(p);
}

/* No descriptor left for the token's eventfd: EMFILE, and the caller's
 * descriptor is as it was. A call that need not wait needs none. */
static void emfile_for_the_token(void)
{
    struct pair p = make_pair(PIPE, false);
    struct rlimit old, lim;
    CHECK_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)open_fds() + 8;
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &lim), 0);
    int spare[64], n = 0;
    while (n < 64 && (spare[n] = dup(0)) >= 0)
        n++;
    CHECK(n < 64);
    cancel_source *s = cancel_source_new();
    char b;
    errno = 0;
    CHECK_EQ(cancel_io_read(cancel_source_token(s), p.rd, &b, 1), -1);
    CHECK_EQ(errno, EMFILE);
    CHECK(!is_nonblocking(p.rd));
    feed(p);
    CHECK_EQ(cancel_io_read(cancel_source_token(s), p.rd, &b, 1), 1); /* no wait, no descriptor */
    while (n > 0)
        close(spare[--n]);
    CHECK_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
    cancel_source_free(s);
    close_pair(p);
}

/* Regular files are always ready: reads go through whatever RWF_NOWAIT
 * says. */
static void regular_file(void)
{
    char path[96];
    snprintf(path, sizeof path, "%s/file", fifo_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    unlink(path);
    cancel_source *s = cancel_source_new();
    CHECK_EQ(cancel_io_write_all(cancel_source_token(s), fd, "hello", 5, NULL), 0);
    CHECK_EQ(lseek(fd, 0, SEEK_SET), 0);
    char buf[8];
    CHECK_EQ(cancel_io_read(cancel_source_token(s), fd, buf, sizeof buf), 5);
    CHECK_EQ(cancel_io_read(cancel_source_token(s), fd, buf, sizeof buf), 0);
    cancel_source_free(s);
    close(fd);
}

/* Pitfall: a cancel lost between the check and the entry into the wait.
 * Cancel at random points around the start of each blocking call: every
 * call returns ECANCELED (a lost one would hang: the CTest timeout is the
 * watchdog). */
static void cancel_races_entry(void)
{
    struct pair p = make_pair(PIPE, false);
    int listener;
    struct sockaddr_in a;
    listener = tcp_listener(4, &a);
    uint64_t rng = 12345;
    for (int i = 0; i < TEST_SCALE(800) + 40; i++) {
        cancel_source *s = cancel_source_new();
        struct call c;
        init_call(&c, do_read, cancel_source_token(s), p.rd, 1);
        switch (i % 4) {
        case 1:
            c.fn = do_accept;
            c.fd = listener;
            break;
        case 2:
            c.fn = do_poll;
            c.nfds = 1;
            c.pfd[0] = (struct pollfd){p.rd, POLLIN, 0};
            c.timeout = CANCEL_INFINITE;
            break;
        case 3:
            c.fn = do_sleep;
            c.timeout = CANCEL_INFINITE;
            break;
        }
        call_start(&c);
        test_jitter(&rng, 200000);
        cancel_source_cancel(s);
        call_join(&c);
        CHECK_EQ(c.result, -1);
        CHECK_EQ(c.err, ECANCELED);
        cancel_source_free(s);
    }
    close(listener);
    close_pair(p);
}

/* A background job reading its terminal is stopped by SIGTTIN inside the
 * read. The terminal's open file description, shared with the foreground
 * job, must stay as it was meanwhile, and after the job is killed there:
 * ttys are read through a private description, never by switching the
 * shared one to non-blocking. */
static void background_tty_read_keeps_flags(void)
{
    int m, s;
    open_pty(&m, &s);
    fflush(stderr);
    pid_t shell = fork();
    CHECK(shell >= 0);
    if (shell == 0) {
        /* A session leader whose controlling terminal is the pty... */
        close(m);
        if (setsid() < 0 || ioctl(s, TIOCSCTTY, 0) != 0)
            _exit(10);
        pid_t job = fork();
        if (job == 0) {
            /* ...and a job of its in the background: `server &`. */
            setpgid(0, 0);
            signal(SIGTTIN, SIG_DFL);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            char b;
            (void)cancel_io_read(CANCEL_TOKEN_NONE, s, &b, 1);
            _exit(0);
        }
        setpgid(job, job);
        int st;
        if (waitpid(job, &st, WUNTRACED) != job || !WIFSTOPPED(st) || WSTOPSIG(st) != SIGTTIN)
            _exit(11);
        int stopped = fcntl(s, F_GETFL);
        kill(job, SIGKILL);
        waitpid(job, &st, 0);
        int killed = fcntl(s, F_GETFL);
        if (stopped < 0 || killed < 0)
            _exit(12);
        _exit((stopped & O_NONBLOCK ? 1 : 0) | (killed & O_NONBLOCK ? 2 : 0));
    }
    int st;
    CHECK_EQ(waitpid(shell, &st, 0), shell);
    CHECK(WIFEXITED(st));
    CHECK_EQ(WEXITSTATUS(st), 0); /* 1, 3: left non-blocking; 10-12: setup */
    CHECK(!is_nonblocking(s));
    close(m);
    close(s);
}

/* The private description a tty or FIFO is read or written through lives
 * as long as the call: nothing is left open, however the call ends. */
static void nothing_left_open(void)
{
    enum kind kinds[] = {PTY, PTYM, FIFO, EVENTFD};
    for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        struct pair p = make_pair(kinds[i], false);
        size_t u = unit(kinds[i]);
        char buf[8];
        cancel_source *s = cancel_source_new();
        CHECK(cancel_token_fd(cancel_source_token(s)) >= 0); /* the source's, kept until freed */
        int open_before = open_fds();
        feed(p);
        CHECK_EQ(cancel_io_read(cancel_source_token(s), p.rd, buf, u), (ssize_t)u);
        CHECK_EQ(open_fds(), open_before);
        struct call c;
        init_call(&c, do_read, cancel_source_token(s), p.rd, u);
        call_start(&c);
        call_wait_blocked(&c, "cancel_io_read");
        feed(p);
        call_join(&c);
        CHECK_EQ(c.result, (ssize_t)u);
        CHECK_EQ(open_fds(), open_before);
        init_call(&c, do_read, cancel_source_token(s), p.rd, u);
        call_start(&c);
        call_wait_blocked(&c, "cancel_io_read");
        cancel_source_cancel(s);
        call_join(&c);
        CHECK_EQ(c.err, ECANCELED);
        CHECK_EQ(open_fds(), open_before);
        CHECK_EQ(cancel_io_write(CANCEL_TOKEN_NONE, p.wr, c.buf, u), (ssize_t)u);
        CHECK_EQ(open_fds(), open_before);
        cancel_source_free(s);
        close_pair(p);
    }
}

int main(void)
{
    snprintf(fifo_dir, sizeof fifo_dir, "/tmp/cancel-io-XXXXXX");
    CHECK(mkdtemp(fifo_dir));
    RUN(background_tty_read_keeps_flags);
    RUN(read_every_kind);
    RUN(write_every_kind);
    RUN(two_readers_never_hang);
    RUN(deadline_on_token_times_out);
    RUN(deadline_ends_every_call);
    RUN(freed_source_keeps_waiting);
    RUN(bad_input);
    RUN(eintr_is_retried);
    RUN(sigpipe_as_posix);
    RUN(read_full_and_write_all);
    RUN(recv_and_send_flags);
    RUN(ping_pong);
    RUN(cancel_races_entry);
    RUN(emfile_for_the_token);
    RUN(regular_file);
    RUN(nothing_left_open);
    rmdir(fifo_dir);
    return 0;
}
